"""Argument checks for the HTTP shells: JSON values against Python type hints.

A client's JSON can only hold null, booleans, numbers, strings, lists and
objects; these checks say, before a use case runs, whether such a value fits a
parameter's annotation, so a wrong argument is a 400 naming the parameter, not
a ``TypeError`` deep inside the registry.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import InvalidInput
from .._registry.resolve import LARGEST_NUMBER
from .bodies import describe

#: Largest ``limit`` / page size a list endpoint accepts.
MAX_LIMIT = 1_000_000
#: The integers a database column holds (64 bits): past them SQLite raised OverflowError.
MAX_INT = LARGEST_NUMBER

_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
    tuple: "a list",
    dict: "an object",
    type(None): "null",
}


def fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint (unknown hints accept anything)."""
    if hint is Any or hint is object or isinstance(hint, typing.TypeVar):
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(fits(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in typing.get_args(hint))
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            return False
        items = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if origin is tuple and len(items) > 1 and Ellipsis not in typing.get_args(hint):
            return len(value) == len(items) and all(map(fits, value, items))
        return not items or all(fits(v, items[0]) for v in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, dict):
            return False
        args = typing.get_args(hint)
        return not args or all(fits(k, args[0]) and fits(v, args[1]) for k, v in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # a type JSON cannot carry directly: the use case decides


def _wrong(what: str, value: Any, hint: Any) -> str:
    """Why ``value`` does not fit: its type, or, for a list or an object of the right
    kind, the first element that does not ("tags: 'a' is a number, not a string", not
    "must be an object, not an object")."""
    inner = _first_misfit(value, hint)
    if inner:
        return f"{what} must be {hint_name(hint)}: {inner}"
    return f"{what} must be {hint_name(hint)}, not {describe(value)}"


def _first_misfit(value: Any, hint: Any) -> str | None:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(hint):
            found = _first_misfit(value, arg)
            if found:
                return found
        return None
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    if isinstance(value, dict) and (origin in (dict, Mapping)) and len(args) == 2:
        for key, item in value.items():
            if not fits(key, args[0]):
                return f"key {str(key)[:40]!r} is {describe(key)}, not {hint_name(args[0])}"
            if not fits(item, args[1]):
                return f"{str(key)[:40]!r} is {describe(item)}, not {hint_name(args[1])}"
    if isinstance(value, list) and origin in (list, set, frozenset) and len(args) == 1:
        for index, item in enumerate(value):
            if not fits(item, args[0]):
                return f"item {index} is {describe(item)}, not {hint_name(args[0])}"
    return None


def hint_name(hint: Any) -> str:
    if hint is None:
        return "null"
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(hint_name(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is not None:
        return _NAMES.get(origin, getattr(origin, "__name__", str(origin)))
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def check_call(
    name: str, func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Refuse (400) arguments that do not bind to ``func`` or do not fit its hints."""
    signature = inspect.signature(func)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise InvalidInput(f"{name}: {error}", hint=f"{name}{signature}") from error
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that does not resolve: leave it to the use case
        hints = {}
    for param, value in bound.arguments.items():
        kind = signature.parameters[param].kind
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        hint = hints.get(param)
        if hint is not None and not fits(value, hint):
            raise InvalidInput(_wrong(f"{name}: argument {param!r}", value, hint),
                               hint=f"{name}{signature}")
        check_range(f"{name}: argument {param!r}", value)


def check_range(what: str, value: Any) -> None:
    """Refuse an integer no database column holds (the use cases look them up)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise InvalidInput(f"{what} is out of range: at most {MAX_INT} either way")


def check_field(field: str, value: Any, hint: Any) -> Any:
    if not fits(value, hint):
        raise InvalidInput(_wrong(f"field {field!r}", value, hint))
    check_range(f"field {field!r}", value)
    return value


def parse_limit(raw: Any, name: str = "limit", maximum: int = MAX_LIMIT) -> int:
    """A count from a query string or JSON: a non-negative integer up to ``maximum``."""
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise InvalidInput(f"{name} must be an integer, not {describe(raw)}")
    text = str(raw).strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isdigit() or not digits.isascii() or len(digits) > 18:
        if digits.isdigit() and digits.isascii():
            raise InvalidInput(f"{name} must be at most {maximum}")
        raise InvalidInput(f"{name} must be an integer, got {text[:40]!r}")
    value = int(text)
    if value < 0:
        raise InvalidInput(f"{name} must not be negative, got {value}")
    if value > maximum:
        raise InvalidInput(f"{name} must be at most {maximum}, got {value}")
    return value
