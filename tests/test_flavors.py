"""Flavors save and load each kind of model; the pickle scanner refuses unsafe imports."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tether
from tether import InvalidInput, TetherError, UnsafeArtifact
from tether._flavors import (
    DEFAULT_ALLOW,
    check_pickle_safe,
    detect_flavor,
    get_flavor,
    model_predict,
    scan_pickle,
    unsafe_globals,
)

# -- models -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cancer() -> tuple[Any, Any]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True)
    return frame.data, frame.target


def _logreg(X: Any, y: Any) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(solver="liblinear").fit(X, y)


def _forest(X: Any, y: Any) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)


def _scaled_logreg(X: Any, y: Any) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)


def _column_transformer(X: Any, y: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X = _with_category(X)
    columns = ColumnTransformer(
        [
            ("num", StandardScaler(), list(X.columns[:-1])),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["kind"]),
        ]
    )
    return make_pipeline(columns, LogisticRegression(max_iter=2000)).fit(X, y)


def _boosting(X: Any, y: Any) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=5, random_state=0).fit(X, y)


def _with_category(X: Any) -> Any:
    return X.assign(kind=[("a", "b", "c")[i % 3] for i in range(len(X))])


def _inputs(build: Callable[[Any, Any], Any], X: Any) -> Any:
    return _with_category(X) if build is _column_transformer else X


BUILDERS = [_logreg, _forest, _scaled_logreg, _column_transformer, _boosting]


@pytest.fixture(scope="module", params=BUILDERS, ids=lambda b: b.__name__.strip("_"))
def fitted(request: pytest.FixtureRequest, cancer: tuple[Any, Any]) -> tuple[Any, Any]:
    """(model, inputs it predicts on) for each kind of estimator the scanner must accept."""
    X, y = cancer
    build = request.param
    return build(X, y), _inputs(build, X)


def _folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


# -- sklearn ------------------------------------------------------------------------


def test_fitted_sklearn_pickles_pass_the_default_allow_list(fitted: tuple[Any, Any]) -> None:
    model, _ = fitted
    data = pickle.dumps(model, protocol=5)
    assert unsafe_globals(scan_pickle(data)) == []
    check_pickle_safe(data, label=type(model).__name__)


def test_sklearn_pickle_round_trip_predicts_the_same(
    fitted: tuple[Any, Any], tmp_path: Path
) -> None:
    model, X = fitted
    flavor = detect_flavor(model)
    assert flavor.name == "sklearn"
    record = flavor.save(model, tmp_path, serialization="pickle")
    assert record["serialization"] == "pickle" and (tmp_path / record["entry"]).is_file()
    assert record["framework_packages"] == ["scikit-learn", "scipy", "numpy"]
    assert set(record["framework_versions"]) == {"scikit-learn", "scipy", "numpy"}
    assert record["python_class"] == f"{type(model).__module__}.{type(model).__qualname__}"
    loaded = get_flavor(record["name"]).load(tmp_path, record, trusted=True)
    np.testing.assert_array_equal(model_predict(loaded, record, X), model.predict(X))


def test_sklearn_skops_round_trip(cancer: tuple[Any, Any], tmp_path: Path) -> None:
    X, y = cancer
    model = _scaled_logreg(X, y)
    flavor = get_flavor("sklearn")
    record = flavor.save(model, tmp_path, serialization="skops")
    assert record["entry"] == "model.skops" and "skops" in record["framework_packages"]
    assert record["python_class"] == "sklearn.pipeline.Pipeline"
    loaded = flavor.load(tmp_path, record)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_skops_refuses_untrusted_types_unless_trusted(
    cancer: tuple[Any, Any], tmp_path: Path
) -> None:
    X, y = cancer
    model = _forest(X, y)
    flavor = get_flavor("sklearn")
    record = flavor.save(model, tmp_path, serialization="skops")
    with pytest.raises(UnsafeArtifact, match=r"sklearn\.tree\._tree\.Tree") as refused:
        flavor.load(tmp_path, record)
    assert refused.value.hint and "trusted=True" in refused.value.hint
    loaded = flavor.load(tmp_path, record, trusted=True)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_sklearn_refuses_an_unknown_serialization(cancer: tuple[Any, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="serialization 'json'"):
        get_flavor("sklearn").save(_logreg(*cancer), tmp_path, serialization="json")


# -- the pickle scanner ---------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(_Exploit(marker), protocol=5)
    system = f"{os.system.__module__}.system"  # posix.system, or nt.system on Windows
    assert system in scan_pickle(data)
    assert unsafe_globals(scan_pickle(data)) == [system]
    with pytest.raises(UnsafeArtifact, match=rf"{system}") as refused:
        check_pickle_safe(data, label="evil.pkl")
    assert "evil.pkl" in refused.value.message and "trusted=True" in str(refused.value.hint)
    saved = _folder(tmp_path, "model")
    (saved / "model.pkl").write_bytes(data)
    record = {"name": "sklearn", "entry": "model.pkl", "serialization": "pickle"}
    with pytest.raises(UnsafeArtifact, match="system"):
        get_flavor("sklearn").load(saved, record)
    assert not marker.exists()


def test_scan_reads_a_path_as_well_as_bytes(tmp_path: Path) -> None:
    data = pickle.dumps(_Exploit(tmp_path / "never"), protocol=2)
    (tmp_path / "evil.pkl").write_bytes(data)
    assert scan_pickle(tmp_path / "evil.pkl") == scan_pickle(str(tmp_path / "evil.pkl"))
    assert f"{os.system.__module__}.system" in scan_pickle(tmp_path / "evil.pkl")


def _op(code: bytes, text: str) -> bytes:
    raw = text.encode()
    return code + bytes([len(raw)]) + raw  # SHORT_BINUNICODE is b"\x8c"


def test_stack_global_names_are_followed_through_the_memo() -> None:
    # "posix" memoized, popped, fetched back with BINGET, then "system": posix.system.
    data = (
        b"\x80\x04"
        + _op(b"\x8c", "posix")
        + b"\x94"  # MEMOIZE -> memo[0]
        + b"0"  # POP
        + b"h\x00"  # BINGET 0
        + _op(b"\x8c", "system")
        + b"\x93"  # STACK_GLOBAL
        + b"."
    )
    assert scan_pickle(data) == ["posix.system"]
    long_get = b"\x80\x04" + _op(b"\x8c", "builtins") + b"r\x07\x00\x00\x000j\x07\x00\x00\x00"
    data = long_get + _op(b"\x8c", "eval") + b"\x93."  # LONG_BINPUT 7, POP, LONG_BINGET 7
    assert scan_pickle(data) == ["builtins.eval"]


def test_a_stack_global_with_unknown_operands_is_unsafe() -> None:
    # The unpickler would import posix.system here; the scanner cannot tell, and refuses.
    data = b"\x80\x04" + _op(b"\x8c", "posix") + _op(b"\x8c", "system") + b")0\x93."
    assert scan_pickle(data) == ["<unknown>"]
    with pytest.raises(UnsafeArtifact, match="<unknown>"):
        check_pickle_safe(data, label="odd.pkl")


def test_python2_names_are_mapped_as_the_unpickler_maps_them() -> None:
    data = b"\x80\x02c__builtin__\neval\n."
    assert scan_pickle(data) == ["builtins.eval"]


def test_an_unreadable_pickle_is_refused() -> None:
    data = pickle.dumps({"a": 1}, protocol=5)[:-4]
    assert unsafe_globals(scan_pickle(data))
    with pytest.raises(UnsafeArtifact, match="unreadable"):
        check_pickle_safe(data, label="cut.pkl")


@pytest.mark.parametrize(
    "name",
    [
        "builtins.eval",
        "builtins.exec",
        "builtins.getattr",
        "builtins.__import__",
        "os.system",
        "posix.system",
        "subprocess.Popen",
        "runpy.run_path",
        "importlib.import_module",
        "numpy.load",
        "numpy.memmap",
        "pandas.read_pickle",
        "sklearn.datasets.dump_svmlight_file",
        "sklearn.base.BaseEstimator.__init__.__globals__",
    ],
)
def test_dangerous_names_are_refused(name: str) -> None:
    assert unsafe_globals([name]) != []


def test_deny_wins_over_a_broader_allow_entry() -> None:
    assert unsafe_globals(["os.system", "builtins.getattr"], allow=("os.", "builtins.")) == [
        "builtins.getattr",
        "os.system",
    ]
    assert unsafe_globals(["collections.OrderedDict"], allow=()) == ["collections.OrderedDict"]


def test_a_re_export_inside_an_allowed_module_is_judged_by_what_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = types.ModuleType("sklearn._tether_reexport")
    module.system = os.system  # type: ignore[attr-defined]
    module.osmod = os  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    refused = unsafe_globals(["sklearn._tether_reexport.system", "sklearn._tether_reexport.osmod"])
    assert len(refused) == 2 and all("really" in r for r in refused)
    data = b"\x80\x04" + _op(b"\x8c", module.__name__) + _op(b"\x8c", "osmod.system") + b"\x93."
    with pytest.raises(UnsafeArtifact, match="really"):
        check_pickle_safe(data, label="sneaky.pkl")


def test_default_allow_list_has_no_broad_numpy_or_builtins_prefix() -> None:
    assert "numpy." not in DEFAULT_ALLOW and "builtins." not in DEFAULT_ALLOW
    assert unsafe_globals(scan_pickle(pickle.dumps([slice(1), {1}, frozenset(), 1j]))) == []


# -- files ----------------------------------------------------------------------------


def test_files_flavor_stores_a_single_file(tmp_path: Path) -> None:
    single = tmp_path / "weights.bin"
    single.write_bytes(bytes(range(256)) * 10)
    flavor = detect_flavor(single)
    assert flavor.name == "files" and detect_flavor(str(single)) is flavor
    dest = _folder(tmp_path, "saved")
    record = flavor.save(single, dest)
    assert record == {
        "name": "files",
        "kind": "file",
        "entry": "weights.bin",
        "framework_packages": [],
        "framework_versions": {},
    }
    loaded = get_flavor("files").load(dest, record)
    assert loaded == dest / "weights.bin" and loaded.read_bytes() == single.read_bytes()
    with pytest.raises(InvalidInput, match="no predict"):
        model_predict(loaded, record, [[1.0]])


def test_files_flavor_keeps_a_nested_folder_layout(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    (folder / "sub" / "deeper").mkdir(parents=True)
    files = {
        "weights.bin": bytes(range(256)) * 100,
        "sub/vocab.txt": b"a\nb\n",
        "sub/deeper/config.json": b'{"k": 1}',
    }
    for rel, content in files.items():
        (folder / rel).write_bytes(content)
    (folder / "sub" / "alias.txt").symlink_to(folder / "sub" / "vocab.txt")
    dest = _folder(tmp_path, "saved")
    record = detect_flavor(folder).save(folder, dest)
    assert record["kind"] == "directory" and record["entry"] == "."
    loaded = get_flavor("files").load(dest, record)
    stored = {p.relative_to(loaded).as_posix() for p in loaded.rglob("*") if p.is_file()}
    assert stored == {*files, "sub/alias.txt"}
    for rel, content in files.items():
        assert (loaded / rel).read_bytes() == content
    # The scratch mirror links to the real files inside the folder (the store reads them
    # in place, no copy); a stored version holds their bytes, as regular files.
    assert (loaded / "sub" / "alias.txt").resolve() == (folder / "sub" / "vocab.txt").resolve()
    assert (loaded / "sub" / "alias.txt").read_bytes() == b"a\nb\n"
    registry = tether.init(tmp_path / ".tether")
    out = registry.download(registry.log_model(folder, "bundle").ref, tmp_path / "out")
    assert not (out / "sub" / "alias.txt").is_symlink()
    assert (out / "sub" / "alias.txt").read_bytes() == b"a\nb\n"
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == stored


def test_files_flavor_refuses_links_leaving_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    folder = _folder(tmp_path, "bundle")
    (folder / "ok.txt").write_text("yes")
    (folder / "link").symlink_to(outside)
    with pytest.raises(InvalidInput, match="outside the folder"):
        detect_flavor(folder).save(folder, _folder(tmp_path, "saved"))


def test_files_flavor_refuses_link_loops_and_empty_folders(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "bundle")
    (folder / "sub").mkdir()
    (folder / "sub" / "f.txt").write_text("x")
    (folder / "sub" / "up").symlink_to(folder)
    with pytest.raises(InvalidInput, match="loop"):
        get_flavor("files").save(folder, _folder(tmp_path, "saved"))
    empty = _folder(tmp_path, "empty")
    with pytest.raises(InvalidInput, match="no files"):
        get_flavor("files").save(empty, _folder(tmp_path, "saved2"))


# -- python ---------------------------------------------------------------------------


class _Doubler:
    def predict(self, rows: list[float]) -> list[float]:
        return [2 * r for r in rows]


def test_python_flavor_refuses_a_function_unless_trusted(tmp_path: Path) -> None:
    def shout(text: str) -> str:
        return text.upper()

    flavor = detect_flavor(shout)
    assert flavor.name == "python"
    record = flavor.save(shout, tmp_path)
    assert record["serialization"] == "cloudpickle" and record["callable"] == "__call__"
    assert record["framework_packages"] == ["cloudpickle"]
    with pytest.raises(UnsafeArtifact, match="runs code") as refused:
        flavor.load(tmp_path, record)
    assert "trusted=True" in str(refused.value.hint) and "--trusted" in str(refused.value.hint)
    loaded = flavor.load(tmp_path, record, trusted=True)
    assert loaded("hi") == "HI" and model_predict(loaded, record, "ab") == "AB"


def test_python_flavor_round_trips_an_object_with_predict(tmp_path: Path) -> None:
    model = _Doubler()
    flavor = detect_flavor(model)
    record = flavor.save(model, tmp_path)
    assert record["callable"] == "predict"
    assert record["python_class"].endswith("_Doubler")
    with pytest.raises(UnsafeArtifact):
        flavor.load(tmp_path, record)
    loaded = flavor.load(tmp_path, record, trusted=True)
    assert model_predict(loaded, record, [1.0, 2.5]) == [2.0, 5.0]


# -- detection ------------------------------------------------------------------------


def test_detect_flavor_picks_each_kind(cancer: tuple[Any, Any], tmp_path: Path) -> None:
    X, y = cancer
    (tmp_path / "f.bin").write_bytes(b"x")
    assert detect_flavor(tmp_path / "f.bin").name == "files"
    assert detect_flavor(str(tmp_path)).name == "files"
    assert detect_flavor(_logreg(X, y)).name == "sklearn"
    assert detect_flavor(_scaled_logreg(X, y)).name == "sklearn"
    assert detect_flavor(len).name == "python"
    assert detect_flavor(_Doubler()).name == "python"


@pytest.mark.parametrize("bad", [42, None, b"bytes", [1, 2]])
def test_detect_flavor_explains_what_it_accepts(bad: Any) -> None:
    with pytest.raises(InvalidInput, match="cannot log") as refused:
        detect_flavor(bad)
    assert "scikit-learn" in str(refused.value.hint)


def test_detect_flavor_names_a_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    with pytest.raises(InvalidInput, match=r"missing\.bin does not exist"):
        detect_flavor(str(missing))
    with pytest.raises(InvalidInput, match="a class, not a model"):
        detect_flavor(_Doubler)


def test_get_flavor_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match="unknown flavor 'tensorflow'") as refused:
        get_flavor("tensorflow")
    assert refused.value.hint == (
        "known flavors: files, huggingface, lightgbm, onnx, python, pytorch, sklearn, xgboost"
    )


def test_a_hugging_face_folder_with_pickles_or_code_is_refused_at_load_too(
        tmp_path: Path) -> None:
    """The refusal was at save only: a version committed through the API (or a server)
    with a pickled checkpoint or a .py beside its safetensors reached from_pretrained."""
    from tether._errors import UnsafeArtifact

    flavor = get_flavor("huggingface")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"{}")
    for planted in ("pytorch_model.bin", "sub/modeling_evil.py", "CHECKPOINT.PT"):
        (tmp_path / planted).parent.mkdir(exist_ok=True)
        (tmp_path / planted).write_bytes(b"\x80\x04")
        with pytest.raises(UnsafeArtifact, match="pickled weights or code"):
            flavor.load(tmp_path, {"name": "huggingface"})
        (tmp_path / planted).unlink()


def test_a_sharded_hugging_face_checkpoint_loads_no_shard_from_outside_its_folder(
        tmp_path: Path) -> None:
    """``from_pretrained`` joins each shard name of ``model.safetensors.index.json`` to
    the folder: a version whose index named ``../planted.safetensors`` (or an absolute
    path) loaded weights that were never logged while its own bytes verified. Refused
    when logged and, for a version committed some other way, when loaded."""
    from tether._errors import UnsafeArtifact

    flavor = get_flavor("huggingface")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"{}")
    planted = tmp_path / "planted.safetensors"
    planted.write_bytes(b"{}")
    index = folder / "model.safetensors.index.json"
    for shard in ("../planted.safetensors", str(planted)):
        index.write_text(json.dumps({"weight_map": {
            "a.weight": "model-00001-of-00002.safetensors", "b.weight": shard}}))
        # The harm, the way transformers resolves a local shard: outside the folder.
        assert Path(os.path.join(folder, shard)).resolve() == planted.resolve()
        with pytest.raises(InvalidInput, match="outside the model folder"):
            flavor.save(str(folder), tmp_path / f"saved-{len(shard)}")
        with pytest.raises(UnsafeArtifact, match="outside the model folder"):
            flavor.load(folder, {"name": "huggingface"}, trusted=True)
    index.write_text(json.dumps({"weight_map": {"a.weight": "missing.safetensors"}}))
    with pytest.raises(UnsafeArtifact, match="does not hold"):
        flavor.load(folder, {"name": "huggingface"})
    index.write_text('{"weight_map": ["a"]}')
    with pytest.raises(UnsafeArtifact, match="cannot be read"):
        flavor.load(folder, {"name": "huggingface"})
    # Shards inside the folder are what transformers is for (it is not installed here:
    # the refusal that comes next names the package, past the index check).
    index.write_text(json.dumps({"weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}))
    # A Hub folder also carries pytorch_model.bin's index without its shards: never read
    # with use_safetensors, so never checked (a review of this check refused it).
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {"a.weight": "pytorch_model-00001-of-00002.bin"}}))
    with pytest.raises(TetherError, match="transformers"):
        flavor.load(folder, {"name": "huggingface"})
