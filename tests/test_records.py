"""VersionValues: the one checked value for a version's recorded fields."""

from __future__ import annotations

from typing import Any

import pytest

from tether._errors import InvalidInput, InvalidPath, UnknownField
from tether._records import VersionValues


def _values(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "manifest": [{"path": "model.pkl", "size": 3, "digest": "cd" * 32,
                      "chunks": [["ab" * 32, 3]]}],
        "flavor": {"name": "sklearn"},
        "signature": None,
        "input_example": [[1, 2]],
        "params": {"C": 1.0},
        "metrics": {"auc": 0.9},
        "data": {"train": {"digest": "cd"}},
        "lineage": {},
        "environment": {},
        "tags": {"team": "risk"},
        "notes": "",
        "author": "ana@example.com",
    }
    values.update(changes)
    return values


def test_from_dict_and_to_dict_round_trip() -> None:
    values = VersionValues.from_dict(_values())
    assert values.manifest[0].path == "model.pkl"
    assert VersionValues.from_dict(values.to_dict()) == values
    assert values.to_dict() == _values()


def test_digests_are_accepted_and_dropped_and_author_is_optional() -> None:
    values = VersionValues.from_dict(
        {**_values(), "digest": "x", "files_digest": "y", "author": None}
    )
    assert values.author == "" and "digest" not in values.to_dict()


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"colour": "red"}, UnknownField, "unknown field.*colour"),
        ({"notes": ["n"]}, InvalidInput, r"values.notes has the wrong type \(a list\)"),
        ({"metrics": {"auc": True}}, InvalidInput, "values.metrics.auc is True, not a finite"),
        ({"metrics": {"auc": float("nan")}}, InvalidInput, "not a finite number"),
        ({"tags": {"team": 1}}, InvalidInput, "values.tags.team must be a string, not a number"),
        ({"flavor": {"name": ""}}, InvalidInput, "values.flavor needs a name"),
        ({"data": {"train": {}}}, InvalidInput, "values.data.train needs a digest"),
        ({"signature": {"inputs": 5}}, InvalidInput, "signature.inputs"),
        ({"manifest": [{"path": "../x", "size": 1, "digest": "a"}]}, InvalidPath, "escapes"),
        ({"manifest": [{"path": "C:x", "size": 1, "digest": "a"}]}, InvalidPath, "escapes"),
        ({"manifest": [{"path": "a\x00b", "size": 1, "digest": "a"}]}, InvalidPath, "escapes"),
        ({"manifest": [{"path": "~/x", "size": 1, "digest": "a"}]}, InvalidPath, "escapes"),
        ({"manifest": [{"path": "x"}]}, InvalidInput, "manifest entry 'x' is malformed"),
        ({"manifest": [{"path": "x", "size": 1, "digest": "a" * 64}] * 2}, InvalidInput, "twice"),
        ({"manifest": [{"path": "x", "size": 1, "digest": 7}]}, InvalidInput, "not a BLAKE3"),
        ({"manifest": [{"path": "x", "size": 1, "digest": "A" * 64}]}, InvalidInput,
         "not a BLAKE3"),
    ],
)
def test_from_dict_names_what_is_wrong(
    changes: dict[str, Any], error: type[InvalidInput], message: str
) -> None:
    with pytest.raises(error, match=message):
        VersionValues.from_dict(_values(**changes))


def test_a_missing_field_is_named() -> None:
    values = _values()
    del values["params"]
    with pytest.raises(InvalidInput, match=r"values\.params is missing"):
        VersionValues.from_dict(values)


def test_deep_paths_cost_their_length_not_its_square() -> None:
    """A file/folder clash was checked by rebuilding every parent of every path: 200 empty
    files 2,000 folders deep (841 KB sent) took 26 s at commit and 5 s at every read of
    the version (a review). Now one sorted look per file: milliseconds (a 50x margin)."""
    import time

    from tether._identity import check_flavor_paths, check_manifest

    deep = "/".join(["a"] * 2000)
    manifest = [{"path": f"{deep}/x{i:05}", "size": 0, "digest": "0" * 64, "chunks": []}
                for i in range(200)]
    started = time.monotonic()
    check_manifest(manifest)
    check_flavor_paths({"entry": deep}, [m["path"] for m in manifest])
    assert time.monotonic() - started < 0.5
    with pytest.raises(InvalidInput, match="as a file and as the folder"):
        check_manifest([*manifest, {"path": deep, "size": 0, "digest": "0" * 64,
                                    "chunks": []}])
