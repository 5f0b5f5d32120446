"""MLflow's search language: the ``filter`` and ``order_by`` of the registry searches.

``name LIKE 'fr%' AND tags.team = 'risk' AND version_number > 3`` is parsed by a
tokenizer that only moves forward into ``(key, op, value)`` clauses, checked
against what MLflow allows for each search (:data:`MODELS`, :data:`VERSIONS`),
and matched by a LIKE matcher without backtracking: a reader's filter costs
time linear in its length (and, per compared value, at most pattern x value
character steps, done in C), never the exponential time of a pattern
translated into a backtracking regex. Those steps hold the GIL, so one search
may spend at most ``SEARCH_STEPS`` of them (a :class:`Budget`): a pattern of
thousands of ``_`` against megabyte values froze the server for two minutes.

MLflow's own parser skips every ``AND`` between comparisons, so a filter may
start or end with ``AND`` (the MLflow client itself sends ``... AND AND ...``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .._errors import InvalidInput
from .bodies import describe
from .checks import MAX_LIMIT, parse_limit


class MlflowError(Exception):
    """A refusal in MLflow's format: ``{"error_code": code, "message": message}``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def invalid(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message)


#: Largest ``max_results`` read before the per-search bound is checked.
MAX_RESULTS = 10**9

#: Longest filter string accepted.
MAX_FILTER = 16 * 1024

#: MLflow's prompts are registered models tagged so; the MLflow client adds
#: ``tags.`mlflow.prompt.is_prompt` != 'true'`` to every model search, and a model
#: without the tag matches it (MLflow special-cases the key the same way).
PROMPT_TAG = "mlflow.prompt.is_prompt"

_SPACE = re.compile(r"\s*")
_KEY = re.compile(r"`[^`]+`|[A-Za-z_]\w*(?:\.(?:\w+|`[^`]+`))*")
_OP = re.compile(r"!=|>=|<=|=|>|<|(?:NOT\s+IN|ILIKE|LIKE|IN)(?!\w)", re.IGNORECASE)
# Numbers of at most 30 digits a side: int() of thousands of digits raised past Python's
# limit, a 500 (a review).
_ITEM = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|-?\d{1,30}(?:\.\d{1,30})?(?![\w.])")
_AND = re.compile(r"AND(?!\w)", re.IGNORECASE)
_NUMERIC_OPS = ("=", "!=", ">", ">=", "<", "<=")
_STRING_OPS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN")
_TAG_OPS = ("=", "!=", "LIKE", "ILIKE")


def _item(raw: str) -> str | int | float | Decimal:
    """A quoted string unquoted, or a number: a whole one as an int, else a float, or a
    Decimal where the float would round it to a whole number (``1.99999999999999999999``
    matched version 2 as the float 2.0: a review)."""
    if raw[:1] in "'\"":
        return raw[1:-1].replace(raw[0] * 2, raw[0])
    if "." not in raw:
        return int(raw)
    exact = Decimal(raw)
    if exact == exact.to_integral_value():
        return int(exact)
    number = float(raw)
    return exact if number.is_integer() else number


def _filter_error(text: str, at: int, expected: str) -> MlflowError:
    shown = text if len(text) <= 200 else text[:200] + "..."
    near = text[at : at + 40]
    return invalid(
        f"Invalid filter '{shown}': expected {expected} at character {at}"
        + (f" (near '{near}')" if near else " (at the end)")
    )


def _key_name(raw: str) -> str:
    name = raw.replace("`", "")
    if name.startswith("tag."):  # MLflow accepts both spellings
        return "tags." + name[4:]
    if name.startswith("attribute."):
        return name[len("attribute.") :]
    return name


def _value(text: str, pos: int) -> tuple[Any, int]:
    """A quoted string, a number or a ``('list', 'of', 'items')`` at ``pos``; (value, end)."""
    if text.startswith("(", pos):
        items: list[Any] = []
        pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
        if text.startswith(")", pos):
            return items, pos + 1
        while True:
            item = _ITEM.match(text, pos)
            if not item:
                raise _filter_error(text, pos, "a quoted string or a number in the list")
            items.append(_item(item[0]))
            pos = _SPACE.match(text, item.end()).end()  # type: ignore[union-attr]
            if text.startswith(")", pos):
                return items, pos + 1
            if not text.startswith(",", pos):
                raise _filter_error(text, pos, "',' or ')' in the list")
            pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
    item = _ITEM.match(text, pos)
    if not item:
        raise _filter_error(text, pos, "a quoted string, a number or a (list)")
    return _item(item[0]), item.end()


