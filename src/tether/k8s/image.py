"""A container build context that serves registered versions with ``tether serve``.

``render_image`` takes what the registry recorded about each version to serve
(its environment, exported as pinned requirements) and returns the files of a
build context: a Dockerfile, requirements.txt and, for a deployment, the
deployment file. The model bytes are not baked in: the replica fetches and
verifies them from the registry at start, as ``tether serve`` always does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from .._errors import InvalidInput
from .manifests import CACHE_DIR, CONFIG_DIR, CONFIG_FILE, USER_ID

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*\Z")
#: Installed by its own line (``tether_requirement``), never from a recorded pin.
_OWN = {"tether"}


@dataclass(frozen=True)
class ImageTarget:
    """One version the image must serve, as the registry recorded it."""

    reference: str  # as written: iris@production
    resolved: str  # iris@1.0.0
    digest: str
    environment: dict[str, Any]
    #: ``Registry.env_export(reference, format="requirements")``
    requirements: str


@dataclass(frozen=True)
class ImageFiles:
    """The build context: file name -> text, plus what it was made from."""

    files: dict[str, str]
    python: str
    packages: list[str]
    targets: list[ImageTarget] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "packages": self.packages,
            "files": sorted(self.files),
            "targets": [
                {"reference": t.reference, "resolved": t.resolved, "digest": t.digest}
                for t in self.targets
            ],
        }


def render_image(
    targets: Sequence[ImageTarget],
    *,
    serve_target: str | None = None,
    deployment_text: str | None = None,
    port: int = 8000,
    tether_requirement: str = f"tether=={__version__}",
    source: str | None = None,
) -> ImageFiles:
    """Dockerfile + requirements.txt (+ deploy.yaml) serving ``targets``.

    ``serve_target`` is what ``tether serve`` runs for a single version (a
    reference, followed at run time); with ``deployment_text`` the image
    carries that deployment file and serves it instead.
    """
    if not targets:
        raise InvalidInput("nothing to build: no version to serve")
    if (serve_target is None) == (deployment_text is None):
        raise InvalidInput("give either a reference to serve or a deployment file, not both")
    python = _python(targets)
    pins = _merge(targets)
    requirements = _requirements(targets, pins, python, tether_requirement)
    files = {"requirements.txt": requirements}
    target = serve_target if serve_target is not None else f"{CONFIG_DIR}/{CONFIG_FILE}"
    if deployment_text is not None:
        files[CONFIG_FILE] = deployment_text
    files["Dockerfile"] = _dockerfile(
        targets,
        python=python,
        target=target,
        with_deployment=deployment_text is not None,
        port=port,
        wheel=tether_requirement if tether_requirement.endswith(".whl") else None,
        source=source or target,
    )
    files[".dockerignore"] = "*\n!requirements.txt\n!deploy.yaml\n!*.whl\n"
    return ImageFiles(files, python, [f"{n}=={v}" for n, (v, _) in sorted(pins.items())],
                      list(targets))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _python(targets: Sequence[ImageTarget]) -> str:
    seen: dict[str, tuple[str, str]] = {}
    for t in targets:
        full = str(t.environment.get("python") or "")
        if not re.match(r"^\d+\.\d+(\.\d+)?\Z", full):
            raise InvalidInput(
                f"{t.resolved} has no recorded Python version ({full or 'none'})",
                hint="re-log the version: its environment is captured at log time",
            )
        minor = ".".join(full.split(".")[:2])
        seen.setdefault(minor, (full, t.resolved))
    if len(seen) > 1:
        (a, (_, ra)), (b, (_, rb)) = sorted(seen.items())[:2]
        raise InvalidInput(
            f"{ra} was recorded on Python {a} and {rb} on Python {b}: one image has one Python",
            hint="serve them from separate images, or re-log one version under the other's Python",
        )
    return next(iter(seen.values()))[0]


def _merge(targets: Sequence[ImageTarget]) -> dict[str, tuple[str, str]]:
    """name -> (version, the reference that pinned it); a disagreement is refused."""
    pins: dict[str, tuple[str, str]] = {}
    for t in targets:
        for line in t.requirements.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            match = _PIN.match(line)
            if match is None:
                raise InvalidInput(f"{t.resolved}: cannot read requirement {line!r}")
            name, version = _normal(match.group(1)), match.group(2)
            if name in _OWN:
                continue
            if name in pins and pins[name][0] != version:
                raise InvalidInput(
                    f"{pins[name][1]} needs {name}=={pins[name][0]} and {t.resolved} needs "
                    f"{name}=={version}: one image cannot hold both",
                    hint="serve them from separate images (a deployment file each), "
                    "or re-log one version in the other's environment",
                )
            pins.setdefault(name, (version, t.resolved))
    return pins


def _requirements(targets: Sequence[ImageTarget], pins: dict[str, tuple[str, str]],
                  python: str, tether_requirement: str) -> str:
    wheel = tether_requirement.endswith(".whl")
    tether_line = (
        f"/wheels/{tether_requirement.rsplit('/', 1)[-1]}" if wheel else tether_requirement
    )
    lines = [
        f"# Written by `tether image render` (tether {__version__}): Python {python}.",
        "# Every package pinned as the registry recorded it for:",
        *[f"#   {t.reference} -> {t.resolved} ({t.digest})" for t in targets],
        *[f"{name}=={version}" for name, (version, _) in sorted(pins.items())],
        "# Tether itself, installed in the same resolve so a clash fails the build:",
        tether_line,
    ]
    return "\n".join(lines) + "\n"


def _dockerfile(targets: Sequence[ImageTarget], *, python: str, target: str,
                with_deployment: bool, port: int, wheel: str | None, source: str) -> str:
    first = targets[0]
    env = first.environment
    labels = {
        "org.opencontainers.image.title": f"tether serve {source}",
        "org.opencontainers.image.description": "Serves registered versions with tether serve",
        "tether.versions": " ".join(t.resolved for t in targets),
        "tether.digests": " ".join(t.digest for t in targets),
    }
    health = (
        "import sys, urllib.request; "
        f"sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=2)"
        ".status == 200 else 1)"
    )
    lines = [
        f"# Written by `tether image render {source}` (tether {__version__}).",
        f"# Recorded on {env.get('platform', '?')}/{env.get('machine', '?')}, Python {python}.",
        "# The model bytes are not in the image: at start the replica fetches them from",
        "# the registry ($TETHER_URI, token $TETHER_TOKEN) and verifies every byte.",
    ]
    accelerators = sorted({str(a.get("kind")) for t in targets
                           for a in (t.environment.get("accelerators") or [])})
    if accelerators:
        lines.append(f"# WARNING: recorded with accelerators ({', '.join(accelerators)}); "
                     "for GPU inference use a CUDA base image with this Python instead.")
    lines += [
        f"FROM python:{python}-slim",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "
        f"TETHER_CACHE_DIR={CACHE_DIR}",
        f"RUN groupadd --gid {USER_ID} tether "
        f"&& useradd --uid {USER_ID} --gid {USER_ID} --no-create-home "
        "--shell /usr/sbin/nologin tether "
        f"&& mkdir -p {CACHE_DIR} {CONFIG_DIR} && chown {USER_ID}:{USER_ID} {CACHE_DIR}",
        "WORKDIR /app",
    ]
    if wheel:
        lines.append(f"COPY {wheel.rsplit('/', 1)[-1]} /wheels/")
    lines += [
        "COPY requirements.txt /app/requirements.txt",
        "RUN pip install --no-cache-dir -r /app/requirements.txt",
    ]
    if with_deployment:
        lines.append(f"COPY {CONFIG_FILE} {CONFIG_DIR}/{CONFIG_FILE}")
    lines += [
        *[f"LABEL {key}={json.dumps(value)}" for key, value in labels.items()],
        f"USER {USER_ID}:{USER_ID}",
        f"EXPOSE {port}",
        "HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 "
        f"CMD {json.dumps(['python', '-c', health])}",
        f"ENTRYPOINT {json.dumps(['tether'])}",
        "CMD " + json.dumps(["serve", target, "--host", "0.0.0.0", "--port", str(port)]),
    ]
    return "\n".join(lines) + "\n"


#: Where ``tether build`` puts the baked version inside the image.
BAKED_DIR = "/opt/tether/model"


def bake_dockerfile(dockerfile: str, *, ref: str, digest: str, port: int,
                    record: str | None = None) -> str:
    """``dockerfile`` (from ``render_image``) serving the baked version instead of fetching it.

    The verified files and the record go into ``BAKED_DIR``; the image states the
    digest it was built for, and ``tether image serve`` refuses to start on any
    other bytes.
    """
    lines = dockerfile.rstrip("\n").split("\n")
    lines = [
        "# The model bytes are baked in (`tether build`): at start every baked file is"
        if line.startswith("# The model bytes are not in the image")
        else "# re-hashed to the digest below; any other bytes refuse to start."
        if line.startswith("# the registry ($TETHER_URI")
        else line
        for line in lines
        if not line.startswith(("CMD ", "ENTRYPOINT "))
    ]
    user = next(i for i, line in enumerate(lines) if line.startswith("USER "))
    lines[user:user] = [
        f"COPY model/ {BAKED_DIR}/",
        f"ENV TETHER_BAKED_DIGEST={digest}",
        *([f"ENV TETHER_BAKED_RECORD={record}"] if record else []),
        f"LABEL tether.baked={json.dumps(ref)} tether.baked_digest={json.dumps(digest)}"
        + (f" tether.baked_record={json.dumps(record)}" if record else ""),
    ]
    lines += [
        f"ENTRYPOINT {json.dumps(['tether'])}",
        "CMD " + json.dumps(["image", "serve", BAKED_DIR, "--host", "0.0.0.0",
                             "--port", str(port)]),
    ]
    return "\n".join(lines) + "\n"
