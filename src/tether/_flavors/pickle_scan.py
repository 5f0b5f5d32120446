"""Reading what a pickle would import, without unpickling it: a diagnostic.

Unpickling calls whatever the pickle names. Walking its opcodes with
``pickletools.genops`` tells which globals it would import, and which of them
fall outside an allow-list of names fitted scikit-learn models use.

This is a diagnostic, never a gate. An allow-list of importable names cannot
stop a gadget built only from allowed names (a distribution whose
``__setstate__`` executes its state, an export function that writes where it is
told, a method that reads any file), so Tether loads pickles only when the
caller trusts them (``trusted=True``, or a signature by a trusted key). The
findings here go into the refusal, to say what else the pickle would import.

A name that passes the list is also *resolved*: its module is imported (only
modules the list allows) and the attribute path followed as the unpickler
would, so that a re-export (``sklearn.some_module.os``, a function imported from
``importlib`` or ``joblib`` into an allowed module) is judged by what it really
is. Attribute paths through instances or dunder names, methods taken from a
class and instances themselves are refused whatever their module prefix.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import importlib
import os
import pickletools
import types
import warnings
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from .._errors import UnsafeArtifact
from .base import TRUST_HINT

#: What a STACK_GLOBAL whose operands cannot be read from the opcodes imports.
UNKNOWN = "<unknown>"

_NUMPY_SCALARS = (
    "bool", "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64", "intc", "uintc", "intp", "uintp", "longlong", "ulonglong", "float16",
    "float32", "float64", "longdouble", "complex64", "complex128", "clongdouble",
    "object_", "str_", "bytes_", "datetime64", "timedelta64",
)  # fmt: skip
#: numpy ufuncs commonly handed to FunctionTransformer; pure arithmetic.
_NUMPY_UFUNCS = (
    "log", "log1p", "log2", "log10", "exp", "expm1", "sqrt", "square", "abs",
    "absolute", "sign", "reciprocal", "negative", "clip", "tanh", "sin", "cos",
)  # fmt: skip

#: Globals fitted scikit-learn models use. An entry ending in "." is a prefix,
#: any other entry an exact name.
DEFAULT_ALLOW: tuple[str, ...] = (
    # scikit-learn: estimators, trees, losses, distance metrics, Cython helpers.
    "sklearn.",
    # numpy arrays, dtypes and scalars, under numpy 2 and numpy 1 names.
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.",
    "numpy._core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy._core.numeric._frombuffer",
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy.core.numeric._frombuffer",
    *(f"numpy.{name}" for name in _NUMPY_SCALARS),
    *(f"numpy.{name}" for name in _NUMPY_UFUNCS),
    # masked arrays (cv_results_ of a search).
    "numpy.ma.MaskedArray",
    "numpy.ma.core.MaskedArray",
    "numpy.ma.core._mareconstruct",
    # random states kept by estimators and losses.
    "numpy.random._pickle.",
    "numpy.random.bit_generator.",
    "numpy.random._mt19937.MT19937",
    "numpy.random._pcg64.PCG64",
    "numpy.random._pcg64.PCG64DXSM",
    "numpy.random._philox.Philox",
    "numpy.random._sfc64.SFC64",
    "numpy.random.mtrand.RandomState",
    "numpy.random._generator.Generator",
    # sparse matrices (models fitted on sparse data) and frozen distributions.
    "scipy.sparse.",
    "scipy.stats._distn_infrastructure.",
    "scipy.stats._continuous_distns.",
    "scipy.stats._discrete_distns.",
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
    "builtins.bytes",
    "builtins.range",
    "builtins.object",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.int",
    "builtins.float",
    "builtins.bool",
    "builtins.str",
)

#: Never allowed, whatever the allow-list says (checked on the name in the pickle
#: and on what it resolves to). An entry ending in "." is a prefix.
DENY: tuple[str, ...] = (
    "os.", "posix.", "nt.", "subprocess.", "sys.", "shutil.", "socket.", "runpy.",
    "importlib.", "pickle.", "_pickle.", "marshal.", "types.", "code.", "codeop.",
    "ctypes.", "pty.", "webbrowser.", "io.", "_io.", "tempfile.", "pathlib.",
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.getattr",
    "builtins.setattr", "builtins.delattr", "builtins.__import__", "builtins.open",
    "builtins.globals", "builtins.locals", "builtins.vars", "builtins.breakpoint",
    "builtins.input", "builtins.type",
    "joblib.", "cloudpickle.", "dill.", "pandas.read_pickle",
    "numpy.load", "numpy.save", "numpy.savez", "numpy.savez_compressed", "numpy.savetxt",
    "numpy.loadtxt", "numpy.genfromtxt", "numpy.fromfile", "numpy.memmap", "numpy.lib.",
    "numpy._core.memmap.", "numpy.ctypeslib.", "numpy.testing.", "numpy.f2py.",
    "numpy.distutils.",
    "scipy.io.", "scipy.sparse.save_npz", "scipy.sparse.load_npz", "scipy.sparse._matrix_io.",
    "sklearn.datasets.", "sklearn.utils._testing.", "sklearn.utils.discovery.",
    "sklearn.utils._joblib.", "sklearn._build_utils.", "sklearn.__check_build.",
)  # fmt: skip

_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
    | {"SHORT_BINSTRING", "BINSTRING", "STRING"}
)
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_EXT_OPS = frozenset({"EXT1", "EXT2", "EXT4"})


def scan_pickle(data: bytes | str | os.PathLike[str]) -> list[str]:
    """Fully qualified names (``module.qualname``) of every global the pickle would import.

    Sorted and unique. ``"<unknown>"`` stands for an import whose name cannot be
    read from the opcodes; ``"<unreadable pickle: ...>"`` for a stream that does
    not parse. Neither is ever allowed.
    """
    return sorted({_join(pair) for pair in _scan(_read(data))})


def unsafe_globals(names: Iterable[str], allow: Iterable[str] = DEFAULT_ALLOW) -> list[str]:
    """The names among ``names`` that are refused (with why, when resolving refused them)."""
    allowed = tuple(allow)
    refused: set[str] = set()
    for name in names:
        refused.update(_refusals(_split(name) if _name_ok(name, allowed) else (name, ""), allowed))
    return sorted(refused)


def pickle_findings(
    data: bytes | str | os.PathLike[str], allow: Iterable[str] = DEFAULT_ALLOW
) -> list[str]:
    """What the pickle would import that the scanner refuses, with why; sorted."""
    allowed = tuple(allow)
    refused: set[str] = set()
    for pair in set(_scan(_read(data))):
        refused.update(_refusals(pair, allowed))
    return sorted(refused)


def check_pickle_safe(
    data: bytes | str | os.PathLike[str],
    *,
    label: str,
    allow: Iterable[str] = DEFAULT_ALLOW,
) -> None:
    """Raise UnsafeArtifact when the pickle would import anything outside ``allow``.

    A diagnostic: passing it does not make a pickle safe to load.
    """
    names = pickle_findings(data, allow)
    if names:
        raise UnsafeArtifact(
            f"{label} would import code outside the allow-list when unpickled: {_shown(names)}",
            hint=TRUST_HINT,
        )


def _shown(names: list[str]) -> str:
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")


# -- reading the opcodes -----------------------------------------------------------


def _read(data: bytes | str | os.PathLike[str]) -> bytes:
    return bytes(data) if isinstance(data, bytes | bytearray) else Path(data).read_bytes()


def _join(pair: tuple[str, str]) -> str:
    module, qualname = pair
    return f"{module}.{qualname}" if qualname else module


def _scan(raw: bytes) -> list[tuple[str, str]]:
    """(module, qualname) of each import, in opcode order, as ``find_class`` gets them."""
    found: list[tuple[str, str]] = []
    # The two most recent stack pushes when they are known strings, else None.
    below: str | None = None
    top: str | None = None
    memo: dict[int, str | None] = {}
    proto = 0
    try:
        for opcode, arg, _pos in pickletools.genops(raw):
            op = opcode.name
            if op == "PROTO":
                proto = int(arg)  # type: ignore[arg-type]
                continue
            if op in ("FRAME", "STOP"):
                continue
            if op == "MEMOIZE":  # stores the top of the stack; the stack is unchanged
                memo[len(memo)] = top
                continue
            if op in _PUT_OPS:
                memo[int(arg)] = top  # type: ignore[arg-type]
                continue
            pushed: str | None = None
            if op in _STRING_OPS:
                pushed = str(arg)
            elif op in _GET_OPS:
                pushed = memo.get(int(arg))  # type: ignore[arg-type]
            elif op in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                found.append(_compat(module, name, proto))
            elif op == "STACK_GLOBAL":
                if below is not None and top is not None:
                    found.append(_compat(below, top, proto))
                else:
                    found.append((UNKNOWN, ""))
            elif op in _EXT_OPS:
                known = copyreg._inverted_registry.get(int(arg))  # type: ignore[arg-type, attr-defined]
                found.append((str(known[0]), str(known[1])) if known else (f"<ext {arg}>", ""))
            below, top = top, pushed
    except Exception as error:  # a truncated or crafted stream: refuse, never guess
        found.append((f"<unreadable pickle: {type(error).__name__}: {str(error)[:80]}>", ""))
    return found


def _compat(module: str, name: str, proto: int) -> tuple[str, str]:
    """The names the unpickler really imports: Python 2 names are mapped below protocol 3."""
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            mapped: tuple[str, str] = _compat_pickle.NAME_MAPPING[(module, name)]
            return mapped
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return module, name


# -- judging names -----------------------------------------------------------------


def _matches(name: str, entries: Iterable[str], *, below_exact: bool) -> bool:
    for entry in entries:
        if entry.endswith("."):
            if name.startswith(entry):
                return True
        elif name == entry or (below_exact and name.startswith(entry + ".")):
            return True
    return False


def _name_ok(name: str, allow: tuple[str, ...]) -> bool:
    if name.startswith("<") or _matches(name, DENY, below_exact=True):
        return False
    return _matches(name, allow, below_exact=False)


def _refusals(pair: tuple[str, str], allow: tuple[str, ...]) -> list[str]:
    """Why the import ``pair`` is refused: nothing when it is safe."""
    name = _join(pair)
    if not _name_ok(name, allow):
        return [name]
    module, qualname = pair
    if any(p.startswith("__") and p.endswith("__") for p in qualname.split(".")):
        return [f"{name} (a dunder attribute)"]
    reals, problems = _resolve(module, qualname)
    if problems:  # judged apart from names: an allowed prefix never excuses them
        return [f"{name} ({problem})" for problem in problems]
    for real in reals:
        if not _name_ok(real, allow):
            return [f"{name} (really {real})"]
    return []


def _split(name: str) -> tuple[str, str]:
    """(module, qualname) for a joined name: the longest prefix that imports as a module."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        if _importable(".".join(parts[:cut])):
            return ".".join(parts[:cut]), ".".join(parts[cut:])
    return ".".join(parts[:-1]), parts[-1]


