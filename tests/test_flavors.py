"""Flavors save and load each kind of model; the pickle scanner refuses unsafe imports."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from tether import InvalidInput, UnsafeArtifact
from tether._flavors import check_pickle_safe, detect_flavor, get_flavor, scan_pickle


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/tether-pwned-by-pickle",))


def _models(iris: tuple[Any, Any]) -> list[Any]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = iris
    X = X.assign(kind=["a", "b", "c"] * 50)
    numeric = list(X.columns[:4])
    columns = ColumnTransformer(
        [("num", StandardScaler(), numeric), ("cat", OneHotEncoder(), ["kind"])]
    )
    return [
        LogisticRegression(max_iter=500).fit(X[numeric], y),
        RandomForestClassifier(n_estimators=5).fit(X[numeric], y),
        GradientBoostingClassifier(n_estimators=5).fit(X[numeric], y),
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X[numeric], y),
        make_pipeline(columns, LogisticRegression(max_iter=500)).fit(X, y),
    ]


def test_fitted_sklearn_models_pass_the_scanner(iris: tuple[Any, Any]) -> None:
    for model in _models(iris):
        check_pickle_safe(pickle.dumps(model, protocol=5), label=type(model).__name__)


def test_a_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = Path("/tmp/tether-pwned-by-pickle")
    marker.unlink(missing_ok=True)
    data = pickle.dumps(_Exploit())
    assert any(n.endswith(".system") for n in scan_pickle(data))
    with pytest.raises(UnsafeArtifact, match="system"):
        check_pickle_safe(data, label="evil.pkl")
    (tmp_path / "model.pkl").write_bytes(data)
    with pytest.raises(UnsafeArtifact):
        get_flavor("sklearn").load(tmp_path, {"entry": "model.pkl", "serialization": "pickle"})
    assert not marker.exists()


def test_sklearn_pickle_and_skops_round_trip(iris: tuple[Any, Any], tmp_path: Path) -> None:
    X, _ = iris
    model = _models(iris)[3]
    flavor = detect_flavor(model)
    for serialization in ("pickle", "skops"):
        folder = tmp_path / serialization
        folder.mkdir()
        record = flavor.save(model, folder, serialization=serialization)
        assert (
            record["serialization"] == serialization
            and "scikit-learn" in record["framework_packages"]
        )
        loaded = flavor.load(folder, record)
        assert (loaded.predict(X[X.columns[:4]]) == model.predict(X[X.columns[:4]])).all()
    with pytest.raises(InvalidInput, match="serialization"):
        flavor.save(model, tmp_path, serialization="json")


def test_files_and_python_flavors(tmp_path: Path) -> None:
    single = tmp_path / "weights.bin"
    single.write_bytes(b"\x00\x01" * 100)
    dest = tmp_path / "saved"
    dest.mkdir()
    record = detect_flavor(single).save(single, dest)
    assert get_flavor("files").load(dest, record).read_bytes() == single.read_bytes()
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "link").symlink_to(outside)
    dest2 = tmp_path / "saved2"
    dest2.mkdir()
    with pytest.raises(InvalidInput, match="links outside"):
        detect_flavor(folder).save(folder, dest2)

    def shout(text: str) -> str:
        return text.upper()

    dest3 = tmp_path / "saved3"
    dest3.mkdir()
    python = detect_flavor(shout)
    record = python.save(shout, dest3)
    with pytest.raises(UnsafeArtifact, match="trusted=True"):
        python.load(dest3, record)
    assert python.load(dest3, record, trusted=True)("hi") == "HI"


def test_unknown_things_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        detect_flavor(str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match="cannot log"):
        detect_flavor(42)
    with pytest.raises(InvalidInput, match="unknown flavor"):
        get_flavor("tensorflow")
