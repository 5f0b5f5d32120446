"""YAML as plain data: no anchors or aliases, bounded in size and depth.

``yaml.safe_load`` runs no code, but an alias repeats a node wherever it is named: a
few hundred bytes of anchors named ten times over at eight levels become a value a
billion items long (a review: 4 GB of a server's memory from one policy; an MLflow
``MLmodel`` or a ``.dvc`` file from a hostile source did the same to an import), and
twenty thousand nested brackets overflow the composer's recursion. Files Tether reads
from users or foreign sources never need aliases, so they are refused, as are
documents past a size or a depth, before anything is built from them.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ._errors import InvalidInput
from ._humanize import short_repr


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """``SafeLoader`` without YAML 1.1's base-60 numbers: ``1:0:0:...`` became an integer
    by repeated big-number multiplication, quadratic in its length (a 2 MB ``.dvc`` file
    took 86 s: a review). Such a scalar reads as the text it is, as in YAML 1.2."""


_INT = re.compile(r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)
                    |[-+]?0x[0-9a-fA-F_]+)$""", re.X)
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)
def _number(kind: str) -> Any:
    base = getattr(yaml.SafeLoader, f"construct_yaml_{kind}")

    def construct(loader: _Loader, node: yaml.Node) -> Any:
        # An explicit !!int or !!float reaches the base-60 arithmetic too (a review: a
        # 1.2 MB file took 29 s, and '!!float 1:1:...' overflowed).
        if ":" in str(getattr(node, "value", "")):
            raise yaml.constructor.ConstructorError(
                None, None, f"a base-60 {kind} is not read", node.start_mark)
        return base(loader, node)
    return construct


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Any:
    """A mapping, refused when it names a key twice: the second silently replaced the
    first (a policy's strict `production` rule, written again lower down as a lenient
    one, let an approver promote without approvals: a review)."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            twice = key in seen
        except TypeError:  # an unhashable key: construct_mapping says so
            break
        if twice:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {short_repr(key)} is given twice", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_yaml_map(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:map", _mapping)
_Loader.add_constructor("tag:yaml.org,2002:int", _number("int"))
_Loader.add_constructor("tag:yaml.org,2002:float", _number("float"))
_Loader.yaml_implicit_resolvers = {
    first: [(tag, _INT if tag.endswith(":int") else _FLOAT if tag.endswith(":float")
             else pattern) for tag, pattern in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def plain_yaml(text: str, what: str, *, max_bytes: int, max_depth: int,
               size_hint: str | None = None) -> Any:
    """``text`` parsed (safe types only), or InvalidInput naming ``what`` and the problem."""
    if len(text.encode("utf-8", "replace")) > max_bytes:
        raise InvalidInput(f"{what} is longer than {max_bytes // 1024} KB", hint=size_hint)
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise InvalidInput(f"{what} uses YAML anchors or aliases (& and *)",
                                   hint="write each value out where it is used")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise InvalidInput(f"{what} is nested deeper than {max_depth} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as error:
        raise InvalidInput(f"{what} is not valid YAML: {str(error)[:300]}") from error
    except (ValueError, ArithmeticError) as error:  # 5000 digits (a review: a 500)
        raise InvalidInput(f"{what} holds a value YAML cannot read: {str(error)[:200]}"
                           ) from error