def parse_filter(text: Any) -> list[tuple[str, str, Any]]:
    """``name LIKE 'a%' AND tags.team = 'x'`` into (key, op, value) clauses.

    Only the syntax: which keys and comparisons a search allows is :func:`check`'s.
    """
    if text is None:
        return []
    if not isinstance(text, str):
        raise invalid(f"filter must be a string, not {describe(text)}")
    if len(text) > MAX_FILTER:
        raise invalid(f"filter is {len(text)} characters long; the limit is {MAX_FILTER}")
    clauses: list[tuple[str, str, Any]] = []
    pos = _SPACE.match(text).end()  # type: ignore[union-attr]
    joined = True  # at the start, or just after an AND
    while pos < len(text):
        joint = _AND.match(text, pos)
        if joint:
            pos = _SPACE.match(text, joint.end()).end()  # type: ignore[union-attr]
            joined = True
            continue
        if not joined:
            raise _filter_error(text, pos, "AND or the end of the filter")
        key = _KEY.match(text, pos)
        if not key:
            raise _filter_error(text, pos, "an attribute name")
        pos = _SPACE.match(text, key.end()).end()  # type: ignore[union-attr]
        op = _OP.match(text, pos)
        if not op:
            raise _filter_error(
                text, pos, "a comparison (=, !=, >, >=, <, <=, LIKE, ILIKE, IN, NOT IN)"
            )
        pos = _SPACE.match(text, op.end()).end()  # type: ignore[union-attr]
        value, end = _value(text, pos)
        clauses.append((_key_name(key[0]), " ".join(op[0].upper().split()), value))
        pos = _SPACE.match(text, end).end()  # type: ignore[union-attr]
        joined = False
    return clauses


@dataclass(frozen=True)
class Language:
    """What one search allows: its string and numeric attributes, those that take lists."""

    strings: frozenset[str]
    numbers: frozenset[str]
    lists: frozenset[str]
    order_keys: tuple[str, ...]

    def keys(self) -> str:
        return ", ".join(f"'{k}'" for k in sorted(self.strings | self.numbers))


#: ``search_registered_models``.
MODELS = Language(
    strings=frozenset({"name"}),
    numbers=frozenset(),
    lists=frozenset({"name"}),
    order_keys=("name", "timestamp", "last_updated_timestamp"),
)
#: ``search_model_versions``.
VERSIONS = Language(
    strings=frozenset({"name", "run_id", "source_path"}),
    numbers=frozenset({"version_number"}),
    lists=frozenset({"name", "run_id"}),
    order_keys=("name", "version_number", "creation_timestamp", "last_updated_timestamp"),
)


def check(clauses: list[tuple[str, str, Any]], language: Language) -> list[tuple[str, str, Any]]:
    """The clauses as MLflow's server accepts them for this search, numbers as ``int``;
    an :class:`MlflowError` naming what is allowed otherwise."""
    out = []
    for key, op, value in clauses:
        if key.startswith("tags."):
            if not isinstance(value, str):
                raise invalid(
                    f"Expected a quoted string value for tag (e.g. 'my-value'). Got value "
                    f"{value!r}."
                )
            if op not in _TAG_OPS:
                raise invalid(f"Invalid comparator '{op}' for a tag: use {', '.join(_TAG_OPS)}.")
        elif key in language.numbers:
            if isinstance(value, list):
                raise invalid(
                    f"Only {sorted(language.lists)} attributes support comparison with "
                    "a list of quoted string values."
                )
            if op not in _NUMERIC_OPS:
                raise invalid(
                    f"Invalid comparator for attribute {key}: {op}; use {', '.join(_NUMERIC_OPS)}."
                )
            try:
                if isinstance(value, Decimal) or (isinstance(value, float)
                                                  and not value.is_integer()):
                    raise ValueError  # int(1.5) is 1: version_number = 1.5 matched version 1
                value = int(value)
            except (TypeError, ValueError, OverflowError):
                raise invalid(
                    f"Invalid value for numeric attribute '{key}': {value!r}; expected an integer."
                ) from None
        elif key in language.strings:
            if op not in _STRING_OPS:
                raise invalid(
                    f"Invalid comparator for attribute {key}: {op}; use {', '.join(_STRING_OPS)}."
                )
            if isinstance(value, list) or op in ("IN", "NOT IN"):
                if key not in language.lists:
                    raise invalid(
                        f"Only {sorted(language.lists)} attributes support comparison with "
                        "a list of quoted string values."
                    )
                if not isinstance(value, list) or op not in ("IN", "NOT IN"):
                    raise invalid(f"'{key} {op}' takes a list only with IN and NOT IN.")
                # A set: each comparison one lookup, however long the list (a filter
                # of 16 KB holds thousands of values, compared with every version).
                value = frozenset(str(v) for v in value)
            elif not isinstance(value, str):
                raise invalid(
                    f"Expected a quoted string value or a list of quoted string values for "
                    f"attribute '{key}'. Got value {value!r}."
                )
        else:
            raise invalid(
                f"Invalid attribute key '{key}' specified. Valid keys are {language.keys()} "
                "and tags.<key>."
            )
        out.append((key, op, value))
    return out


