"""Kubernetes manifests for serving replicas and the registry server.

Every manifest is built as a plain dict and written with ``yaml.safe_dump``
(keys sorted), so the output is stable and nothing is pasted into a template.
Secrets are referenced by name and key, never rendered: their values do not
belong in files (``secret_commands`` prints the ``kubectl`` lines that make them).

Serving replicas (one ``tether serve`` process per pod, the deployment file
mounted from a ConfigMap): ConfigMap, Deployment, Service, PodDisruptionBudget,
HorizontalPodAutoscaler. The registry server (``tether server`` over
PostgreSQL and S3, configured through Secrets): Deployment and Service. And a
KServe ``ServingRuntime`` that runs the same ``tether serve`` command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from .._errors import InvalidInput
from .._reference import parse_reference
from ..serving.config import Deployment

#: Where the deployment file, the model cache and the audit key live in a pod.
CONFIG_DIR = "/etc/tether"
CONFIG_FILE = "deploy.yaml"
CACHE_DIR = "/var/cache/tether"
AUDIT_KEY_DIR = "/etc/tether-audit"
AUDIT_KEY_FILE = "audit-key.pem"
#: The non-root user the images (``tether image render``) create.
USER_ID = 10001
REGISTRY_NAME = "tether-registry"
REGISTRY_PORT = 8080
#: KServe sends traffic to port 8080 of the ``kserve-container``.
KSERVE_PORT = 8080

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?\Z")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*\Z")


@dataclass(frozen=True)
class Resources:
    cpu_request: str = "500m"
    memory_request: str = "512Mi"
    cpu_limit: str = "2"
    memory_limit: str = "2Gi"

    def to_k8s(self) -> dict[str, Any]:
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


@dataclass(frozen=True)
class RenderOptions:
    """What ``tether k8s render`` may change; the defaults make a working set."""

    image: str = f"tether:{__version__}"
    registry_url: str = f"http://{REGISTRY_NAME}:{REGISTRY_PORT}"
    namespace: str | None = None
    replicas: int = 2
    #: The autoscaler's ceiling; default three times ``replicas``.
    max_replicas: int | None = None
    cpu_utilization: int = 70
    #: The serving objects' name; default from the deployment (see ``base_name``).
    name: str | None = None
    resources: Resources = field(default_factory=Resources)
    #: Secret with ``registry-token`` (and ``serving-token`` when the file has auth.token_env).
    serving_secret: str = "tether-serving"
    #: Render the registry server too (off when the registry runs elsewhere).
    registry: bool = True
    registry_image: str | None = None
    registry_replicas: int = 2
    registry_resources: Resources = field(
        default_factory=lambda: Resources("250m", "256Mi", "1", "1Gi")
    )
    #: Secret with db-url, store-url, aws-access-key-id, aws-secret-access-key
    #: (and optionally aws-region, s3-endpoint-url).
    registry_secret: str = REGISTRY_NAME
    #: Secret holding the registry's audit key file (every server replica signs with it).
    audit_key_secret: str = f"{REGISTRY_NAME}-audit-key"
    kserve: bool = True


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object and the file it is written to."""

    filename: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


def render_manifests(
    deployment: Deployment, text: str, options: RenderOptions | None = None
) -> list[Manifest]:
    """The manifests for ``deployment`` (parsed) whose file reads ``text``."""
    options = options or RenderOptions()
    _check(deployment, options)
    name = options.name or base_name(deployment)
    labels = _serving_labels(deployment, name)
    selector = _selector(name, "serving")
    port = deployment.server.port
    configmap = f"{name}-deployment"
    manifests = [
        Manifest("serving-configmap.yaml", _configmap(configmap, text, labels, options)),
        Manifest(
            "serving-deployment.yaml",
            _serving_deployment(deployment, name, configmap, labels, selector, options),
        ),
        Manifest("serving-service.yaml", _service(name, port, labels, selector, options)),
        Manifest("serving-pdb.yaml", _pdb(name, labels, selector, options)),
        Manifest("serving-hpa.yaml", _hpa(name, labels, options)),
    ]
    if options.registry:
        registry_labels = _registry_labels()
        registry_selector = _selector(REGISTRY_NAME, "registry")
        manifests += [
            Manifest(
                "registry-deployment.yaml",
                _registry_deployment(registry_labels, registry_selector, options),
            ),
            Manifest(
                "registry-service.yaml",
                _service(REGISTRY_NAME, REGISTRY_PORT, registry_labels, registry_selector, options),
            ),
        ]
    if options.kserve:
        manifests.append(
            Manifest(
                "kserve-servingruntime.yaml",
                _serving_runtime(deployment, name, configmap, labels, options),
            )
        )
    return manifests


