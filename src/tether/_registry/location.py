"""Finding, creating and describing an embedded registry folder.

An embedded registry is a folder (``.tether`` by default) holding
``tether.toml`` (which database and which store), the SQLite file and the
local object store. Commands find it from ``--registry``, then ``TETHER_URI``,
then by walking up from the working directory the way git finds ``.git``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .._errors import Conflict, InvalidInput, RegistryNotFound
from .._store.blobs import user_cache_dir

CONFIG_NAME = "tether.toml"
DEFAULT_DIR = ".tether"
FORMAT = 1


@dataclass(frozen=True)
class RegistryLocation:
    root: Path | None  # the folder, for an embedded registry
    db_url: str
    store_url: str
    cache_dir: Path


def default_cache_dir() -> Path:
    """The user's cache folder (``TETHER_CACHE_DIR``; see ``blobs.user_cache_dir``)."""
    return user_cache_dir()


def audit_key_path(location: RegistryLocation) -> Path:
    """The audit key: in the registry folder, or for a server ``TETHER_AUDIT_KEY``.

    A server's default is ``~/.config/tether/audit-key.pem``; keep it (and a
    copy) where those who can write the database cannot.
    """
    configured = os.environ.get("TETHER_AUDIT_KEY")
    if configured:
        return Path(configured).expanduser()
    if location.root is not None:
        return location.root / "keys" / "audit-key.pem"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "tether" / "audit-key.pem"


def _write_config(root: Path, db_url: str, store_url: str) -> None:
    text = (
        "# Tether registry. Edit with care: the database and store hold your versions.\n"
        "[registry]\n"
        f"format = {FORMAT}\n"
        f'db = "{db_url}"\n'
        f'store = "{store_url}"\n'
    )
    tmp = root / (CONFIG_NAME + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, root / CONFIG_NAME)


def create_location(
    path: str | Path, *, db_url: str | None = None, store_url: str | None = None
) -> RegistryLocation:
    """Create the folder and its config; refuses a folder that holds something else."""
    text = str(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        # TETHER_URI=http://host:8080 exported for the server's clients made
        # `tether init` create a folder named "http:/host:8080".
        raise InvalidInput(
            f"{text} is a URL; `tether init` creates a registry in a folder",
            hint="a shared registry is created where its server runs, with `tether "
            "server-init`; to make a local one, pass a folder (`tether init .tether`) "
            "or unset TETHER_URI",
        )
    root = Path(text).expanduser().absolute()
    if store_url:  # checked before anything is made: `--store junk://x` made a registry
        from .._store import check_store_url  # whose every log failed (a review)

        check_store_url(_resolve_relative(root, store_url))
    if (root / CONFIG_NAME).exists():
        raise Conflict(
            f"a registry already exists at {root}",
            hint="use it as it is, or pass another folder with --registry",
        )
    if root.exists() and not root.is_dir():
        raise InvalidInput(f"{root} exists and is not a folder", hint="choose another path")
    if root.exists() and any(root.iterdir()):
        raise InvalidInput(
            f"{root} is not empty and is not a Tether registry",
            hint="choose an empty or new folder",
        )
    root.mkdir(parents=True, exist_ok=True)
    # A registry inside a git work tree is never committed with it (as a venv is not):
    # `git add -A` took the database, every stored byte and the audit signing key, and
    # switching branches then rolled the database back under the store.
    (root / ".gitignore").write_text(
        "# A Tether registry: its database, store and keys are not source.\n*\n")
    db = db_url or "sqlite:///registry.db"
    store = store_url or "file://objects"
    _write_config(root, db, store)
    return read_location(root)


def _resolve_relative(root: Path, url: str) -> str:
    """Relative sqlite and file URLs in the config are relative to the folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{root / url[len('sqlite:///') :]}"
    if url.startswith("file://") and not url.startswith("file:///"):
        return f"file://{root / url[len('file://') :]}"
    return url


def read_location(root: Path) -> RegistryLocation:
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        raise RegistryNotFound(
            f"{root} is not a Tether registry (it has no {CONFIG_NAME})",
            hint="create one with `tether init`, or point --registry / TETHER_URI at one",
        )
    try:
        config = tomllib.loads(config_path.read_text())["registry"]
        db_url, store_url = str(config["db"]), str(config["store"])
        written = config.get("format", FORMAT)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError) as error:
        raise RegistryNotFound(
            f"{config_path} is damaged: {error}",
            hint="restore it from a backup, or compare it with a fresh `tether init`",
        ) from error
    if isinstance(written, bool) or not isinstance(written, int) or not 1 <= written <= FORMAT:
        # Never checked: a folder of format 999 was used as if it were ours (a review).
        raise RegistryNotFound(
            f"{config_path} says format {str(written)[:40]}; this Tether reads format "
            f"{FORMAT} and older", hint="use the Tether that made it, or a newer one")
    return RegistryLocation(
        root=root,
        db_url=_resolve_relative(root, db_url),
        store_url=_resolve_relative(root, store_url),
        cache_dir=root / "cache",
    )


def _refuse_a_committed_registry(folder: Path) -> None:
    """Refuse a registry found by walking up from the working directory whose config a
    git repository tracks: a clone's ``.tether/tether.toml`` names whatever database and
    store its committer chose, and pushes, pulls and checks in the clone went there (the
    user's own registry, further up, was never reached). Named explicitly (``-r``,
    ``TETHER_URI``), a registry is the user's choice and is opened as it is."""
    config = folder / CONFIG_NAME
    if not config.is_file():
        return
    for top in folder.parents:
        if (top / ".git").exists():
            import subprocess

            try:
                tracked = subprocess.run(
                    ["git", "ls-files", "--error-unmatch", "--", str(config)], cwd=top,
                    capture_output=True, check=False, timeout=30).returncode == 0
            except (OSError, subprocess.SubprocessError):
                return  # no git to ask: as before
            if tracked:
                raise InvalidInput(
                    f"the registry at {folder} came with the git repository {top} (its "
                    f"{CONFIG_NAME} is committed there), so it names the database and store "
                    "its committer chose; it is not opened by being found",
                    hint="name your registry with --registry or TETHER_URI, or, if this one "
                    f"is yours, `git rm --cached {config.relative_to(top)}`")
            return


def find_location(uri: str | Path | None = None) -> RegistryLocation:
    """Locate the registry named by ``uri``, ``TETHER_URI`` or the working directory."""
    target = uri if uri is not None else os.environ.get("TETHER_URI")
    if target:
        text = str(target)
        if text.startswith("file://"):
            text = text[len("file://") :]
        path = Path(text).expanduser()
        if (path / CONFIG_NAME).is_file():
            return read_location(path.absolute())
        if (path / DEFAULT_DIR / CONFIG_NAME).is_file():
            return read_location((path / DEFAULT_DIR).absolute())
        if not path.exists():
            raise RegistryNotFound(
                f"no registry at {path}: the folder does not exist",
                hint=f"create it with `tether init {path}`",
            )
        return read_location(path.absolute())
    here = Path.cwd()
    for folder in (here, *here.parents):
        candidate = folder / DEFAULT_DIR
        if candidate.is_dir():
            _refuse_a_committed_registry(candidate)
            return read_location(candidate)
    raise RegistryNotFound(
        f"no registry found in {here} or its parents",
        hint="create one with `tether init`, or set TETHER_URI / --registry",
    )