# -- matching ------------------------------------------------------------------------


#: Character steps one search may spend matching LIKE patterns (a few hundred ms of C
#: at most). Ordinary filters spend a tiny share: 10,000 versions with 100-character
#: values and an 8-character pattern with ``_`` are 8 million.
SEARCH_STEPS = 100_000_000


class Budget:
    """What one search may still spend matching (see ``SEARCH_STEPS``). Each step is
    counted before it is taken, at its worst case, so a search stops before the
    costly comparison, never after it."""

    def __init__(self, steps: int = SEARCH_STEPS) -> None:
        self.left = steps

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise invalid(
                "this filter costs too much to evaluate: a LIKE pattern with '_' compared "
                "with long values. Use a shorter pattern with fewer '_', or add a clause "
                "such as name = '...' to search fewer versions"
            )


def _unbounded() -> Budget:
    """The budget of a comparison made outside a search (tests, one-off checks)."""
    return Budget(1 << 62)


class _Like:
    """A SQL LIKE pattern (``%`` any run, ``_`` any one character), matched without
    backtracking: the pieces between ``%`` are found left to right, each at its
    leftmost place (which is always a right choice), literal pieces by ``str.find``
    and pieces with ``_`` by a regex free of repetition."""

    def __init__(self, pattern: str, case: bool) -> None:
        self.case = case
        if not case:
            pattern = pattern.lower()
        self.pieces = pattern.split("%")
        self.finders = [self._finder(piece) for piece in self.pieces]

    @staticmethod
    def _finder(piece: str) -> re.Pattern[str] | None:
        if "_" not in piece:
            return None
        return re.compile(".".join(re.escape(part) for part in piece.split("_")), re.DOTALL)

    def _at(self, index: int, value: str, start: int, budget: Budget) -> bool:
        piece, finder = self.pieces[index], self.finders[index]
        budget.spend(len(piece))
        if finder is None:
            return value.startswith(piece, start)
        return finder.match(value, start) is not None

    def matches(self, value: str, budget: Budget) -> bool:
        budget.spend(len(value))
        if not self.case:
            value = value.lower()
        pieces = self.pieces
        if len(pieces) == 1:
            return len(value) == len(pieces[0]) and self._at(0, value, 0, budget)
        first, last = pieces[0], pieces[-1]
        if len(first) + len(last) > len(value):
            return False
        end = len(value) - len(last)
        if not self._at(0, value, 0, budget) or not self._at(
                len(pieces) - 1, value, end, budget):
            return False
        pos = len(first)
        for index in range(1, len(pieces) - 1):
            piece, finder = pieces[index], self.finders[index]
            if not piece:
                continue
            if finder is None:
                budget.spend(end - pos)  # str.find: linear in what it searches
                found = value.find(piece, pos, end)
            else:
                # Tried at every place from pos: at worst the piece's length each.
                budget.spend((end - pos) * len(piece))
                hit = finder.search(value, pos, end)
                found = hit.start() if hit else -1
            if found < 0:
                return False
            pos = found + len(piece)
        return True


@functools.lru_cache(maxsize=256)
def _like_matcher(pattern: str, case: bool) -> _Like:
    return _Like(pattern, case)


def _like(pattern: str, value: str, *, case: bool, budget: Budget | None = None) -> bool:
    return _like_matcher(pattern, case).matches(value, budget or _unbounded())


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: bool(a == b),
    "!=": lambda a, b: bool(a != b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    "IN": lambda a, b: a in b,
    "NOT IN": lambda a, b: a not in b,
}