def _importable(module: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except Exception:
        return False
    return True


@lru_cache(maxsize=4096)
def _resolve(module: str, qualname: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names of what the unpickler would get for (module, qualname), problems with it).

    Names are what the object really is (re-exports followed); problems say why
    it is refused whatever its name: an attribute of an instance, a method bound
    to an instance or taken from its class, an instance itself. Both are empty
    when it does not import: then unpickling fails as well, before any call.
    Called only for names the allow-list accepts, so only allowed modules import.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            obj: object = importlib.import_module(module)
        except Exception:
            return (), ()
        real: list[str] = []
        through_class = False
        for i, part in enumerate(qualname.split(".")):
            if not isinstance(obj, types.ModuleType | type):
                return tuple(real), ("an attribute of an instance",)
            through_class = through_class or isinstance(obj, type)
            try:
                obj = getattr(obj, part)
            except Exception:
                return (), ()
            if isinstance(obj, types.ModuleType):  # a module re-exported under another name
                real.append(".".join([obj.__name__, *qualname.split(".")[i + 1 :]]))
    if isinstance(obj, types.ModuleType):
        return tuple(real), ()
    owner = getattr(obj, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType | type):
        return tuple(real), ("a method bound to an instance",)
    if through_class and not isinstance(obj, type):
        return tuple(real), ("a method taken from its class, run on whatever the pickle passes",)
    defined_in, defined_as = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(defined_as, str):
        return tuple(real), ("an instance, not a class or function",)
    if isinstance(defined_in, str):
        real.append(f"{defined_in}.{defined_as}")
    return tuple(real), ()


def untrusted_pickle_error(
    raw: bytes, *, serialization: str, label: str, allow: Iterable[str] = DEFAULT_ALLOW
) -> UnsafeArtifact:
    """The refusal for a pickle-family payload loaded without trust.

    Names the format and both ways to trust it; the scanner's findings are
    added as a diagnostic, never as a reason the payload would otherwise load.
    """
    names = pickle_findings(raw, allow)
    if names:
        found = f"; among its imports, outside the allow-list: {_shown(names)}"
    else:
        found = (
            "; its imports are all on the allow-list, which does not make it safe: "
            "gadgets built from allowed names run code too"
        )
    return UnsafeArtifact(
        f"refusing to load {label}: it is stored as {serialization}, a format that runs "
        f"code when loaded, and it is not trusted{found}",
        hint=TRUST_HINT,
    )
