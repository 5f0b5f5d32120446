"""Commands that write deployment artefacts: `tether k8s render`, `tether image render`.

Thin shells over tether.k8s (pure rendering): read the deployment file or ask
the registry, render, write the files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import click

from .._errors import InvalidInput
from ._common import (
    PORT,
    console,
    emit_json,
    err_console,
    handle_errors,
    json_option,
    registry_from,
)


@click.group("k8s")
def k8s_group() -> None:
    """Kubernetes manifests: serving replicas, registry server, KServe."""


@k8s_group.command("render")
@click.argument("deployment_file", metavar="DEPLOY.yaml")
@click.option("--out", "out", metavar="DIR", help="Write one file per manifest here "
              "(default: print them as one YAML stream, for `kubectl apply -f -`).")
@click.option("--image", default=None, help="The serving image (see `tether image render`).")
@click.option("--registry-url", default=None,
              help="The registry replicas follow (default: the registry Service rendered here).")
@click.option("--namespace", "-n", default=None, help="Put every object in this namespace.")
@click.option("--replicas", default=2, show_default=True, type=click.IntRange(0, 10_000),
              help="Serving replicas (the autoscaler's floor).")
@click.option("--max-replicas", default=None, type=click.IntRange(1, 10_000),
              help="The autoscaler's ceiling (default: 3 x --replicas).")
@click.option("--name", default=None,
              help="Name of the serving objects (default: tether-ENDPOINT, or tether-FILESTEM).")
@click.option("--registry-image", default=None,
              help="Image for the registry server (default: --image).")
@click.option("--no-registry", is_flag=True,
              help="Leave out the registry server (it runs elsewhere).")
@click.option("--no-kserve", is_flag=True, help="Leave out the KServe ServingRuntime.")
@json_option
@handle_errors
def k8s_render(
    deployment_file: str,
    out: str | None,
    image: str | None,
    registry_url: str | None,
    namespace: str | None,
    replicas: int,
    max_replicas: int | None,
    name: str | None,
    registry_image: str | None,
    no_registry: bool,
    no_kserve: bool,
    as_json: bool,
) -> None:
    """Render manifests for serving DEPLOY.yaml (a `tether serve` deployment file) on Kubernetes.

    Serving: ConfigMap (the file), Deployment (readiness /readyz, liveness
    /healthz), Service, PodDisruptionBudget, HorizontalPodAutoscaler. Registry
    server: Deployment and Service over PostgreSQL and S3, configured through
    Secrets. KServe: a ServingRuntime speaking the Open Inference Protocol.
    Nothing is applied: pipe the output to `kubectl apply -f -`.
    """
    from ..k8s import RenderOptions, dump_manifests, render_manifests
    from ..k8s.manifests import dump, secret_commands
    from ..serving.config import load_deployment

    deployment = load_deployment(deployment_file)
    text = Path(deployment_file).read_text()
    defaults = RenderOptions()
    options = RenderOptions(
        image=image or defaults.image,
        registry_url=registry_url or defaults.registry_url,
        namespace=namespace,
        replicas=replicas,
        max_replicas=max_replicas,
        name=name,
        registry=not no_registry,
        registry_image=registry_image,
        kserve=not no_kserve,
    )
    manifests = render_manifests(deployment, text, options)
    secrets = secret_commands(deployment, options)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for manifest in manifests:
            (folder / manifest.filename).write_text(dump(manifest.body))
    if as_json:
        emit_json({
            "out": out,
            "manifests": [
                {"kind": m.kind, "name": m.name, "file": m.filename, "body": m.body}
                for m in manifests
            ],
            "secrets": secrets,
        })
        return
    if out is None:
        click.echo(dump_manifests(manifests), nl=False)
        report = err_console
    else:
        report = console
        for manifest in manifests:
            written = Path(out) / manifest.filename
            report.print(f"wrote {written}  ({manifest.kind} {manifest.name})")
    report.print("The manifests reference these Secrets (create them first; values are yours):",
                 style="dim")
    for line in secrets:
        report.print(f"  {line}", style="dim", markup=False)
    for endpoint, target in _answered_trusted_targets(deployment):
        err_console.print(
            f"warning: endpoint {endpoint} is trusted, and the pods ask the registry server "
            f"what {target} names: its answer chooses the code they unpickle. Target a whole "
            "digest (NAME@sha:...), or follow a signed stored deployment (tether deploy sign)",
            markup=False)


def _answered_trusted_targets(deployment: Any) -> list[tuple[str, str]]:
    """(endpoint, target) of each trusted endpoint's target the registry resolves: what
    an alias or a version number names is the server's answer, a whole digest is not."""
    from .._reference import parse_reference

    return [(endpoint.name, target) for endpoint in deployment.endpoints if endpoint.trusted
            for target in [r.target for r in endpoint.routes] + [s.target for s in endpoint.shadows]
            if not parse_reference(target).whole_digest]