def dump_manifests(manifests: list[Manifest]) -> str:
    """All manifests as one multi-document YAML stream (``kubectl apply -f -``)."""
    return "".join(f"---\n{dump(m.body)}" for m in manifests)


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML has no type hints here
    """safe_dump without anchors (a shared selector is written out twice) and
    with multi-line text (the deployment file) as a literal block."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _text)


def dump(body: dict[str, Any]) -> str:
    """One manifest as YAML: keys sorted, no anchors, block text."""
    text: str = yaml.dump(body, Dumper=_Dumper, sort_keys=True, default_flow_style=False,
                          width=100)
    return text


def secret_commands(deployment: Deployment, options: RenderOptions | None = None) -> list[str]:
    """The ``kubectl create secret`` lines the manifests expect (values left to fill in)."""
    options = options or RenderOptions()
    ns = f" -n {options.namespace}" if options.namespace else ""
    serving = ["--from-literal=registry-token=$TETHER_TOKEN"]
    if deployment.auth.token_env:
        serving.append(f"--from-literal=serving-token=${deployment.auth.token_env}")
    lines = [f"kubectl{ns} create secret generic {options.serving_secret} " + " ".join(serving)]
    if options.registry:
        lines += [
            f"kubectl{ns} create secret generic {options.registry_secret} "
            "--from-literal=db-url=postgresql://USER:PASSWORD@HOST:5432/tether "
            "--from-literal=store-url=s3://BUCKET/PREFIX "
            "--from-literal=aws-access-key-id=$AWS_ACCESS_KEY_ID "
            "--from-literal=aws-secret-access-key=$AWS_SECRET_ACCESS_KEY "
            "--from-literal=aws-region=$AWS_DEFAULT_REGION "
            "--from-literal=s3-endpoint-url=$TETHER_S3_ENDPOINT_URL",
            f"kubectl{ns} create secret generic {options.audit_key_secret} "
            f"--from-file={AUDIT_KEY_FILE}=./{AUDIT_KEY_FILE}",
        ]
    return lines


def base_name(deployment: Deployment) -> str:
    """``tether-ENDPOINT`` for one endpoint, else ``tether-STEM`` of the deployment file."""
    if len(deployment.endpoints) == 1 or not deployment.source:
        stem = deployment.endpoints[0].name
    else:
        stem = Path(deployment.source).stem
    cleaned = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")
    return f"tether-{cleaned}"[:40].rstrip("-") if cleaned else "tether-serving"


def label_value(text: str) -> str:
    """``text`` as a valid label value (63 characters of [A-Za-z0-9-_.], alphanumeric ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


# -- checks ---------------------------------------------------------------------------


def _check(deployment: Deployment, options: RenderOptions) -> None:
    if isinstance(options.replicas, bool) or options.replicas < 1:
        raise InvalidInput(
            f"replicas must be at least 1, not {options.replicas}",
            hint="the autoscaler never goes below this count; give 2 or more for availability",
        )
    top = options.max_replicas if options.max_replicas is not None else 3 * options.replicas
    if top < options.replicas:
        raise InvalidInput(
            f"max replicas ({top}) is below replicas ({options.replicas})",
            hint="the autoscaler scales between the two",
        )
    if options.registry and options.registry_replicas < 1:
        raise InvalidInput(f"registry replicas must be at least 1, not {options.registry_replicas}")
    if not 1 <= options.cpu_utilization <= 100:
        raise InvalidInput(
            f"CPU utilization target must be 1-100 (percent), not {options.cpu_utilization}"
        )
    for what, image in (("image", options.image), ("registry image", options.registry_image)):
        if image is not None and not _IMAGE.match(image):
            raise InvalidInput(
                f"{what} {image!r} is not an image reference", hint="e.g. ghcr.io/acme/iris:1.2.0"
            )
    if options.namespace is not None and not _dns_label(options.namespace):
        raise InvalidInput(
            f"namespace {options.namespace!r} is not a valid Kubernetes name",
            hint="lower-case letters, digits and '-', at most 63 characters",
        )
    if options.name is not None and not (_dns_label(options.name) and len(options.name) <= 40):
        raise InvalidInput(
            f"name {options.name!r} is not a valid Kubernetes name",
            hint="lower-case letters, digits and '-', at most 40 characters (suffixes are added)",
        )
    if not re.match(r"^https?://[^\s/]+", options.registry_url):
        raise InvalidInput(
            f"registry URL {options.registry_url!r} is not an http(s) URL",
            hint=f"e.g. http://{REGISTRY_NAME}:{REGISTRY_PORT} "
            "(the registry Service rendered here)",
        )
    for resources in (options.resources, options.registry_resources):
        for quantity in (
            resources.cpu_request,
            resources.memory_request,
            resources.cpu_limit,
            resources.memory_limit,
        ):
            if not _QUANTITY.match(quantity):
                raise InvalidInput(
                    f"{quantity!r} is not a Kubernetes quantity", hint="e.g. 500m, 2, 512Mi"
                )
    port = deployment.server.port
    if not 1024 <= port <= 65535:
        raise InvalidInput(
            f"server.port is {port}; a replica needs a fixed port from 1024 to 65535",
            hint="the pods run as a non-root user without capabilities; the Service "
            "maps its own port to it (e.g. server: {port: 8000})",
        )


def _dns_label(text: str) -> bool:
    return len(text) <= 63 and bool(_DNS_LABEL.match(text))


# -- metadata -------------------------------------------------------------------------


def _serving_labels(deployment: Deployment, name: str) -> dict[str, str]:
    """Standard labels naming the primary model (first endpoint, heaviest route) and version.

    A route that follows an alias has no fixed version: its selector
    (``production``, ``1.4.0``, ``sha-ab12``) is the version label.
    """
    endpoint = deployment.endpoints[0]
    primary = max(endpoint.routes, key=lambda r: r.weight)
    reference = parse_reference(primary.target)
    return {
        "app.kubernetes.io/name": label_value(reference.name),
        "app.kubernetes.io/version": label_value(reference.selector) or "latest",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "serving",
        "app.kubernetes.io/part-of": "tether",
        "app.kubernetes.io/managed-by": "tether",
    }


def _registry_labels() -> dict[str, str]:
    return {
        "app.kubernetes.io/name": REGISTRY_NAME,
        "app.kubernetes.io/version": label_value(__version__),
        "app.kubernetes.io/instance": REGISTRY_NAME,
        "app.kubernetes.io/component": "registry",
        "app.kubernetes.io/part-of": "tether",
        "app.kubernetes.io/managed-by": "tether",
    }


def _selector(name: str, component: str) -> dict[str, str]:
    # Immutable once applied, so it leaves out the version.
    return {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": component}


def _metadata(name: str, labels: dict[str, str], options: RenderOptions,
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if options.namespace:
        metadata["namespace"] = options.namespace
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def _targets(deployment: Deployment) -> str:
    """``iris: stable=iris@production (90) canary=iris@1.1.0 (10) shadow=iris@staging``."""
    parts = []
    for endpoint in deployment.endpoints:
        routes = [f"{r.name}={r.target} ({r.weight:g})" for r in endpoint.routes]
        shadows = [f"shadow={s.target}" for s in endpoint.shadows]
        parts.append(f"{endpoint.name}: " + " ".join(routes + shadows))
    return "; ".join(parts)


# -- serving --------------------------------------------------------------------------


def _configmap(
    name: str, text: str, labels: dict[str, str], options: RenderOptions
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(name, labels, options),
        "data": {CONFIG_FILE: text},
    }


def _serve_command(port: int) -> list[str]:
    # `tether serve FILE` takes the deployment file as its target and re-reads it
    # when it changes, so an edited ConfigMap reaches the replicas without a restart.
    return ["tether", "serve", f"{CONFIG_DIR}/{CONFIG_FILE}", "--host", "0.0.0.0",
            "--port", str(port)]


def _serving_env(deployment: Deployment, options: RenderOptions) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "TETHER_URI", "value": options.registry_url},
        {"name": "TETHER_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": options.serving_secret, "key": "registry-token"}}},
        {"name": "TETHER_CACHE_DIR", "value": CACHE_DIR},
    ]
    if deployment.auth.token_env:
        env.append({"name": deployment.auth.token_env, "valueFrom": {"secretKeyRef": {
            "name": options.serving_secret, "key": "serving-token"}}})
    return env


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": USER_ID,
        "runAsGroup": USER_ID,
        "fsGroup": USER_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _serving_volumes(configmap: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        # Mounted as a folder (not subPath) so ConfigMap updates reach the file.
        {"name": "deployment", "configMap": {"name": configmap}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "deployment", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    return volumes, mounts


def _probe(path: str, port: str | int, *, period: int, failures: int,
           delay: int = 0) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }
    if delay:
        probe["initialDelaySeconds"] = delay
    return probe


def _serving_deployment(deployment: Deployment, name: str, configmap: str,
                        labels: dict[str, str], selector: dict[str, str],
                        options: RenderOptions) -> dict[str, Any]:
    port = deployment.server.port
    volumes, mounts = _serving_volumes(configmap)
    container = {
        "name": "tether-serve",
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": _serve_command(port),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": _serving_env(deployment, options),
        "resources": options.resources.to_k8s(),
        # Ready once every route's version is loaded, verified and warmed.
        "readinessProbe": _probe("/readyz", "http", period=5, failures=3),
        "livenessProbe": _probe("/healthz", "http", period=10, failures=3, delay=10),
        # Loading and verifying a large model may take a while.
        "startupProbe": _probe("/healthz", "http", period=5, failures=60),
        # Let the Service stop sending before the process stops accepting.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    annotations = {"tether/targets": _targets(deployment)}
    if not deployment.auth.protect_reads:
        annotations.update({"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                            "prometheus.io/path": "/metrics"})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, labels, options, {"tether/targets": _targets(deployment)}),
        "spec": {
            "replicas": options.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": annotations},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "terminationGracePeriodSeconds": 30,
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": selector},
                    }],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _service(name: str, port: int, labels: dict[str, str], selector: dict[str, str],
             options: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, labels, options),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _pdb(name: str, labels: dict[str, str], selector: dict[str, str],
         options: RenderOptions) -> dict[str, Any]:
    # maxUnavailable, not minAvailable: with one replica a drain still proceeds.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, labels, options),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }


def _hpa(name: str, labels: dict[str, str], options: RenderOptions) -> dict[str, Any]:
    top = options.max_replicas if options.max_replicas is not None else 3 * options.replicas
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, labels, options),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": options.replicas,
            "maxReplicas": top,
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {
                    "type": "Utilization", "averageUtilization": options.cpu_utilization}},
            }],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


