"""ONNX, XGBoost and LightGBM flavors: log, load, schema, environment and serving.

Every model is built here, from iris; nothing is downloaded. None of these
formats is a pickle: each test checks the stored files too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tether import EnvironmentMismatch, InvalidInput, Registry
from tether._flavors import detect_flavor, get_flavor
from tether.serving import BackgroundServer, load_deployment

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def _serve(registry: Registry, tmp_path: Path, name: str, ref: str, body: dict[str, Any]) -> Any:
    """POST ``body`` to the endpoint ``name`` serving ``ref`` over loopback HTTP."""
    path = tmp_path / "deploy.yaml"
    path.write_text(f"server: {{poll_interval: 0.1}}\nendpoints: {{{name}: {{routes: [{ref}]}}}}\n")
    with BackgroundServer(registry, load_deployment(path)) as server, \
            httpx.Client(base_url=server.url) as client:
        response = client.post(f"/v1/endpoints/{name}/predict", json=body)
        assert response.status_code == 200, response.text
        assert response.headers["x-model-version"].startswith(ref)
        return response.json()


def _files(version: Any) -> list[str]:
    return sorted(f["path"] for f in version.manifest) if hasattr(version, "manifest") else \
        sorted(f.path for f in version.files)


# -- ONNX ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_iris(iris: tuple[Any, Any]) -> tuple[Any, Any]:
    """A scikit-learn logistic regression and its skl2onnx conversion."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    X, y = iris
    model = LogisticRegression(max_iter=500).fit(X.to_numpy(np.float32), y)
    proto = to_onnx(model, X.to_numpy(np.float32)[:1], target_opset=17,
                    options={id(model): {"zipmap": False}})
    return model, proto


def test_onnx_model_proto_logs_loads_and_predicts_like_sklearn(
    registry: Registry, iris: tuple[Any, Any], onnx_iris: tuple[Any, Any]
) -> None:
    sk, proto = onnx_iris
    X, _ = iris
    example = X.to_numpy(np.float32)[:5]
    assert detect_flavor(proto).name == "onnx"
    v = registry.log_model(proto, "iris-onnx", input_example=example)
    assert v.flavor["name"] == "onnx" and _files(v) == ["model.onnx"]
    assert v.flavor["framework_packages"] == ["onnxruntime", "numpy"]
    assert v.flavor["framework_versions"]["onnxruntime"] == ort.__version__
    assert v.flavor["inputs"] == [{"name": "X", "type": "float32", "shape": [-1, 4]}]
    assert v.flavor["producer"].startswith("skl2onnx")
    inputs = v.signature["inputs"]
    assert [f["name"] for f in inputs["fields"]] == ["f0", "f1", "f2", "f3"]
    assert {f["type"] for f in inputs["fields"]} == {"float"}
    assert v.signature["outputs"] is not None

    session = registry.load(v.ref)
    assert isinstance(session, ort.InferenceSession)
    rows = np.asarray(ROWS, dtype=np.float32)
    got = get_flavor("onnx").predict(session, rows)
    assert got.tolist() == sk.predict(rows).tolist() == [0, 2, 1]
    # a float64 DataFrame is cast to the graph's float32 input
    assert get_flavor("onnx").predict(session, X.head(3)).tolist() == sk.predict(
        X.head(3).to_numpy(np.float32)).tolist()


def test_onnx_file_path_is_detected_and_an_identical_model_costs_nothing(
    registry: Registry, onnx_iris: tuple[Any, Any], tmp_path: Path
) -> None:
    _, proto = onnx_iris
    path = tmp_path / "iris.onnx"
    onnx.save_model(proto, str(path))
    assert detect_flavor(str(path)).name == "onnx"
    first = registry.log_model(str(path), "iris-file")
    again = registry.log_model(proto, "iris-file")
    assert first.digest == again.digest  # same bytes, same version
    assert first.flavor["name"] == "onnx"
    with pytest.raises(InvalidInput, match="not a readable ONNX model"):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not a protobuf at all \xff\xff")
        registry.log_model(str(bad), "bad")


def test_onnx_is_served_from_plain_arrays(
    registry: Registry, onnx_iris: tuple[Any, Any], iris: tuple[Any, Any], tmp_path: Path
) -> None:
    sk, proto = onnx_iris
    X, _ = iris
    v = registry.log_model(proto, "iris-onnx", input_example=X.to_numpy(np.float32)[:5])
    want = sk.predict(np.asarray(ROWS, np.float32)).tolist()
    path = tmp_path / "deploy.yaml"
    path.write_text(f"server: {{poll_interval: 0.1}}\nendpoints: {{iris: {{routes: [{v.ref}]}}}}\n")
    with BackgroundServer(registry, load_deployment(path)) as server, \
            httpx.Client(base_url=server.url) as client:
        answer = client.post("/v1/endpoints/iris/predict", json={"inputs": ROWS}).json()
        assert answer["predictions"] == want
        # the Open Inference Protocol: a float32 tensor, as Triton's clients send it
        tensor = {"name": "input", "datatype": "FP32", "shape": [3, 4],
                  "data": [x for row in ROWS for x in row]}
        oip = client.post("/v2/models/iris/infer", json={"inputs": [tensor]})
        assert oip.status_code == 200, oip.text
        assert oip.json()["outputs"][0]["data"] == want


