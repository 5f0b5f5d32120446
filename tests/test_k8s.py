"""`tether k8s render` and `tether image render`: manifests checked against the
Kubernetes schemas offline (kubernetes-validate), build contexts from a real
registry, and the refusals."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

import tether
from tether.cli import cli
from tether.cli.server import server
from tether.cli.serving import serve
from tether.k8s import ImageTarget, RenderOptions, render_image, render_manifests
from tether.serving.config import load_deployment, parse_deployment

from .conftest import fit_logreg

K8S_VERSION = "1.37.0"

DEPLOY = """\
# Two endpoints, a canary, a shadow, rules and a serving token.
server: {port: 8765}
auth: {token_env: TETHER_SERVING_TOKEN}
endpoints:
  iris:
    routes:
      - {name: stable, target: iris@production, weight: 90}
      - {name: canary, target: iris@1.1.0, weight: 10}
    shadow: [iris@staging]
    rollback:
      window: 60
      min_requests: 20
      rules: ["error_rate > 0.05", "p99_latency_ms > 250"]
  scorer:
    routes: [scorer@production]
    trusted: true
"""

KSERVE_SPEC_FIELDS = {
    "annotations", "supportedModelFormats", "protocolVersions", "multiModel", "containers",
    "volumes", "disabled", "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint", "replicas",
    "storageHelper", "builtInAdapter", "nodeSelector", "affinity", "tolerations", "labels",
    "imagePullSecrets", "hostIPC", "workerSpec",
}  # fmt: skip


def invoke(*args: str, registry: Path | None = None) -> Any:
    prefix = ["--registry", str(registry)] if registry else []
    return CliRunner().invoke(cli, [*prefix, *args], catch_exceptions=False)


@pytest.fixture
def deploy_file(tmp_path: Path) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(DEPLOY)
    return path


@pytest.fixture
def rendered(tmp_path: Path, deploy_file: Path) -> dict[str, dict[str, Any]]:
    out = tmp_path / "k8s"
    result = invoke("k8s", "render", str(deploy_file), "--out", str(out), "--namespace", "ml",
                    "--image", "ghcr.io/acme/iris:1.0", "--replicas", "3")
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    assert [f.name for f in files] == sorted([
        "serving-configmap.yaml", "serving-deployment.yaml", "serving-service.yaml",
        "serving-pdb.yaml", "serving-hpa.yaml", "registry-deployment.yaml",
        "registry-service.yaml", "kserve-servingruntime.yaml",
    ])  # fmt: skip
    return {f.name: yaml.safe_load(f.read_text()) for f in files}


def test_every_manifest_validates_against_the_kubernetes_schemas(
    rendered: dict[str, dict[str, Any]],
) -> None:
    for name, body in rendered.items():
        if body["apiVersion"].startswith("serving.kserve.io/"):
            continue  # a CRD: not in the bundled schemas, checked structurally below
        # strict: an unknown field anywhere is an error, not silently dropped
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        assert body["metadata"]["namespace"] == "ml", name
        labels = body["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "tether"
        assert {"app.kubernetes.io/name", "app.kubernetes.io/version"} <= set(labels)


def test_validation_catches_a_broken_manifest(rendered: dict[str, dict[str, Any]]) -> None:
    # The check above is real: a wrong type or an unknown field is refused.
    broken = json.loads(json.dumps(rendered["serving-deployment.yaml"]))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    unknown = json.loads(json.dumps(rendered["serving-service.yaml"]))
    unknown["spec"]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, K8S_VERSION, strict=True)


def test_serving_deployment(rendered: dict[str, dict[str, Any]], deploy_file: Path) -> None:
    deployment = rendered["serving-deployment.yaml"]
    assert deployment["metadata"]["name"] == "tether-deploy"  # two endpoints: the file's stem
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "iris"  # heaviest route of the first endpoint
    assert labels["app.kubernetes.io/version"] == "production"
    assert "canary=iris@1.1.0 (10)" in deployment["metadata"]["annotations"]["tether/targets"]
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/acme/iris:1.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"][0]["containerPort"] == 8765
    assert set(container["resources"]) == {"requests", "limits"}
    # non-root, nothing writable but the cache and /tmp
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # the deployment file comes from the ConfigMap, mounted as a folder
    configmap = rendered["serving-configmap.yaml"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount
    path = container["command"][2]
    assert path == f"{mount['mountPath']}/deploy.yaml" and "deploy.yaml" in configmap["data"]
    # ... byte for byte, and it still parses to the same deployment
    assert configmap["data"]["deploy.yaml"] == deploy_file.read_text()
    assert parse_deployment(yaml.safe_load(configmap["data"]["deploy.yaml"])) == parse_deployment(
        yaml.safe_load(DEPLOY)
    )
    # registry URL in the clear, tokens from the Secret
    env = {e["name"]: e for e in container["env"]}
    assert env["TETHER_URI"]["value"] == "http://tether-registry:8080"
    assert env["TETHER_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "tether-serving", "key": "registry-token"}
    assert env["TETHER_SERVING_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "serving-token"
    assert not any("value" in e and "token" in e["name"].lower() for e in container["env"])


def test_the_commands_are_ones_tether_accepts(
    rendered: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container commands parse with today's `tether serve` and `tether server`."""
    serving = rendered["serving-deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert serving["command"][:2] == ["tether", "serve"]
    ctx = serve.make_context("serve", serving["command"][2:])
    assert ctx.params["target"] == "/etc/tether/deploy.yaml"
    assert ctx.params["host"] == "0.0.0.0" and ctx.params["port"] == 8765

    registry = rendered["registry-deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert registry["command"][:2] == ["tether", "server"]
    env_names = {e["name"] for e in registry["env"]}
    # --db has no flag in the command: `tether server` reads it from TETHER_SERVER_DB.
    monkeypatch.setenv("TETHER_SERVER_DB", "postgresql://u@db/tether")
    monkeypatch.setenv("TETHER_SERVER_STORE", "s3://bucket/prefix")
    ctx = server.make_context("server", registry["command"][2:])
    assert ctx.params["db_url"] == "postgresql://u@db/tether"
    assert ctx.params["store_url"] == "s3://bucket/prefix"
    assert ctx.params["host"] == "0.0.0.0" and ctx.params["port"] == 8080
    assert not ctx.params["open_access"]
    assert {"TETHER_SERVER_DB", "TETHER_SERVER_STORE"} <= env_names


def test_registry_server(rendered: dict[str, dict[str, Any]]) -> None:
    deployment = rendered["registry-deployment.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    secrets = {
        name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e
    }
    assert set(secrets) == {
        "TETHER_SERVER_DB", "TETHER_SERVER_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION", "TETHER_S3_ENDPOINT_URL",
    }  # fmt: skip
    assert {s["name"] for s in secrets.values()} == {"tether-registry"}
    assert secrets["TETHER_S3_ENDPOINT_URL"].get("optional") is True
    assert "optional" not in secrets["TETHER_SERVER_DB"]
    # Readiness on /ready, which a database outage turns 503 (health stays 200: liveness).
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/v1/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/v1/health"
    # every replica signs audit heads with one key, from a Secret
    key_path = env["TETHER_AUDIT_KEY"]["value"]
    (mount,) = [m for m in container["volumeMounts"] if key_path.startswith(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "tether-registry-audit-key"
    service = rendered["registry-service.yaml"]
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert service["spec"]["ports"][0]["port"] == 8080


def test_service_pdb_and_autoscaler(rendered: dict[str, dict[str, Any]]) -> None:
    name = rendered["serving-deployment.yaml"]["metadata"]["name"]
    selector = rendered["serving-deployment.yaml"]["spec"]["selector"]["matchLabels"]
    service = rendered["serving-service.yaml"]
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = rendered["serving-pdb.yaml"]
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["selector"]["matchLabels"] == selector
    hpa = rendered["serving-hpa.yaml"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"


def test_kserve_serving_runtime(rendered: dict[str, dict[str, Any]]) -> None:
    runtime = rendered["kserve-servingruntime.yaml"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] == "ServingRuntime"
    assert runtime["metadata"]["name"] == "tether-deploy-kserve"
    spec = runtime["spec"]
    assert set(spec) <= KSERVE_SPEC_FIELDS, set(spec) - KSERVE_SPEC_FIELDS
    assert spec["protocolVersions"] == ["v2"]  # the Open Inference Protocol
    assert spec["multiModel"] is False
    for fmt in spec["supportedModelFormats"]:
        assert set(fmt) <= {"name", "version", "autoSelect", "priority"}
        assert isinstance(fmt["name"], str) and isinstance(fmt["version"], str)
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # the container KServe routes to
    assert container["command"][:2] == ["tether", "serve"]
    ctx = serve.make_context("serve", container["command"][2:])
    assert ctx.params["port"] == 8080 == container["ports"][0]["containerPort"]
    # The containers and volumes are core/v1 types: validate them inside a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
           "spec": {"containers": spec["containers"], "volumes": spec["volumes"]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_stdout_stream_json_and_stable_output(deploy_file: Path) -> None:
    first = invoke("k8s", "render", str(deploy_file))
    second = invoke("k8s", "render", str(deploy_file))
    assert first.exit_code == 0 and first.stdout == second.stdout
    documents = list(yaml.safe_load_all(first.stdout))
    assert [d["kind"] for d in documents] == [
        "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
        "Deployment", "Service", "ServingRuntime",
    ]  # fmt: skip
    assert "&id" not in first.stdout and "*id" not in first.stdout  # no YAML anchors
    assert "kubectl create secret generic tether-serving" in first.stderr

    data = json.loads(invoke("k8s", "render", str(deploy_file), "--json", "--no-registry",
                             "--no-kserve", "--name", "iris-prod").output)
    assert [m["kind"] for m in data["manifests"]] == [
        "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    assert {m["name"] for m in data["manifests"]} == {"iris-prod", "iris-prod-deployment"}
    assert data["manifests"][1]["body"]["kind"] == "Deployment"
    assert len(data["secrets"]) == 1 and "serving-token=" in data["secrets"][0]


def test_docs_example_renders_and_validates() -> None:
    example = Path(__file__).resolve().parent.parent / "docs" / "deploy-example.yaml"
    manifests = render_manifests(load_deployment(example), example.read_text())
    for manifest in manifests:
        if manifest.kind != "ServingRuntime":
            kubernetes_validate.validate(manifest.body, K8S_VERSION, strict=True)
    assert manifests[1].name == "tether-iris"  # one endpoint: named after it


def test_refusals(tmp_path: Path, deploy_file: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(DEPLOY.replace("weight: 10}", "wieght: 10}"))
    result = invoke("k8s", "render", str(typo))
    assert result.exit_code == 1
    assert "unknown key 'wieght'" in result.output and "did you mean 'weight'?" in result.output
    assert "apiVersion" not in result.stdout  # nothing rendered

    result = invoke("k8s", "render", str(deploy_file), "--replicas", "0")
    assert result.exit_code == 1 and "replicas must be at least 1, not 0" in result.output
    result = invoke("k8s", "render", str(deploy_file), "--replicas", "4", "--max-replicas", "2")
    assert result.exit_code == 1 and "max replicas (2) is below replicas (4)" in result.output
    result = invoke("k8s", "render", str(deploy_file), "--namespace", "ML_prod")
    assert result.exit_code == 1 and "not a valid Kubernetes name" in result.output
    result = invoke("k8s", "render", str(deploy_file), "--registry-url", "tether-registry:8080")
    assert result.exit_code == 1 and "is not an http(s) URL" in result.output
    result = invoke("k8s", "render", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 1 and "cannot read deployment file" in result.output
    result = invoke("k8s", "render", str(deploy_file), "--replicas", "0", "--json")
    assert json.loads(result.output)["error"] == "invalid_input"

    low_port = tmp_path / "low.yaml"
    low_port.write_text(DEPLOY.replace("port: 8765", "port: 80"))
    result = invoke("k8s", "render", str(low_port))
    assert result.exit_code == 1 and "server.port is 80" in result.output


def test_options_reach_the_renderer_unchanged() -> None:
    deployment = parse_deployment(yaml.safe_load(DEPLOY), source="deploy.yaml")
    options = RenderOptions(replicas=1, max_replicas=1, registry=False, kserve=False)
    manifests = render_manifests(deployment, DEPLOY, options)
    assert [m.kind for m in manifests][-1] == "HorizontalPodAutoscaler"
    # one replica: the disruption budget still lets a node drain
    assert manifests[3].body["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": manifests[1].body["spec"]["selector"][
            "matchLabels"]}}


# -- images ---------------------------------------------------------------------------


@pytest.fixture
def populated(tmp_path: Path, iris: tuple[Any, Any]) -> Path:
    root = tmp_path / ".tether"
    with tether.init(root, actor="k8s@test") as reg:
        X, _ = iris
        reg.log_model(fit_logreg(iris), "iris", input_example=X.head(3))
        reg.log_model(fit_logreg(iris, C=0.3), "iris", input_example=X.head(3))
        # New aliases need create=True where promote has it (a concurrent change).
        new = {"create": True} if "create" in inspect.signature(reg.promote).parameters else {}
        reg.promote("iris@1.0.0", "production", **new)
        reg.promote("iris@1.1.0", "staging", **new)
    return root


def test_image_render_from_a_reference(populated: Path, tmp_path: Path) -> None:
    out = tmp_path / "image"
    result = invoke("image", "render", "iris@production", "--out", str(out), registry=populated)
    assert result.exit_code == 0, result.output
    assert "iris@production -> iris@1.0.0" in result.output
    with tether.open(str(populated)) as reg:
        version = reg.get("iris@production")
        recorded = reg.env_export("iris@1.0.0", format="requirements")
    requirements = (out / "requirements.txt").read_text().splitlines()
    pins = [line for line in recorded.splitlines() if line and not line.startswith("#")]
    pins = [p for p in pins if not p.startswith("tether==")]
    assert pins and set(pins) <= set(requirements)  # every recorded pin, as recorded
    assert any(line.startswith("scikit-learn==") for line in requirements)
    assert requirements[-1] == f"tether=={tether.__version__}"
    # This tether runs from its checkout (editable): no index has it, and the user is told.
    assert "is an editable install" in result.output and "--tether dist/" in result.output
    dockerfile = (out / "Dockerfile").read_text()
    python = version.environment["python"]
    assert f"FROM python:{python}-slim" in dockerfile
    assert "USER 10001:10001" in dockerfile
    assert "/readyz" in dockerfile and "HEALTHCHECK" in dockerfile
    assert f'"sha:{version.digest}"' in dockerfile  # label with the digest
    (cmd,) = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    args = json.loads(cmd.removeprefix("CMD "))
    assert args[:2] == ["serve", "iris@production"]
    assert serve.make_context("serve", args[1:]).params["host"] == "0.0.0.0"

    data = json.loads(invoke("image", "render", "iris@production", "--out", str(out), "--json",
                             registry=populated).output)
    assert data["python"] == python
    assert data["targets"] == [{"reference": "iris@production", "resolved": "iris@1.0.0",
                                "digest": f"sha:{version.digest}"}]
    assert set(data["files"]) == {"Dockerfile", "requirements.txt", ".dockerignore"}


def test_image_render_from_a_deployment_file(populated: Path, tmp_path: Path) -> None:
    deploy = tmp_path / "iris.yaml"
    deploy.write_text(
        "server: {port: 9000}\n"
        "endpoints:\n"
        "  iris:\n"
        "    routes: [{name: stable, target: iris@production, weight: 90},\n"
        "             {name: canary, target: iris@1.1.0, weight: 10}]\n"
        "    shadow: [iris@staging]\n"
    )
    wheel = tmp_path / "tether-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")  # stands for a built wheel; only copied
    out = tmp_path / "image"
    result = invoke("image", "render", str(deploy), "--out", str(out), "--tether", str(wheel),
                    "--json", registry=populated)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [t["reference"] for t in data["targets"]] == [
        "iris@production", "iris@1.1.0", "iris@staging"]
    assert (out / "deploy.yaml").read_text() == deploy.read_text()
    assert (out / wheel.name).read_bytes() == b"PK"
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY deploy.yaml /etc/tether/deploy.yaml" in dockerfile
    assert f"COPY {wheel.name} /wheels/" in dockerfile
    assert (out / "requirements.txt").read_text().splitlines()[-1] == f"/wheels/{wheel.name}"
    (cmd,) = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    assert json.loads(cmd.removeprefix("CMD "))[:4] == [
        "serve", "/etc/tether/deploy.yaml", "--host", "0.0.0.0"]
    assert "EXPOSE 9000" in dockerfile


def test_image_refusals(populated: Path, tmp_path: Path) -> None:
    result = invoke("image", "render", "iris@nope", "--out", str(tmp_path / "x"),
                    registry=populated)
    assert result.exit_code == 1 and "nope" in result.output
    result = invoke("image", "render", "iris@production", "--tether", str(tmp_path / "no.whl"),
                    "--out", str(tmp_path / "x"), registry=populated)
    assert result.exit_code == 1 and "no wheel at" in result.output

    def target(ref: str, python: str, sklearn: str) -> ImageTarget:
        return ImageTarget(ref, ref, "sha:00", {"python": python},
                           f"# header\nnumpy==2.0.0\nscikit-learn=={sklearn}\n")

    with pytest.raises(tether.TetherError, match=r"scikit-learn==1\.4\.2 and b@2 needs "
                                                 r"scikit-learn==1\.5\.0: one image"):
        render_image([target("a@1", "3.11.9", "1.4.2"), target("b@2", "3.11.4", "1.5.0")],
                     serve_target="a@1")
    with pytest.raises(tether.TetherError, match=r"Python 3\.11 and b@2 on Python 3\.12"):
        render_image([target("a@1", "3.11.9", "1.4.2"), target("b@2", "3.12.1", "1.4.2")],
                     serve_target="a@1")
    same = render_image([target("a@1", "3.11.9", "1.4.2"), target("b@2", "3.11.4", "1.4.2")],
                        serve_target="a@1")
    assert same.python == "3.11.9" and same.packages == ["numpy==2.0.0", "scikit-learn==1.4.2"]


def test_a_trusted_endpoint_whose_targets_the_server_resolves_is_warned_about(
        tmp_path: Path, deploy_file: Path) -> None:
    """The pods ask the registry server what scorer@production names and unpickle the
    answer: a hostile server chooses the code. The render says so (a review)."""
    result = invoke("k8s", "render", str(deploy_file), "--out", str(tmp_path / "k8s"))
    assert result.exit_code == 0
    assert "endpoint scorer is trusted" in result.output
    assert "scorer@production" in result.output and "endpoint iris" not in result.output
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(DEPLOY.replace("scorer@production", "scorer@sha:" + "a" * 64))
    quiet = invoke("k8s", "render", str(pinned), "--out", str(tmp_path / "k8s2"))
    assert quiet.exit_code == 0 and "is trusted" not in quiet.output
