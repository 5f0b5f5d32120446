from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from tether._errors import IncompatibleBump, InvalidInput
from tether._schema import infer_signature
from tether._semver import BumpLevel, SemVer, VersionFacts, required_bump, resolve_bump

# --- SemVer and BumpLevel -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.4.0", (1, 4, 0)),
        ("v2.0.10", (2, 0, 10)),
        (" 0.1.0 ", (0, 1, 0)),
        ("10.20.30", (10, 20, 30)),
    ],
)
def test_semver_parses_major_minor_patch(text: str, expected: tuple[int, int, int]) -> None:
    version = SemVer.parse(text)
    assert (version.major, version.minor, version.patch) == expected
    assert str(version) == ".".join(map(str, expected))


@pytest.mark.parametrize(
    "text", ["1.4", "1.4.0.1", "1.4.0-rc1", "1.4.0+build", "01.2.3", "a.b.c", "", "V1.2.3", "1..0"]
)
def test_semver_parse_refuses_bad_text_with_an_example(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        SemVer.parse(text)
    assert repr(text) in info.value.message
    assert info.value.hint is not None and "1.4.0" in info.value.hint


def test_semver_refuses_negative_parts() -> None:
    with pytest.raises(InvalidInput):
        SemVer(1, -1, 0)


def test_semver_orders_by_number_not_text() -> None:
    versions = [SemVer.parse(t) for t in ["1.10.0", "1.9.0", "2.0.0", "1.9.10", "0.9.9"]]
    assert [str(v) for v in sorted(versions)] == ["0.9.9", "1.9.0", "1.9.10", "1.10.0", "2.0.0"]
    assert max(versions) == SemVer(2, 0, 0)


def test_semver_is_frozen_and_hashable() -> None:
    version = SemVer(1, 2, 3)
    assert {version, SemVer.parse("1.2.3")} == {version}
    with pytest.raises(AttributeError):
        version.major = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("level", "expected"),
    [(BumpLevel.MAJOR, "2.0.0"), (BumpLevel.MINOR, "1.5.0"), (BumpLevel.PATCH, "1.4.4")],
)
def test_bump_resets_lower_parts(level: BumpLevel, expected: str) -> None:
    assert str(SemVer(1, 4, 3).bump(level)) == expected


def test_bump_levels_are_ordered_and_parse_from_words() -> None:
    assert BumpLevel.PATCH < BumpLevel.MINOR < BumpLevel.MAJOR
    assert BumpLevel.parse("Major") is BumpLevel.MAJOR
    assert BumpLevel.parse(" patch ") is BumpLevel.PATCH
    assert str(BumpLevel.MINOR) == "minor"
    with pytest.raises(InvalidInput, match="not a bump level"):
        BumpLevel.parse("huge")


# --- required_bump --------------------------------------------------------------------


def _facts(**changes: Any) -> VersionFacts:
    base = VersionFacts(
        signature=infer_signature(pd.DataFrame({"age": [30, 40], "income": [1.0, 2.0]})).to_dict(),
        files_digest="files-1",
        params={"C": 1.0, "max_iter": 100},
        data={"train": "d1"},
        flavor={"name": "sklearn", "serialization": "skops"},
        metadata={"metrics": {"acc": 0.9}, "notes": "", "tags": {}},
    )
    return replace(base, **changes)


def _signature(frame: pd.DataFrame) -> dict[str, Any]:
    return infer_signature(frame).to_dict()


def test_first_version_needs_major() -> None:
    assert required_bump(None, _facts()) == (BumpLevel.MAJOR, ["first version"])


def test_metadata_only_change_is_patch() -> None:
    new = _facts(metadata={"metrics": {"acc": 0.95}, "notes": "better", "tags": {}})
    assert required_bump(_facts(), new) == (BumpLevel.PATCH, ["metadata only: metrics/notes"])


def test_identical_facts_are_patch_with_nothing_changed() -> None:
    assert required_bump(_facts(), _facts()) == (BumpLevel.PATCH, ["nothing changed"])


def test_changed_weights_are_minor() -> None:
    assert required_bump(_facts(), _facts(files_digest="files-2")) == (
        BumpLevel.MINOR,
        ["weights changed"],
    )


def test_changed_params_are_minor_and_spelled_out() -> None:
    level, reasons = required_bump(_facts(), _facts(params={"C": 0.5, "penalty": "l2"}))
    assert level is BumpLevel.MINOR
    assert reasons == ["params changed: C 1.0 -> 0.5, max_iter removed, penalty added ('l2')"]


def test_many_changed_params_are_summarised() -> None:
    new = _facts(params={f"p{i}": i for i in range(9)})
    (reason,) = required_bump(_facts(params={}), new)[1]
    assert reason.endswith("and 4 more")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"train": "d2"}, "data 'train' changed"),
        ({"train": "d1", "eval": "e"}, "data 'eval' added"),
        ({}, "data 'train' removed"),
    ],
)
def test_changed_data_is_minor(data: dict[str, str], reason: str) -> None:
    assert required_bump(_facts(), _facts(data=data)) == (BumpLevel.MINOR, [reason])


def test_flavor_details_change_is_minor_but_another_flavor_is_major() -> None:
    level, reasons = required_bump(
        _facts(), _facts(flavor={"name": "sklearn", "serialization": "pickle"})
    )
    assert level is BumpLevel.MINOR
    assert reasons == ["flavor details changed: serialization 'skops' -> 'pickle'"]
    level, reasons = required_bump(_facts(), _facts(flavor={"name": "xgboost"}))
    assert (level, reasons) == (BumpLevel.MAJOR, ["flavor changed: sklearn -> xgboost"])


