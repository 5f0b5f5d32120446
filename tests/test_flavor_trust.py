"""Trust comes from provenance, not scanning.

Each gadget below is a real pickle built only from names the import allow-list
accepts (or accepted), and each does harm when unpickled the ordinary way: in a
subprocess here, inside a temporary folder. Tether refuses every one of them
without ``trusted=True``, before a byte of it runs. scikit-learn models default
to skops, which rebuilds only the types skops trusts plus those the caller names.
"""

from __future__ import annotations

import copyreg
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tether import Registry, UnsafeArtifact
from tether._flavors import get_flavor, pickle_findings, scan_pickle, unsafe_globals
from tether._flavors.pickle_scan import check_pickle_safe

NORM_GEN = "scipy.stats._continuous_distns.norm_gen"
TREE = "sklearn.tree._tree.Tree"

# -- the gadgets ----------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)``, then ``__setstate__(state)`` when a state is given."""

    def __init__(self, func: Any, args: tuple[Any, ...], state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple[Any, ...]:
        if self.state is None:
            return (self.func, self.args)
        return (self.func, self.args, self.state)


def _writes(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')"


def _argparser_template(marker: Path) -> str:
    """What rv_generic.__setstate__ hands to exec(): the attacker's code, then the
    three functions scipy expects, so that unpickling even succeeds."""
    return (
        f"{_writes(marker)}\n"
        "def _parse_args(self, *a, **k): return a, 0, 1\n"
        "def _parse_args_stats(self, *a, **k): return a, 0, 1, 'mv'\n"
        "def _parse_args_rvs(self, *a, **k): return a, 0, 1, None\n"
    )


def gadget_scipy_setstate(marker: Path) -> bytes:
    """(a) A scipy distribution rebuilt by copyreg, whose __setstate__ exec()s its state."""
    from scipy.stats._continuous_distns import norm_gen

    state = {"_parse_arg_template": _argparser_template(marker), "numargs": 0, "moment_type": 0}
    return pickle.dumps(
        _Reduce(copyreg._reconstructor, (norm_gen, object, None), state),  # type: ignore[attr-defined]
        protocol=5,
    )


def gadget_export_pth(site_dir: Path, marker: Path) -> bytes:
    """(b) export_graphviz writes a fitted tree's ``criterion`` verbatim into a ``.pth``."""
    from sklearn.tree import DecisionTreeClassifier, export_graphviz

    tree = DecisionTreeClassifier(max_depth=1).fit([[0.0], [1.0]], [0, 1])
    tree.criterion = f"gini\nimport os; {_writes(marker)}\n"
    return pickle.dumps(_Reduce(export_graphviz, (tree, str(site_dir / "tether.pth"))), protocol=5)


def gadget_vectorizer_reads(secret: Path) -> bytes:
    """(c) The unbound CountVectorizer.fit, given input='filename', reads any local file."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(input="filename")
    return pickle.dumps(_Reduce(CountVectorizer.fit, (vectorizer, [str(secret)])), protocol=5)


def _unpickle_elsewhere(payload: bytes, where: Path) -> subprocess.CompletedProcess[str]:
    """The unsafe way: plain pickle.loads, in a fresh interpreter inside ``where``."""
    path = where / "payload.pkl"
    path.write_bytes(payload)
    code = (
        "import pickle, sys\n"
        "obj = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "print(sorted(getattr(obj, 'vocabulary_', {})))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _saved(tmp_path: Path, payload: bytes, **record: Any) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path / "version"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(payload)
    return folder, {"name": "sklearn", "serialization": "pickle", "entry": "model.pkl", **record}


def _assert_trust_hint(refused: UnsafeArtifact, fmt: str) -> None:
    assert f"stored as {fmt}" in refused.message
    hint = str(refused.hint)
    assert "trusted=True" in hint and "--trusted" in hint
    assert "signed by a key" in hint


# -- (a) scipy __setstate__ -------------------------------------------------------------


def test_scipy_setstate_gadget_runs_code_when_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned-a"
    payload = gadget_scipy_setstate(marker)
    assert set(scan_pickle(payload)) == {"copyreg._reconstructor", NORM_GEN, "builtins.object"}
    assert pickle_findings(payload) == []  # every name allowed: the scan cannot see it
    done = _unpickle_elsewhere(payload, tmp_path)
    assert done.returncode == 0, done.stderr  # a working norm_gen, and the code has run
    assert marker.read_text() == "pwned"


def test_scipy_setstate_gadget_is_refused_without_trust(tmp_path: Path) -> None:
    marker = tmp_path / "pwned-a"
    folder, record = _saved(tmp_path, gadget_scipy_setstate(marker))
    with pytest.raises(UnsafeArtifact) as refused:
        get_flavor("sklearn").load(folder, record)
    _assert_trust_hint(refused.value, "pickle")
    assert "does not make it safe" in refused.value.message
    assert not marker.exists()


# -- (b) an export function writing a .pth ------------------------------------------------


def test_export_gadget_writes_a_pth_that_runs_at_interpreter_start(tmp_path: Path) -> None:
    site_dir, marker = tmp_path / "site", tmp_path / "pwned-b"
    site_dir.mkdir()
    payload = gadget_export_pth(site_dir, marker)
    assert "sklearn.tree._export.export_graphviz" in scan_pickle(payload)
    assert pickle_findings(payload) == []
    done = _unpickle_elsewhere(payload, tmp_path)
    assert done.returncode == 0, done.stderr
    pth = site_dir / "tether.pth"
    assert any(line.startswith("import os;") for line in pth.read_text().splitlines())
    assert not marker.exists()
    # What site.py does with every site-packages folder at the next interpreter start:
    subprocess.run(
        [sys.executable, "-c", "import site, sys; site.addsitedir(sys.argv[1])", str(site_dir)],
        check=True,
        timeout=120,
    )
    assert marker.read_text() == "pwned"


def test_export_gadget_is_refused_without_trust(tmp_path: Path) -> None:
    site_dir, marker = tmp_path / "site", tmp_path / "pwned-b"
    site_dir.mkdir()
    folder, record = _saved(tmp_path, gadget_export_pth(site_dir, marker))
    with pytest.raises(UnsafeArtifact) as refused:
        get_flavor("sklearn").load(folder, record)
    _assert_trust_hint(refused.value, "pickle")
    assert list(site_dir.iterdir()) == [] and not marker.exists()


# -- (c) an unbound vectorizer fit reading a local file -----------------------------------


def test_vectorizer_gadget_reads_any_local_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("aws hunter2 token")
    done = _unpickle_elsewhere(gadget_vectorizer_reads(secret), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hunter2" in done.stdout  # the file's words are now the model's vocabulary


def test_vectorizer_gadget_is_refused_without_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.feature_extraction.text import CountVectorizer

    secret = tmp_path / "secret.txt"
    secret.write_text("aws hunter2 token")
    payload = gadget_vectorizer_reads(secret)
    reads: list[Any] = []
    decode = CountVectorizer.decode

    def spy(self: Any, doc: Any) -> Any:
        reads.append(doc)
        return decode(self, doc)

    monkeypatch.setattr(CountVectorizer, "decode", spy)
    assert "hunter2" in pickle.loads(payload).vocabulary_  # the spy sees a real read
    assert reads == [str(secret)]
    reads.clear()
    folder, record = _saved(tmp_path, payload)
    with pytest.raises(UnsafeArtifact) as refused:
        get_flavor("sklearn").load(folder, record, trusted_types=[TREE])
    _assert_trust_hint(refused.value, "pickle")
    # The scan, reported as a diagnostic, now names the method taken from its class.
    assert "CountVectorizer.fit (a method taken from its class" in refused.value.message
    assert reads == []


def test_cloudpickle_payload_is_refused_without_trust(tmp_path: Path) -> None:
    marker = tmp_path / "pwned-py"
    folder = tmp_path / "version"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(gadget_scipy_setstate(marker))
    record = {"name": "python", "serialization": "cloudpickle", "entry": "model.pkl"}
    with pytest.raises(UnsafeArtifact) as refused:
        get_flavor("python").load(folder, record, trusted_types=[NORM_GEN])
    _assert_trust_hint(refused.value, "cloudpickle")
    assert not marker.exists()


# -- (d) the scanner's prefix rule --------------------------------------------------------


def test_an_attribute_of_an_instance_is_refused_whatever_its_prefix() -> None:
    refused = unsafe_globals(["scipy.stats._continuous_distns.norm.rvs"])
    assert refused == [
        "scipy.stats._continuous_distns.norm.rvs (an attribute of an instance)",
    ]
    assert unsafe_globals(["scipy.stats._continuous_distns.norm"]) == [
        "scipy.stats._continuous_distns.norm (an instance, not a class or function)",
    ]
    assert unsafe_globals(["sklearn.feature_extraction.text.CountVectorizer.fit"]) != []
    assert unsafe_globals([NORM_GEN, "sklearn.linear_model.LogisticRegression"]) == []
    # The same name as a pickle would carry it, through STACK_GLOBAL.
    module, name = b"scipy.stats._continuous_distns", b"norm.rvs"
    data = b"\x80\x04\x8c" + bytes([len(module)]) + module
    data += b"\x8c" + bytes([len(name)]) + name + b"\x93."
    assert scan_pickle(data) == ["scipy.stats._continuous_distns.norm.rvs"]
    with pytest.raises(UnsafeArtifact, match="an attribute of an instance"):
        check_pickle_safe(data, label="rvs.pkl")


# -- skops, the default for scikit-learn ---------------------------------------------------


@pytest.fixture(scope="module")
def data() -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def _round_trip(model: Any, tmp_path: Path, **load: Any) -> tuple[Any, dict[str, Any]]:
    flavor = get_flavor("sklearn")
    record = flavor.save(model, tmp_path)
    return flavor.load(tmp_path, record, **load), record


def test_skops_is_the_default_and_round_trips_a_logistic_regression(
    data: tuple[Any, Any], tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = data
    model = LogisticRegression().fit(X, y)
    loaded, record = _round_trip(model, tmp_path)
    assert record["serialization"] == "skops" and record["entry"] == "model.skops"
    assert record["trusted_types"] == [] and not (tmp_path / "model.pkl").exists()
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_skops_round_trips_a_pipeline_with_a_scaler(data: tuple[Any, Any], tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    loaded, record = _round_trip(model, tmp_path)
    assert record["python_class"] == "sklearn.pipeline.Pipeline"
    np.testing.assert_array_almost_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_a_random_forest_needs_its_tree_type_trusted(data: tuple[Any, Any], tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    X, y = data
    model = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    flavor = get_flavor("sklearn")
    record = flavor.save(model, tmp_path)
    assert record["trusted_types"] == [TREE]  # recorded for people, never obeyed
    with pytest.raises(UnsafeArtifact) as refused:
        flavor.load(tmp_path, record)
    message, hint = refused.value.message, str(refused.value.hint)
    assert TREE in message and "stored as skops" in message
    assert "does not trust decision trees by default" in message
    assert f"trusted_types=['{TREE}']" in hint and "trusted=True" in hint
    for trusting in ({"trusted_types": [TREE]}, {"trusted": True}):
        loaded = flavor.load(tmp_path, record, **trusting)
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


class _Holder:
    """Dumped by skops as an ObjectNode; renamed to norm_gen to make gadget (a)."""


def _skops_gadget(path: Path, marker: Path) -> None:
    import skops.io

    holder = _Holder()
    holder.__dict__.update(
        _parse_arg_template=_argparser_template(marker), numargs=0, moment_type=0
    )
    skops.io.dump(holder, path)
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
    module, _, name = NORM_GEN.rpartition(".")
    schema["__module__"], schema["__class__"] = module, name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))


def test_the_scipy_gadget_as_a_skops_file_is_real_and_refused(tmp_path: Path) -> None:
    import skops.io

    folder = tmp_path / "version"
    folder.mkdir()
    marker = tmp_path / "pwned-skops"
    _skops_gadget(folder / "model.skops", marker)
    assert skops.io.get_untrusted_types(file=folder / "model.skops") == [NORM_GEN]
    # The harm, when someone trusts the type: skops builds it and __setstate__ exec()s.
    code = "import skops.io, sys; skops.io.load(sys.argv[1], trusted=[sys.argv[2]])"
    subprocess.run(
        [sys.executable, "-c", code, str(folder / "model.skops"), NORM_GEN],
        cwd=tmp_path,
        check=True,
        timeout=120,
    )
    assert marker.read_text() == "pwned"
    marker.unlink()
    # The record says the type is fine; the record came with the file, so it is ignored.
    record = {
        "name": "sklearn",
        "serialization": "skops",
        "entry": "model.skops",
        "trusted_types": [NORM_GEN],
    }
    flavor = get_flavor("sklearn")
    for trusting in ({}, {"trusted_types": [TREE]}):
        with pytest.raises(UnsafeArtifact, match=NORM_GEN) as refused:
            flavor.load(folder, record, **trusting)
        assert "stored as skops" in refused.value.message
    assert not marker.exists()


def test_the_same_model_saves_to_the_same_skops_bytes(
    data: tuple[Any, Any], tmp_path: Path
) -> None:
    from sklearn.ensemble import RandomForestClassifier

    X, y = data
    model = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    copy = pickle.loads(pickle.dumps(model))  # equal, but every object id differs
    flavor = get_flavor("sklearn")
    saved = []
    for i, each in enumerate((model, copy)):
        folder = tmp_path / str(i)
        folder.mkdir()
        record = flavor.save(each, folder)
        saved.append((folder / "model.skops").read_bytes())
    assert saved[0] == saved[1]
    loaded = flavor.load(tmp_path / "1", record, trusted_types=[TREE])
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_trusted_types_pass_through_the_registry_load(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    """A forest needs the tree type named by the caller, through tether.load too."""
    from sklearn.ensemble import RandomForestClassifier

    X, y = iris
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    version = registry.log_model(forest, "forest", progress=False)
    with pytest.raises(UnsafeArtifact, match=r"sklearn\.tree\._tree\.Tree"):
        registry.load(version.ref)
    model = registry.load(version.ref, trusted_types=["sklearn.tree._tree.Tree"])
    assert (model.predict(X[:5]) == forest.predict(X[:5])).all()