@click.group("image")
def image_group() -> None:
    """Container build contexts that serve registered versions."""


def _tether_spec(given: str | None) -> tuple[str, str | None]:
    """How the image installs tether (``--tether``, else ``tether==VERSION`` from an
    index), and a warning when that cannot work as is.

    Tether running from a source checkout (an editable or local install) is on no index
    the image build can reach unless the user's own has it: say so, with what to pass
    instead, rather than let ``docker build`` fail later.
    """
    from .. import __version__

    if given:
        return given, None
    from .._environment import capture_environment

    spec = f"tether=={__version__}"
    how = (capture_environment().get("local_installs") or {}).get("tether")
    if not how:
        return spec, None
    return spec, (
        f"this tether is an {how} install; the image will run `pip install {spec}`, which "
        "only works if your package index has it. To install this one, build a wheel "
        "(`pip wheel --no-deps -w dist PATH/TO/CHECKOUT`, with the wheel package installed) "
        "and pass --tether dist/tether-*.whl")


@image_group.command("render")
@click.argument("target", metavar="REF|DEPLOY.yaml")
@click.option("--out", "out", default="tether-image", show_default=True, metavar="DIR",
              help="The build context folder to write.")
@click.option("--tether", "tether_spec", default=None, metavar="SPEC",
              help="How the image installs tether: a requirement (default tether==THIS_VERSION "
              "from your index) or a path to a built wheel, copied into the context.")
@click.option("--port", default=None, type=PORT,
              help="Port to serve on (default: the file's, else 8000).")
@json_option
@click.pass_context
@handle_errors
def image_render(
    ctx: click.Context,
    target: str,
    out: str,
    tether_spec: str | None,
    port: int | None,
    as_json: bool,
) -> None:
    """Write a build context (Dockerfile, requirements.txt) serving REF or DEPLOY.yaml.

    Every package is pinned as the registry recorded it for each version
    served (`tether env export`), plus tether; the image runs `tether serve`
    as a non-root user with a healthcheck on /readyz.
    """
    from ..k8s import ImageTarget, render_image
    from ..serving.config import load_deployment

    registry = registry_from(ctx)
    is_file = target.endswith((".yaml", ".yml")) or Path(target).is_file()
    if is_file:
        deployment = load_deployment(target)
        references = list(dict.fromkeys(
            ref
            for endpoint in deployment.endpoints
            for ref in [*(r.target for r in endpoint.routes), *(s.target for s in endpoint.shadows)]
        ))
        text: str | None = Path(target).read_text()
        serve_port = port if port is not None else deployment.server.port
    else:
        references, text, serve_port = [target], None, port if port is not None else 8000
    targets = []
    for reference in references:
        version = registry.get(reference)
        targets.append(ImageTarget(
            reference=reference,
            resolved=version.ref,
            digest=f"sha:{version.digest}",
            environment=version.environment,
            requirements=registry.env_export(version.ref, format="requirements"),
        ))
    spec, warning = _tether_spec(tether_spec)
    if warning and not as_json:
        err_console.print(f"warning: {warning}", markup=False)
    wheel = Path(spec) if spec.endswith(".whl") else None
    if wheel is not None and not wheel.is_file():
        raise InvalidInput(f"no wheel at {wheel}", hint="build one: pip wheel --no-deps -w dist .")
    files = render_image(
        targets,
        serve_target=None if is_file else target,
        deployment_text=text,
        port=serve_port,
        tether_requirement=spec,
        source=target,
    )
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in files.files.items():
        (folder / name).write_text(body)
    if wheel is not None:
        shutil.copy2(wheel, folder / wheel.name)
    if as_json:
        emit_json({"out": out, **files.to_dict(), **({"warning": warning} if warning else {})})
        return
    for t in targets:
        console.print(f"{t.reference} -> {t.resolved} ({t.digest[:16]})")
    console.print(
        f"wrote {folder}/: {', '.join(sorted(files.files))}"
        + (f", {wheel.name}" if wheel else "")
        + f"  (Python {files.python}, {len(files.packages)} pinned packages)"
    )
    console.print(f"build it: docker build -t IMAGE:TAG {folder}", style="dim")