# -- registry server ------------------------------------------------------------------


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _registry_deployment(labels: dict[str, str], selector: dict[str, str],
                         options: RenderOptions) -> dict[str, Any]:
    secret = options.registry_secret
    # `tether server` reads --db and --store from TETHER_SERVER_DB and
    # TETHER_SERVER_STORE; boto3 reads the AWS_* variables; the S3 store reads
    # TETHER_S3_ENDPOINT_URL (MinIO, Ceph and other S3-compatible stores).
    env = [
        _secret_env("TETHER_SERVER_DB", secret, "db-url"),
        _secret_env("TETHER_SERVER_STORE", secret, "store-url"),
        _secret_env("AWS_ACCESS_KEY_ID", secret, "aws-access-key-id"),
        _secret_env("AWS_SECRET_ACCESS_KEY", secret, "aws-secret-access-key"),
        _secret_env("AWS_DEFAULT_REGION", secret, "aws-region", optional=True),
        _secret_env("TETHER_S3_ENDPOINT_URL", secret, "s3-endpoint-url", optional=True),
        # Every replica signs audit heads with the same key, kept out of the database.
        {"name": "TETHER_AUDIT_KEY", "value": f"{AUDIT_KEY_DIR}/{AUDIT_KEY_FILE}"},
        # The key's folder is a read-only secret: the mark of the newest head this pod
        # signed (tether/_audit_mark.py) lives beside the cache, for the pod's life.
        {"name": "TETHER_AUDIT_MARK_DIR", "value": f"{CACHE_DIR}/audit-marks"},
        {"name": "TETHER_CACHE_DIR", "value": CACHE_DIR},
    ]
    container = {
        "name": "tether-server",
        "image": options.registry_image or options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["tether", "server", "--host", "0.0.0.0", "--port", str(REGISTRY_PORT)],
        "ports": [{"name": "http", "containerPort": REGISTRY_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": options.registry_resources.to_k8s(),
        "readinessProbe": _probe("/api/v1/ready", "http", period=5, failures=3),
        "livenessProbe": _probe("/api/v1/health", "http", period=10, failures=3, delay=10),
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "audit-key", "mountPath": AUDIT_KEY_DIR, "readOnly": True},
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(REGISTRY_NAME, labels, options),
        "spec": {
            "replicas": options.registry_replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "containers": [container],
                    "volumes": [
                        {"name": "audit-key", "secret": {
                            "secretName": options.audit_key_secret, "defaultMode": 0o440}},
                        {"name": "cache", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


# -- KServe ---------------------------------------------------------------------------


def _serving_runtime(deployment: Deployment, name: str, configmap: str,
                     labels: dict[str, str], options: RenderOptions) -> dict[str, Any]:
    """A KServe ServingRuntime running ``tether serve`` on the deployment file.

    It declares the Open Inference Protocol (``v2``): an InferenceService whose
    name is one of the file's endpoints reaches it at /v2/models/NAME/infer.
    """
    volumes, mounts = _serving_volumes(configmap)
    container = {
        "name": "kserve-container",
        "image": options.image,
        "command": _serve_command(KSERVE_PORT),
        "ports": [{"containerPort": KSERVE_PORT, "protocol": "TCP"}],
        "env": _serving_env(deployment, options),
        "resources": options.resources.to_k8s(),
        "readinessProbe": _probe("/readyz", KSERVE_PORT, period=5, failures=3),
        "livenessProbe": _probe("/healthz", KSERVE_PORT, period=10, failures=3, delay=10),
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": _metadata(f"{name}-kserve", labels, options),
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(KSERVE_PORT),
                            "prometheus.kserve.io/path": "/metrics"},
            "supportedModelFormats": [{"name": "tether", "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2"],
            "multiModel": False,
            "containers": [container],
            "volumes": volumes,
        },
    }
