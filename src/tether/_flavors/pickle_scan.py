"""Reading what a pickle would import, without unpickling it.

Unpickling runs whatever callables the pickle names. Walking its opcodes
tells which globals it would import; anything outside an allow-list of
modules known to be safe for fitted models is refused before a byte runs.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterable
from pathlib import Path

from .._errors import UnsafeArtifact

#: Module prefixes whose globals fitted scikit-learn models use.
DEFAULT_ALLOW: tuple[str, ...] = (
    "sklearn.",
    "numpy.",
    "numpy",
    "scipy.",
    "collections.OrderedDict",
    "collections.defaultdict",
    "collections.Counter",
    "copyreg._reconstructor",
    "_codecs.encode",
    "builtins.slice",
    "builtins.set",
    "builtins.frozenset",
    "builtins.complex",
    "builtins.bytearray",
    "builtins.range",
    "builtins.object",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.float",
    "builtins.int",
    "builtins.bool",
    "builtins.str",
    "builtins.bytes",
    "_operator.itemgetter",
    "datetime.",
    "decimal.Decimal",
    "pandas.",
    "joblib.numpy_pickle",
)

#: Never allowed, whatever the allow-list says.
DENY: tuple[str, ...] = (
    "os.",
    "posix.",
    "nt.",
    "subprocess.",
    "sys.",
    "shutil.",
    "socket.",
    "runpy.",
    "importlib.",
    "builtins.eval",
    "builtins.exec",
    "builtins.getattr",
    "builtins.setattr",
    "builtins.__import__",
    "builtins.compile",
    "builtins.open",
    "builtins.globals",
    "builtins.breakpoint",
    "builtins.input",
    "numpy.load",
    "numpy.save",
    "numpy.testing.",
    "numpy.f2py.",
    "numpy.distutils.",
    "pickle.",
    "_pickle.",
    "marshal.",
    "types.",
    "code.",
    "ctypes.",
    "pty.",
    "webbrowser.",
)

_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "UNICODE",
    "BINUNICODE8",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}


def scan_pickle(data: bytes | str | Path) -> list[str]:
    """Fully qualified names of every global the pickle would import."""
    raw = Path(data).read_bytes() if isinstance(data, str | Path) else data
    names: list[str] = []
    recent: list[str | None] = []  # the strings pushed most recently, for STACK_GLOBAL
    memo: dict[int, str | None] = {}
    next_memo = 0
    try:
        for opcode, arg, _pos in pickletools.genops(raw):
            name = opcode.name
            if name in _STRING_OPS:
                recent.append(str(arg))
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                names.append(f"{module}.{attr}")
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) >= 2 and recent[-2] is not None and recent[-1] is not None:
                    names.append(f"{recent[-2]}.{recent[-1]}")
                else:
                    names.append("<unknown>")
                recent.append(None)
            elif name == "MEMOIZE":
                memo[next_memo] = recent[-1] if recent else None
                next_memo += 1
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(str(arg))] = recent[-1] if recent else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                recent.append(memo.get(int(str(arg))))
            elif name not in ("PROTO", "FRAME"):
                recent.append(None)
    except Exception as error:
        names.append(f"<unreadable pickle: {error}>")
    return sorted(set(names))


def _allowed(name: str, allow: Iterable[str]) -> bool:
    if (
        any(name == d.rstrip(".") or name.startswith(d) for d in DENY if d.endswith("."))
        or name in DENY
    ):
        return False
    return any(
        name == a
        or (a.endswith(".") and name.startswith(a))
        or (not a.endswith(".") and name.startswith(a + "."))
        for a in allow
    )


def unsafe_globals(names: Iterable[str], allow: Iterable[str] = DEFAULT_ALLOW) -> list[str]:
    allow = tuple(allow)
    return sorted(n for n in set(names) if not _allowed(n, allow))


def check_pickle_safe(
    data: bytes | str | Path, *, label: str, allow: Iterable[str] = DEFAULT_ALLOW
) -> None:
    refused = unsafe_globals(scan_pickle(data), allow)
    if refused:
        shown = ", ".join(refused[:15]) + (" …" if len(refused) > 15 else "")
        raise UnsafeArtifact(
            f"{label} would import code outside the safe list when unpickled: {shown}",
            hint="load it only if you trust its author: tether.load(ref, trusted=True) or "
            '--trust; or log scikit-learn models with serialization="skops"',
        )