@click.command("build")
@click.argument("ref")
@click.option("--tag", "-t", required=True, metavar="IMAGE:TAG", help="The image to build.")
@click.option("--out", "out", default=None, metavar="DIR",
              help="Where to write the build context (default: tether-build-NAME).")
@click.option("--tether", "tether_spec", default=None, metavar="SPEC",
              help="How the image installs tether: a requirement or a path to a built wheel.")
@click.option("--port", default=8000, show_default=True, type=PORT, help="Port to serve on.")
@click.option("--no-build", is_flag=True,
              help="Only write the build context (no docker or podman build).")
@json_option
@click.pass_context
@handle_errors
def build(
    ctx: click.Context,
    ref: str,
    tag: str,
    out: str | None,
    tether_spec: str | None,
    port: int,
    no_build: bool,
    as_json: bool,
) -> None:
    """Write an OCI build context with REF's verified bytes baked in, and build it.

    The Dockerfile pins the recorded Python and the model's packages, copies
    the version's files (verified on the way out of the registry), labels the
    image with name, version and digest, runs as a non-root user with a
    healthcheck on /readyz, and starts `tether image serve`, which refuses to
    start if the baked bytes do not hash to the digest the image was built for.
    Runs `docker build` or `podman build` when one is installed and working.
    """
    import subprocess

    from .._registry.baked import bake, record_digest
    from ..k8s import ImageTarget, bake_dockerfile, render_image

    registry = registry_from(ctx)
    version = registry.get(ref)
    folder = Path(out or f"tether-build-{version.name}")
    if folder.exists() and any(folder.iterdir()):
        raise InvalidInput(f"{folder} is not empty", hint="choose a new --out folder")
    spec, warning = _tether_spec(tether_spec)
    if warning and not as_json:
        err_console.print(f"warning: {warning}", markup=False)
    wheel = Path(spec) if spec.endswith(".whl") else None
    if wheel is not None and not wheel.is_file():
        raise InvalidInput(f"no wheel at {wheel}", hint="build one: pip wheel --no-deps -w dist .")
    target = ImageTarget(
        reference=ref, resolved=version.ref, digest=f"sha:{version.digest}",
        environment=version.environment,
        requirements=registry.env_export(version.ref, format="requirements"),
    )
    files = render_image([target], serve_target=version.ref, port=port,
                         tether_requirement=spec, source=ref)
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in files.files.items():
        (folder / name).write_text(body)
    bake(registry, version.ref, folder / "model")
    (folder / "Dockerfile").write_text(bake_dockerfile(
        files.files["Dockerfile"], ref=version.ref, digest=f"sha:{version.digest}", port=port,
        record=record_digest(folder / "model")))
    (folder / ".dockerignore").write_text(files.files[".dockerignore"] + "!model\n!model/**\n")
    if wheel is not None:
        shutil.copy2(wheel, folder / wheel.name)
    engine = None if no_build else _container_engine()
    built = False
    if engine is not None:
        result = subprocess.run([engine, "build", "-t", tag, str(folder)], check=False)
        if result.returncode != 0:
            raise InvalidInput(f"`{engine} build` failed (exit {result.returncode})",
                               hint=f"the context is in {folder}; fix and run it again")
        built = True
    report = {"ref": version.ref, "digest": f"sha:{version.digest}", "tag": tag,
              "context": str(folder), "engine": engine, "built": built,
              "python": files.python, "packages": files.packages}
    if warning:
        report["warning"] = warning
    if as_json:
        emit_json(report)
        return
    console.print(f"{version.ref} (sha:{version.digest[:12]}) baked into {folder}/ "
                  f"(Python {files.python}, {len(files.packages)} pinned packages)")
    if built:
        console.print(f"built {tag} with {engine}")
    else:
        why = "--no-build" if no_build else "no working docker or podman here"
        console.print(f"not built ({why}); run: docker build -t {tag} {folder}")


