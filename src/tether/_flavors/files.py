"""A plain file or folder of artifacts; loading gives back its path.

A file is stored under its own name; a folder keeps its relative layout. Links
inside a folder are stored as the files they point to; a link that leaves the
folder, dangles or loops is refused, as are sockets, pipes and devices.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import InvalidInput
from .._identity import part_reserved
from .base import framework_fields


class FilesFlavor:
    name: str = "files"

    def save(self, model: Any, dest: Path, **_options: Any) -> dict[str, Any]:
        if not isinstance(model, str | os.PathLike):
            raise InvalidInput(
                f"the files flavor stores a path, not a {type(model).__name__}",
                hint="pass the path of a file or folder",
            )
        source = Path(model)
        if source.is_dir():
            root = source.resolve()
            if _copy_tree(root, dest, root, (root,)) == 0:
                raise InvalidInput(f"{source} holds no files", hint="a version needs a file")
            return self._record("directory", ".")
        if source.is_file():
            _place(source.resolve(), dest / source.name)
            return self._record("file", source.name)
        if source.exists():
            raise InvalidInput(f"{source} is neither a regular file nor a folder")
        raise InvalidInput(f"{source} does not exist", hint="pass an existing file or folder")

    def load(
        self,
        src: Path,
        record: dict[str, Any],
        *,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
    ) -> Any:
        entry = str(record.get("entry", "."))
        if entry == ".":
            return src
        if "/" in entry or "\\" in entry or entry in ("", ".."):
            raise InvalidInput(f"the files record names {entry!r}, not a file name")
        return src / entry

    def predict(self, model: Any, data: Any) -> Any:
        raise InvalidInput(
            "a files version has no predict",
            hint="load it to get its path, then read the files with your own code",
        )

    def _record(self, kind: str, entry: str) -> dict[str, Any]:
        return {"name": self.name, "kind": kind, "entry": entry, **framework_fields([])}


def _place(source: Path, target: Path) -> None:
    """Put the regular file ``source`` at ``target`` for the store to read: a link, not
    a copy (copying a multi-GB checkpoint into the scratch folder first doubled the
    disk traffic of a log). What is stored is what the store reads, digest and all."""
    os.symlink(source, target)


def _copy_tree(folder: Path, dest: Path, root: Path, ancestors: tuple[Path, ...]) -> int:
    """Mirror ``folder`` (a real path inside ``root``) in ``dest``; the number of files."""
    copied = 0
    for entry in sorted(folder.iterdir()):
        if part_reserved(entry.name):
            continue  # a clone's .git (or a registry) is not the model: no version holds one
        target = entry
        if entry.is_symlink():
            target = entry.resolve()
            shown = entry.relative_to(root) if entry.is_relative_to(root) else entry
            if not target.is_relative_to(root):
                raise InvalidInput(
                    f"{shown} is a link to {target}, outside the folder {root}",
                    hint="copy the target into the folder instead of linking to it",
                )
            if not target.exists():
                raise InvalidInput(f"{shown} is a broken link (to {target})")
            if target.is_dir() and target in ancestors:
                raise InvalidInput(f"{shown} links back to {target}, a loop")
        if target.is_dir():
            (dest / entry.name).mkdir()
            copied += _copy_tree(target, dest / entry.name, root, (*ancestors, target))
        elif target.is_file():
            _place(target.resolve(), dest / entry.name)
            copied += 1
        else:
            raise InvalidInput(f"{entry} is not a regular file (a socket, pipe or device)")
    return copied