# -- XGBoost ------------------------------------------------------------------------------


def test_xgboost_classifier_round_trips_as_native_json(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    X, y = iris
    model = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(X, y)
    assert detect_flavor(model).name == "xgboost"  # before scikit-learn
    v = registry.log_model(model, "iris-xgb", input_example=X.head(5))
    assert _files(v) == ["model.json"] and v.flavor["wrapper"] == "XGBClassifier"
    assert v.flavor["framework_versions"] == {"xgboost": xgb.__version__,
                                              "numpy": np.__version__}
    assert [f["name"] for f in v.signature["inputs"]["fields"]] == list(X.columns)
    loaded = registry.load(v.ref)
    assert type(loaded) is xgb.XGBClassifier
    assert loaded.predict(X).tolist() == model.predict(X).tolist()
    assert get_flavor("xgboost").predict(loaded, X.to_numpy()).tolist() == model.predict(
        X).tolist()
    again = registry.log_model(model, "iris-xgb", input_example=X.head(5))
    assert again.digest == v.digest

    answer = _serve(registry, tmp_path, "xgb", v.ref, {"inputs": ROWS})
    assert answer["predictions"] == model.predict(np.asarray(ROWS)).tolist() == [0, 2, 1]


def test_xgboost_booster_from_arrays_as_ubj(registry: Registry, iris: tuple[Any, Any]) -> None:
    X, y = iris
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 2},
                        xgb.DMatrix(X.to_numpy(), label=y.to_numpy()), num_boost_round=5)
    v = registry.log_model(booster, "booster", serialization="ubj",
                           input_example=X.to_numpy()[:5])
    assert _files(v) == ["model.ubj"] and v.flavor["wrapper"] is None
    loaded = registry.load(v.ref)
    assert isinstance(loaded, xgb.Booster)
    want = booster.predict(xgb.DMatrix(np.asarray(ROWS)))
    got = get_flavor("xgboost").predict(loaded, np.asarray(ROWS))
    np.testing.assert_allclose(got, want)
    assert v.signature["outputs"]["kind"] == "array"  # one probability per class
    with pytest.raises(InvalidInput, match="unknown serialization"):
        registry.log_model(booster, "booster", serialization="pickle")


