"""A plain file or folder of artifacts; loading gives back its path."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .._errors import InvalidInput


class FilesFlavor:
    name: str = "files"

    def save(self, model: Any, dest: Path, **_options: Any) -> dict[str, Any]:
        source = Path(model)
        if not source.exists():
            raise InvalidInput(f"{source} does not exist", hint="pass an existing file or folder")
        if source.is_file():
            shutil.copy2(source, dest / source.name)
            return {
                "name": self.name,
                "kind": "file",
                "entry": source.name,
                "framework_packages": [],
                "framework_versions": {},
            }
        root = source.resolve()
        for path in source.rglob("*"):
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise InvalidInput(
                    f"{path} links outside {source}",
                    hint="copy the target into the folder instead of linking it",
                )
        shutil.copytree(source, dest, dirs_exist_ok=True, symlinks=False)
        return {
            "name": self.name,
            "kind": "directory",
            "entry": ".",
            "framework_packages": [],
            "framework_versions": {},
        }

    def load(self, src: Path, record: dict[str, Any], *, trusted: bool = False) -> Any:
        return src if record.get("entry", ".") == "." else src / record["entry"]

    def predict(self, model: Any, data: Any) -> Any:
        raise InvalidInput("a files version has no predict; load it and read its files")