def _exit_through_finally(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _container_engine() -> str | None:
    """docker or podman, when installed and able to build (a daemon that answers)."""
    import subprocess

    for engine in ("docker", "podman"):
        if shutil.which(engine) is None:
            continue
        probe = subprocess.run([engine, "info"], capture_output=True, check=False, timeout=20)
        if probe.returncode == 0:
            return engine
    return None


@image_group.command("serve")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--expect", default=None, metavar="sha:DIGEST",
              help="The digest the image was built for (default: $TETHER_BAKED_DIGEST).")
@click.option("--expect-record", default=None, metavar="sha:DIGEST",
              help="The BLAKE3 of the baked record, pinning the version's name, semantic "
              "version, tags and environment too (default: $TETHER_BAKED_RECORD).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=PORT)
@click.option("--trusted", is_flag=True, help="Load code-executing formats (pickle).")
@handle_errors
def image_serve(
    folder: Path, expect: str | None, expect_record: str | None, host: str, port: int,
    trusted: bool
) -> None:
    """Serve the version `tether build` baked into FOLDER, after proving its bytes.

    Every baked file is re-hashed to the record, the record to its digest, and
    the digest compared with the one the image was built for; any difference
    refuses to start, naming it. The version is then registered in a private
    registry under $TETHER_CACHE_DIR and served as `tether serve` would.
    """
    import os
    import signal
    import tempfile

    from .._registry.baked import clear_dead_baked, hold_baked, read_baked, register_baked
    from .._registry.location import default_cache_dir
    from .._registry.registry import Registry
    from ..serving import serve as run
    from .serving import _deployment

    expected = expect or os.environ.get("TETHER_BAKED_DIGEST")
    record = expect_record or os.environ.get("TETHER_BAKED_RECORD")
    version = read_baked(folder, expected, record)
    if expected is None and record is None:
        err_console.print(
            "warning: nothing pins this folder (no --expect, no TETHER_BAKED_DIGEST): its "
            "files match its own record, whatever that record says it is", markup=False)
    elif record is None:
        err_console.print(
            "warning: the record is not pinned (no --expect-record, no TETHER_BAKED_RECORD): "
            "the bytes are the ones built, but its name, version, tags and environment are "
            "the record's word", markup=False)
    home = default_cache_dir()
    home.mkdir(parents=True, exist_ok=True)
    clear_dead_baked(home)
    # One private registry a start, removed when the server stops (each start of a
    # crash-looping pod left a copy of the model behind: a review).
    scratch = Path(tempfile.mkdtemp(prefix=f"baked-{os.getpid()}-", dir=home))
    # uvicorn raises SIGTERM again once it has shut down: with the default handler the
    # process died there, past this ``finally``; this one exits through it (143, as a
    # process ended by SIGTERM reports).
    signal.signal(signal.SIGTERM, _exit_through_finally)
    held = hold_baked(scratch)
    try:
        registry = Registry.init(scratch / ".tether", actor="tether-image")
        served = register_baked(registry, version, folder)
        console.print(f"{served.ref} (sha:{served.digest[:12]}): every baked byte verified; "
                      f"serving on http://{host}:{port}", style="dim")
        deployment = _deployment(f"{served.name}@sha:{served.digest}", host=host, port=port,
                                 trusted=trusted, env_policy=None)
        run(registry, deployment)
    finally:
        held.close()
        shutil.rmtree(scratch, ignore_errors=True)