def test_added_optional_input_is_minor() -> None:
    frame = pd.DataFrame({"age": [30, 40], "income": [1.0, 2.0], "city": ["a", None]})
    level, reasons = required_bump(_facts(), _facts(signature=_signature(frame)))
    assert level is BumpLevel.MINOR
    assert reasons == ["input 'city' added (optional)"]


def test_retyped_input_is_major_and_lists_every_reason() -> None:
    frame = pd.DataFrame({"age": ["30", "40"], "income": [1.0, 2.0]})
    level, reasons = required_bump(
        _facts(), _facts(signature=_signature(frame), files_digest="files-2")
    )
    assert level is BumpLevel.MAJOR
    assert reasons == ["input 'age' retyped: long -> string", "weights changed"]


def test_removed_input_is_major_as_design_says() -> None:
    frame = pd.DataFrame({"income": [1.0, 2.0]})
    level, reasons = required_bump(_facts(), _facts(signature=_signature(frame)))
    assert level is BumpLevel.MAJOR
    assert reasons == ["input 'age' removed"]


def test_removed_signature_is_major_and_added_signature_minor() -> None:
    assert required_bump(_facts(), _facts(signature=None)) == (
        BumpLevel.MAJOR,
        ["signature removed"],
    )
    assert required_bump(_facts(signature=None), _facts()) == (
        BumpLevel.MINOR,
        ["signature added"],
    )


def test_retrained_sklearn_model_with_other_classes_is_major() -> None:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"age": rng.integers(18, 90, 40), "income": rng.random(40)})
    binary = LogisticRegression().fit(x, (x["income"] > 0.5).astype(int))
    labels = np.where(x["income"] > 0.5, "yes", "no")
    texts = LogisticRegression().fit(x, labels)
    old = _facts(signature=infer_signature(x, binary.predict(x)).to_dict())
    new = _facts(signature=infer_signature(x, texts.predict(x)).to_dict(), files_digest="f2")
    level, reasons = required_bump(old, new)
    assert level is BumpLevel.MAJOR
    assert reasons[0] == "output 'prediction' retyped: long -> string"


# --- resolve_bump ---------------------------------------------------------------------


@pytest.mark.parametrize("bump", [None, "major", "minor", "patch"])
def test_first_version_is_1_0_0(bump: str | None) -> None:
    assert resolve_bump(None, BumpLevel.MAJOR, bump, ["first version"]) == SemVer(1, 0, 0)


@pytest.mark.parametrize("bump", ["0.1.0", "v3.2.1"])
def test_first_version_may_be_explicit_including_0_x(bump: str) -> None:
    assert resolve_bump(None, BumpLevel.MAJOR, bump, ["first version"]) == SemVer.parse(bump)


@pytest.mark.parametrize(
    ("level", "bump", "expected"),
    [
        (BumpLevel.MINOR, None, "1.5.0"),
        (BumpLevel.PATCH, None, "1.4.3"),
        (BumpLevel.MAJOR, None, "2.0.0"),
        (BumpLevel.PATCH, "minor", "1.5.0"),
        (BumpLevel.MINOR, "MAJOR", "2.0.0"),
        (BumpLevel.MINOR, "1.6.0", "1.6.0"),
        (BumpLevel.MINOR, "3.0.0", "3.0.0"),
        (BumpLevel.PATCH, "1.4.9", "1.4.9"),
    ],
)
def test_next_version_is_based_on_the_highest(
    level: BumpLevel, bump: str | None, expected: str
) -> None:
    assert str(resolve_bump(SemVer(1, 4, 2), level, bump, ["r"])) == expected


def test_smaller_bump_than_needed_is_refused_with_reasons_and_hint() -> None:
    with pytest.raises(IncompatibleBump) as info:
        resolve_bump(SemVer(1, 4, 2), BumpLevel.MAJOR, "minor", ["input 'age' retyped"])
    error = info.value
    assert error.message == (
        'bump="minor" is too small: this change needs a major bump from 1.4.2 '
        "(input 'age' retyped)"
    )
    assert error.hint == 'pass bump="major" (giving 2.0.0), or leave bump unset'
    assert isinstance(error, InvalidInput)


def test_explicit_version_with_too_small_a_bump_is_refused() -> None:
    with pytest.raises(IncompatibleBump) as info:
        resolve_bump(SemVer(1, 4, 2), BumpLevel.MINOR, "1.4.3", ["weights changed"])
    assert info.value.message.startswith('bump="1.4.3" (a patch bump) is too small')
    assert "weights changed" in info.value.message
    assert info.value.hint is not None and 'bump="minor"' in info.value.hint


@pytest.mark.parametrize("bump", ["1.4.2", "1.3.0", "0.9.0"])
def test_explicit_version_not_above_highest_is_refused(bump: str) -> None:
    with pytest.raises(IncompatibleBump) as info:
        resolve_bump(SemVer(1, 4, 2), BumpLevel.PATCH, bump, ["metadata only: notes"])
    assert "not greater than the highest existing version 1.4.2" in info.value.message
    assert info.value.hint is not None and 'bump="1.4.3"' in info.value.hint


@pytest.mark.parametrize("bump", ["huge", "1.4", "2.0.0-rc1"])
def test_unreadable_bump_is_invalid_input_not_a_bump_refusal(bump: str) -> None:
    with pytest.raises(InvalidInput) as info:
        resolve_bump(SemVer(1, 0, 0), BumpLevel.PATCH, bump, [])
    assert not isinstance(info.value, IncompatibleBump)