def test_logging_an_xgboost_model_leaves_the_callers_threads_alone(
    registry: Registry, iris: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving thread limit is for models a serving process loaded, not the caller's.

    It was set on the first predict, which ``input_example`` runs at log time: the
    caller's ``XGBClassifier(n_jobs=4)`` came back with ``n_jobs == 1``.
    """
    X, y = iris
    model = xgb.XGBClassifier(n_estimators=4, max_depth=2, n_jobs=4).fit(X, y)
    v = registry.log_model(model, "iris-threads", input_example=X.head(5))
    assert model.get_params()["n_jobs"] == 4
    assert v.signature["outputs"] is not None  # the example was predicted on
    from tether._flavors import prepare_for_serving

    loaded = registry.load(v.ref)
    prepare_for_serving(loaded, v.flavor)  # what the serving pool does
    assert loaded.get_params()["n_jobs"] == 1
    monkeypatch.setenv("TETHER_XGBOOST_THREADS", "3")
    prepare_for_serving(loaded, v.flavor)
    assert loaded.get_params()["n_jobs"] == 3
    monkeypatch.setenv("TETHER_XGBOOST_THREADS", "many")
    with pytest.raises(InvalidInput, match="TETHER_XGBOOST_THREADS='many'"):
        prepare_for_serving(loaded, v.flavor)


def test_xgboost_record_cannot_name_another_class(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    X, y = iris
    model = xgb.XGBRegressor(n_estimators=2).fit(X, y)
    flavor = get_flavor("xgboost")
    record = flavor.save(model, tmp_path)
    record["wrapper"] = "os.system"
    with pytest.raises(InvalidInput, match="not one of XGBoost's wrappers"):
        flavor.load(tmp_path, record)


def test_bytes_a_framework_cannot_read_are_a_load_failure_that_names_the_version(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """A pickle stored as an XGBoost model.json (any contributor can commit such a record)
    made xgboost raise UnicodeDecodeError, and `tether serve` printed a traceback."""
    import pickle

    from tether import LoadFailed
    from tether._records import VersionValues

    X, y = iris
    good = registry.log_model(xgb.XGBRegressor(n_estimators=2).fit(X, y), "xgb")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "model.json").write_bytes(pickle.dumps({"not": "a model"}))
    carrier = registry.log_model(tmp_path / "files", "carrier", flavor="files", progress=False)
    values = VersionValues(manifest=tuple(carrier.files), flavor=good.flavor, signature=None,
                           input_example=None, params={}, metrics={}, data={}, lineage={},
                           environment=good.environment, tags={}, notes="", author="x")
    bad = registry.commit("xgb", values, None)
    with pytest.raises(LoadFailed, match=r"xgb@\S+ did not load with the xgboost flavor: "
                       "UnicodeDecodeError") as refused:
        registry.load(bad.ref, env_policy="off")
    assert "tether download" in str(refused.value.hint)
    assert refused.value.http_status == 422


# -- LightGBM -----------------------------------------------------------------------------


def test_lightgbm_classifier_round_trips_as_text(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    from tether._flavors import LightGBMModel

    X, y = iris
    labels = y.map({0: "setosa", 1: "versicolor", 2: "virginica"})
    model = lgb.LGBMClassifier(n_estimators=10, num_leaves=4, min_child_samples=5,
                               verbose=-1).fit(X, labels)
    assert detect_flavor(model).name == "lightgbm"
    v = registry.log_model(model, "iris-lgbm", input_example=X.head(5))
    assert _files(v) == ["model.txt"]
    assert v.flavor["classes"] == ["setosa", "versicolor", "virginica"]
    assert v.flavor["framework_versions"]["lightgbm"] == lgb.__version__
    assert v.signature["outputs"]["fields"][0]["type"] == "string"
    loaded = registry.load(v.ref)
    assert isinstance(loaded, LightGBMModel) and loaded.wrapper == "LGBMClassifier"
    assert loaded.predict(X).tolist() == model.predict(X).tolist()
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X))
    assert registry.log_model(model, "iris-lgbm").files_digest == v.files_digest

    answer = _serve(registry, tmp_path, "lgbm", v.ref, {"inputs": ROWS})
    assert answer["predictions"] == ["setosa", "virginica", "versicolor"]


def test_lightgbm_booster_and_binary_classifier(registry: Registry, iris: tuple[Any, Any]) -> None:
    X, y = iris
    booster = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 4},
                        lgb.Dataset(X.to_numpy(), label=y.to_numpy()), num_boost_round=5)
    v = registry.log_model(booster, "lgb-booster", input_example=X.to_numpy()[:5])
    loaded = registry.load(v.ref)
    assert isinstance(loaded, lgb.Booster)
    np.testing.assert_allclose(loaded.predict(np.asarray(ROWS)), booster.predict(np.asarray(ROWS)))

    binary = lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(X, y == 2)
    b = registry.load(registry.log_model(binary, "lgb-binary").ref)
    assert b.predict(X).tolist() == binary.predict(X).tolist()
    np.testing.assert_allclose(b.predict_proba(X), binary.predict_proba(X))


# -- a framework that is not installed ----------------------------------------------------


@pytest.mark.parametrize("flavor", ["xgboost", "lightgbm", "onnx"])
def test_loading_without_the_framework_names_the_package_and_version(
    registry: Registry, iris: tuple[Any, Any], onnx_iris: tuple[Any, Any], flavor: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y = iris
    model = {
        "xgboost": lambda: xgb.XGBClassifier(n_estimators=2).fit(X, y),
        "lightgbm": lambda: lgb.LGBMClassifier(n_estimators=2, verbose=-1).fit(X, y),
        "onnx": lambda: onnx_iris[1],
    }[flavor]()
    v = registry.log_model(model, "m")
    package = {"xgboost": "xgboost", "lightgbm": "lightgbm", "onnx": "onnxruntime"}[flavor]
    version = v.flavor["framework_versions"][package]
    # the default (strict) policy refuses before loading, naming the package and the fix
    from tether._environment import capture_environment

    here = capture_environment()
    del here["packages"][package]
    with pytest.raises(EnvironmentMismatch) as strict:
        registry.load(v.ref, environment=here)
    assert f"pip install '{package}=={version}'" in (strict.value.hint or "")
    # a policy that lets it through: the flavor says the same instead of an ImportError
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    with pytest.raises(EnvironmentMismatch) as info:
        registry.load(v.ref, env_policy="off")
    assert f"needs {package}, which is not installed here" in str(info.value)
    assert f"saved with {package} {version}" in str(info.value)
    assert f"pip install '{package}=={version}'" in (info.value.hint or "")
