"""`tether hooks install`: git hooks that keep data out of git and models in step.

- pre-commit runs ``tether hooks pre-commit``: a staged file larger than the
  limit is refused with the command that tracks it instead
  (``tether data track PATH``), or, if a pointer already tracks it, the
  command that unstages it.
- pre-push runs ``tether check`` when the work tree has a ``tether.lock``.

Installing is idempotent (our own hooks are rewritten in place). A hook that
is not ours is never overwritten without ``force``: it is renamed
``NAME.pre-tether`` and ours runs it first (with the same arguments and
input), so both apply.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._errors import InvalidInput
from .datasets_io import POINTER_SUFFIX

MARKER = "# tether-hooks: installed by `tether hooks install`; run it again to update."
HOOKS = ("pre-commit", "pre-push")
CHAINED_SUFFIX = ".pre-tether"
DEFAULT_MAX_SIZE = 5 * 1024 * 1024
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}


def parse_size(text: str | int) -> int:
    """``5MB``, ``500k``, ``1048576`` -> bytes (K/M/G are powers of 1024)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise InvalidInput(f"{text!r} is not a size", hint="for example 5MB, 500KB or 1048576")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _git(args: list[str], cwd: Path, data: bytes | None = None) -> bytes:
    result = subprocess.run(["git", *args], cwd=cwd, input=data, capture_output=True,
                            check=False, timeout=300)
    if result.returncode != 0:
        raise InvalidInput(f"git {' '.join(args[:2])} failed in {cwd}: "
                           f"{result.stderr.decode(errors='replace').strip()}",
                           hint="run it inside a git work tree")
    return result.stdout


def hooks_dir(start: Path | None = None) -> Path:
    """Where git looks for hooks here (honours core.hooksPath)."""
    where = (start or Path.cwd()).absolute()
    found = Path(_git(["rev-parse", "--git-path", "hooks"], where).decode().strip())
    return found if found.is_absolute() else where / found


def _launcher() -> str:
    """Shell words that run this tether: this Python if it still exists, else PATH's."""
    code = "import sys; from tether.cli import main; sys.argv[0] = 'tether'; main()"
    python = shlex.quote(sys.executable)
    return (
        f"if [ -x {python} ]; then\n"
        f"  tether() {{ {python} -c {shlex.quote(code)} \"$@\"; }}\n"
        "fi\n"
    )


def script(hook: str, max_size: int) -> str:
    chained = f'"$(dirname "$0")/{hook}{CHAINED_SUFFIX}"'
    head = (
        "#!/bin/sh\n"
        f"{MARKER}\n"
        f"if [ -x {chained} ]; then\n"
        f'  {chained} "$@" || exit $?\n'
        "fi\n" + _launcher()
    )
    if hook == "pre-commit":
        return head + f"tether hooks pre-commit --max-size {max_size} </dev/null\n"
    return head + (
        "top=$(git rev-parse --show-toplevel) || exit 1\n"
        '[ -f "$top/tether.lock" ] || exit 0\n'
        'cd "$top" && tether check </dev/null\n'
    )


@dataclass
class Installed:
    hook: str
    path: str
    #: installed | updated | unchanged | chained (a foreign hook kept, run first) | replaced
    action: str
    chained: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def install(start: Path | None = None, *, max_size: int = DEFAULT_MAX_SIZE,
            force: bool = False) -> list[Installed]:
    folder = hooks_dir(start)
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for hook in HOOKS:
        path = folder / hook
        text = script(hook, max_size)
        chained_path = path.with_name(hook + CHAINED_SUFFIX)
        chained = str(chained_path) if chained_path.exists() else None
        if not path.exists() and not path.is_symlink():
            action = "installed"
        elif MARKER in _read(path):
            action = "unchanged" if _read(path) == text else "updated"
        elif force:
            action = "replaced"
        else:
            if chained_path.exists() or chained_path.is_symlink():
                raise InvalidInput(
                    f"{path} is not Tether's and {chained_path.name} is taken already",
                    hint="merge them by hand, or pass --force to replace the hook",
                )
            path.rename(chained_path)
            chained, action = str(chained_path), "chained"
        if action != "unchanged":
            if path.is_symlink():
                path.unlink()
            path.write_text(text)
        path.chmod(0o755)
        done.append(Installed(hook, str(path), action, chained))
    return done


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except (OSError, IsADirectoryError):
        return ""


@dataclass
class Refused:
    path: str
    size: int
    pointer: str | None  # the pointer already tracking it, if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message(self, limit: int) -> str:
        from .._humanize import printable

        # A file name is anyone's text: one with a line break wrote lines of its own into
        # the hook's output (reviews), so names are shown escaped; the command to run is
        # given only for a name that is its own escape (else it would name another file).
        shown_path, shown_pointer = printable(self.path), printable(self.pointer)
        size = f"{self.size / 1024 / 1024:.1f} MiB"
        plain = shown_path == self.path
        if self.pointer:
            fix = (f"git rm --cached {shlex.quote(self.path)}" if plain
                   else "git rm --cached that file")
            return (f"{shown_path} ({size}) is tracked by {shown_pointer}: keep its bytes out "
                    f"of git: {fix}")
        fix = (f"git rm --cached {shlex.quote(self.path)} && "
               f"tether data track {shlex.quote(self.path)}" if plain
               else "git rm --cached that file, then tether data track it")
        return (f"{shown_path} ({size}, over {limit / 1024 / 1024:.1f} MiB) belongs in Tether, "
                f"not git: {fix}")


def staged_too_large(start: Path | None = None, *, max_size: int = DEFAULT_MAX_SIZE
                     ) -> list[Refused]:
    """Files added or changed in the index that are over ``max_size`` bytes."""
    where = (start or Path.cwd()).absolute()
    top = Path(_git(["rev-parse", "--show-toplevel"], where).decode().strip())
    raw = _git(["diff", "--cached", "--raw", "-z", "--no-abbrev", "--diff-filter=ACMR"], top)
    fields = raw.decode(errors="surrogateescape").split("\0")
    staged: list[tuple[str, str]] = []  # (path, blob)
    i = 0
    while i < len(fields) - 1:
        meta = fields[i].split()
        if not meta:
            break
        # renames and copies name two paths; the new one is last
        count = 2 if meta[-1][:1] in ("R", "C") else 1
        staged.append((fields[i + count], meta[3]))
        i += 1 + count
    if not staged:
        return []
    sizes = _git(["cat-file", "--batch-check=%(objectsize)"], top,
                 "".join(f"{blob}\n" for _, blob in staged).encode()).decode().split()
    refused = []
    for (path, _), size in zip(staged, sizes, strict=True):
        if int(size) > max_size:
            refused.append(Refused(path, int(size), _pointer_of(top, path)))
    return refused


def _pointer_of(top: Path, path: str) -> str | None:
    parts = Path(path).parts
    for depth in range(len(parts), 0, -1):
        candidate = Path(*parts[:depth])
        pointer = top / candidate.with_name(candidate.name + POINTER_SUFFIX)
        if pointer.is_file():
            return pointer.relative_to(top).as_posix()
    return None