def matches(
    clauses: list[tuple[str, str, Any]],
    attributes: Callable[[str], Any],
    tags: Mapping[str, str],
    budget: Budget | None = None,
) -> bool:
    """Whether checked clauses all hold. A tag the item lacks matches no comparison,
    ``!=`` included (as in MLflow), except MLflow's prompt marker, which an untagged
    model is ``!= 'true'`` and ``= 'false'`` of. ``budget``: what the search these
    items are part of may still spend on LIKE (one for the whole search)."""
    for key, op, value in clauses:
        if key.startswith("tags."):
            actual = tags.get(key[5:])
            if actual is None:
                if key[5:] == PROMPT_TAG and (op, value) in (("!=", "true"), ("=", "false")):
                    continue
                return False
        else:
            actual = attributes(key)
            actual = "" if actual is None else actual
        if op in ("LIKE", "ILIKE"):
            if not _like(value, actual, case=op == "LIKE", budget=budget):
                return False
        elif not _COMPARE[op](actual, value):
            return False
    return True


# -- order_by --------------------------------------------------------------------------


def parse_order_by(order_by: Any, language: Language) -> list[tuple[str, bool]]:
    """``order_by`` (a string or a list of them, ``"key [ASC|DESC]"``) as (key, descending)."""
    if order_by is None or order_by == "":
        return []
    clauses = order_by if isinstance(order_by, list) else [order_by]
    allowed = ", ".join(f"'{k}'" for k in language.order_keys)
    out: list[tuple[str, bool]] = []
    for clause in clauses:
        if not isinstance(clause, str):
            raise invalid(f"order_by must hold strings like 'name DESC', not {describe(clause)}")
        shown = clause[:100]
        parts = clause.replace("`", "").split()
        if not parts or len(parts) > 2:
            raise invalid(
                f"Invalid order_by clause '{shown}'. Could not be parsed: expected "
                f"'<key> [ASC|DESC]' with a key among {allowed}."
            )
        if len(parts) == 2 and parts[1].upper() not in ("ASC", "DESC"):
            raise invalid(f"Invalid ordering key in order_by clause '{shown}': use ASC or DESC.")
        if parts[0] not in language.order_keys:
            raise invalid(
                f"Invalid order by key '{parts[0][:100]}' specified. Valid keys are {allowed}."
            )
        key = "last_updated_timestamp" if parts[0] == "timestamp" else parts[0]
        if any(key == seen for seen, _ in out):
            raise invalid(f"`order_by` contains duplicate fields: {clauses}")
        out.append((key, len(parts) > 1 and parts[1].upper() == "DESC"))
    return out


def order(
    items: list[Any],
    order_by: list[tuple[str, bool]],
    keys: Mapping[str, Callable[[Any], Any]],
) -> list[Any]:
    """``items`` sorted by ``order_by``, the first clause most significant."""
    for key, descending in reversed(order_by):
        items = sorted(items, key=keys[key], reverse=descending)
    return items


__all__ = [
    "MODELS",
    "VERSIONS",
    "Language",
    "MlflowError",
    "check",
    "matches",
    "order",
    "page",
    "page_args",
    "parse_filter",
    "parse_order_by",
]


# -- paging ------------------------------------------------------------------------------


def page_args(p: Mapping[str, Any], *, default: int, least: int, most: int) -> tuple[int, int]:
    """(max_results, offset) from ``max_results`` and ``page_token``, within MLflow's bounds
    (0 to 1,000 models, 1 to 200,000 versions a page)."""
    try:
        raw = p.get("max_results")
        limit = default if raw in (None, "") else parse_limit(raw, "max_results", MAX_RESULTS)
        token = p.get("page_token")
        start = 0 if token in (None, "") else parse_limit(token, "page_token", MAX_LIMIT)
    except InvalidInput as error:
        raise invalid(error.message) from error
    if not least <= limit <= most:
        raise invalid(
            f"Invalid value {limit} for parameter 'max_results' supplied: it must be from "
            f"{least} to {most}."
        )
    return limit, start


def page(items: list[Any], limit: int, start: int) -> tuple[list[Any], str | None]:
    chosen = items[start : start + limit]
    token = str(start + limit) if limit and start + limit < len(items) else None
    return chosen, token
