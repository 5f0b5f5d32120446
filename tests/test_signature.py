from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from tether._errors import InvalidInput, SchemaMismatch
from tether._schema import (
    Field,
    RecordSchemaError,
    Schema,
    Signature,
    check_compatibility,
    infer_signature,
    schema_from_declared,
    validate_records,
)


def _types(schema: Schema | None) -> dict[str, str]:
    assert schema is not None
    return {f.name: f.type + ("?" if f.nullable else "") for f in schema.fields}


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [30, 41, 52],
            "income": [1.5, np.nan, 3.0],
            "city": ["paris", "oslo", None],
            "segment": pd.Categorical(["a", "b", "a"]),
            "active": [True, False, True],
            "joined": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01"]),
            "visits": pd.array([1, None, 3], dtype="Int64"),
            "score": np.array([0.1, 0.2, 0.3], dtype=np.float32),
            "rank": np.array([1, 2, 3], dtype=np.int32),
        }
    )


@pytest.fixture
def fitted(frame: pd.DataFrame) -> LogisticRegression:
    x = frame[["age", "score"]]
    return LogisticRegression().fit(x, [0, 1, 0])


# --- inference ------------------------------------------------------------------------


def test_infers_dataframe_columns_and_dtypes(frame: pd.DataFrame) -> None:
    signature = infer_signature(frame)
    assert signature.inputs.kind == "columns"
    assert _types(signature.inputs) == {
        "age": "long",
        "income": "double?",
        "city": "string?",
        "segment": "string",
        "active": "boolean",
        "joined": "datetime",
        "visits": "long?",
        "score": "float",
        "rank": "integer",
    }
    assert signature.outputs is None


def test_infers_numeric_categories_and_zone_aware_times() -> None:
    frame = pd.DataFrame(
        {
            "grade": pd.Categorical([1, 2, 1]),
            "at": pd.to_datetime(["2024-01-01"] * 3).tz_localize("UTC"),
        }
    )
    assert _types(infer_signature(frame).inputs) == {"grade": "long", "at": "datetime"}


def test_infers_2d_array_with_positional_names_and_nan_as_nullable() -> None:
    x = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, 5.0]])
    schema = infer_signature(x).inputs
    assert schema.kind == "array"
    assert _types(schema) == {"f0": "double", "f1": "double", "f2": "double?"}


def test_infers_2d_array_with_feature_names_as_columns() -> None:
    x = np.array([[1, 2], [3, 4]], dtype=np.int64)
    schema = infer_signature(x, feature_names=["age", "rooms"]).inputs
    assert schema.kind == "columns"
    assert _types(schema) == {"age": "long", "rooms": "long"}


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.float64, "double"),
        (np.float32, "float"),
        (np.int64, "long"),
        (np.int32, "integer"),
        (np.int8, "integer"),
        (np.uint16, "integer"),
        (np.uint32, "long"),
        (np.bool_, "boolean"),
        ("datetime64[ns]", "datetime"),
        ("U5", "string"),
        ("S5", "binary"),
    ],
)
def test_numpy_dtypes_map_to_schema_types(dtype: Any, expected: str) -> None:
    x = np.zeros((2, 1), dtype=dtype)
    assert infer_signature(x).inputs.fields[0].type == expected


def test_refuses_dtypes_without_a_schema_type() -> None:
    with pytest.raises(InvalidInput, match="column 'f0' has dtype complex128"):
        infer_signature(np.zeros((2, 1), dtype=complex))


def test_feature_names_must_match_the_columns() -> None:
    with pytest.raises(InvalidInput, match="3 feature names given for a input example of 2"):
        infer_signature(np.zeros((2, 2)), feature_names=["a", "b", "c"])


def test_infers_1d_array_as_one_column() -> None:
    schema = infer_signature(np.array([1.0, 2.0])).inputs
    assert (schema.kind, _types(schema)) == ("vector", {"f0": "double"})


def test_infers_nd_array_as_a_tensor() -> None:
    (field,) = infer_signature(np.zeros((4, 28, 28), dtype=np.float32)).inputs.fields
    assert field == Field("input", "tensor", shape=(-1, 28, 28), dtype="float32")


def test_infers_records_with_missing_keys_as_nullable() -> None:
    records = [{"age": 3, "city": "oslo"}, {"age": 4.5, "when": dt.datetime(2024, 1, 1)}]
    assert _types(infer_signature(records).inputs) == {
        "age": "double",
        "city": "string?",
        "when": "datetime?",
    }


def test_infers_dict_of_columns() -> None:
    columns = {"age": [1, 2], "score": np.array([0.5, 0.7], dtype=np.float32), "ok": True}
    assert _types(infer_signature(columns).inputs) == {
        "age": "long",
        "score": "float",
        "ok": "boolean",
    }


def test_infers_list_of_lists_positionally() -> None:
    schema = infer_signature([[1, "a", b"x"], [2, "b", b"y"]]).inputs
    assert schema.kind == "array"
    assert _types(schema) == {"f0": "long", "f1": "string", "f2": "binary"}


@pytest.mark.parametrize(
    ("example", "message"),
    [
        ([{"a": 1}, {"a": "x"}], "column 'a' mixes long and string values"),
        ([{"a": None}], "column 'a' holds only missing values"),
        ([{"a": object()}], "column 'a' holds object values"),
        ([[1, 2], [3]], "list of rows of different lengths"),
        ([], "cannot infer a schema from the input example"),
        (np.zeros((0, 3)), "cannot infer a schema"),
        (42, "cannot infer a schema"),
        (pd.DataFrame(), "has no columns"),
    ],
)
def test_refuses_examples_it_cannot_read(example: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        infer_signature(example)


def test_infers_sklearn_outputs(frame: pd.DataFrame, fitted: LogisticRegression) -> None:
    x = frame[["age", "score"]]
    labels = infer_signature(x, fitted.predict(x))
    assert labels.outputs is not None
    assert (labels.outputs.kind, _types(labels.outputs)) == ("vector", {"prediction": "long"})
    probabilities = infer_signature(x, fitted.predict_proba(x)).outputs
    assert _types(probabilities) == {"p0": "double", "p1": "double"}
    named = infer_signature(x, pd.DataFrame({"low": [0.1], "high": [0.9]})).outputs
    assert _types(named) == {"low": "double", "high": "double"}
    series = infer_signature(x, pd.Series([1.0], name="price")).outputs
    assert _types(series) == {"price": "double"}


@pytest.mark.parametrize("output", [0.5, object(), np.zeros(0), [{"a": 1}, {"a": "x"}]])
def test_unreadable_output_leaves_outputs_undeclared(output: Any) -> None:
    assert infer_signature(np.zeros((1, 2)), output).outputs is None


# --- serialisation --------------------------------------------------------------------


def test_to_dict_round_trips_through_json(frame: pd.DataFrame) -> None:
    signature = infer_signature(frame, np.zeros((3, 2, 2), dtype=np.float32))
    data = json.loads(json.dumps(signature.to_dict()))
    assert Signature.from_dict(data) == signature
    assert data["outputs"]["fields"][0] == {
        "name": "prediction",
        "type": "tensor",
        "nullable": False,
        "shape": [-1, 2, 2],
        "dtype": "float32",
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a signature must be an object"),
        ({"outputs": None}, "signature is missing key 'inputs'"),
        ({"inputs": {"kind": "columns"}}, "signature.inputs is missing key 'fields'"),
        ({"inputs": {"fields": {}}}, "signature.inputs.fields must be a list"),
        (
            {"inputs": {"fields": [{"name": "a", "type": "long"}, {"name": "b"}]}},
            r"signature.inputs.fields\[1\] is missing key 'type'",
        ),
        (
            {"inputs": [{"name": "a", "type": "int"}]},
            r"signature.inputs.fields\[0\].type 'int' is not a known type",
        ),
        (
            {"inputs": [{"name": "a", "type": "long", "nullable": "yes"}]},
            r"signature.inputs.fields\[0\].nullable must be true or false",
        ),
        (
            {"inputs": [], "outputs": [{"type": "long"}]},
            r"outputs.fields\[0\] is missing key 'name'",
        ),
        ({"inputs": {"kind": "matrix", "fields": []}}, "schema kind 'matrix' is unknown"),
        ({"inputs": [{"name": "x", "type": "tensor"}]}, "a dtype goes with type tensor"),
        ({"inputs": [{"name": "x", "type": "tensor", "dtype": "nope"}]}, "unknown dtype"),
        ({"inputs": [{"name": "a", "type": "long"}] * 2}, "names a field twice: a"),
    ],
)
def test_from_dict_refuses_malformed_data_naming_the_key(data: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Signature.from_dict(data)


def test_describe_is_short(frame: pd.DataFrame) -> None:
    assert infer_signature(frame[["age", "city"]], np.array([1, 0, 1])).describe() == (
        "inputs: age long, city string?; outputs: prediction long"
    )
    wide = infer_signature(np.zeros((1, 30)))
    assert wide.describe().endswith("f7 double, +22 more; outputs: not declared")


# --- compatibility --------------------------------------------------------------------


def _sig(*inputs: Field, outputs: tuple[Field, ...] | None = (Field("y", "long"),)) -> Signature:
    return Signature(Schema(inputs), Schema(outputs) if outputs is not None else None)


AGE = Field("age", "long")
CITY = Field("city", "string")


@pytest.mark.parametrize(
    ("old", "new", "compatible", "reasons"),
    [
        (_sig(AGE), _sig(AGE), True, []),
        (_sig(AGE), _sig(AGE, CITY), False, ["input 'city' added and required"]),
        (
            _sig(AGE),
            _sig(AGE, Field("city", "string", nullable=True)),
            True,
            ["input 'city' added (optional)"],
        ),
        (
            _sig(AGE, CITY),
            _sig(AGE),
            False,
            ["input 'city' removed"],
        ),
        (_sig(AGE), _sig(Field("age", "string")), False, ["input 'age' retyped: long -> string"]),
        (_sig(AGE), _sig(Field("age", "integer")), False, ["input 'age' retyped: long -> integer"]),
        (_sig(AGE), _sig(Field("age", "double")), True, ["input 'age' widened: long -> double"]),
        (
            _sig(Field("a", "integer")),
            _sig(Field("a", "long")),
            True,
            ["input 'a' widened: integer -> long"],
        ),
        (
            _sig(Field("a", "float")),
            _sig(Field("a", "double")),
            True,
            ["input 'a' widened: float -> double"],
        ),
        (
            _sig(AGE),
            _sig(Field("age", "long", nullable=True)),
            True,
            ["input 'age' is now optional"],
        ),
        (
            _sig(Field("age", "long", nullable=True)),
            _sig(AGE),
            False,
            ["input 'age' is now required (it was optional)"],
        ),
        (_sig(AGE), _sig(AGE, outputs=()), False, ["output 'y' removed"]),
        (
            _sig(AGE),
            _sig(AGE, outputs=(Field("y", "double"),)),
            False,
            ["output 'y' retyped: long -> double"],
        ),
        (
            _sig(AGE),
            _sig(AGE, outputs=(Field("y", "long", nullable=True),)),
            False,
            ["output 'y' may now be null"],
        ),
        (
            _sig(AGE),
            _sig(AGE, outputs=(Field("y", "long"), Field("p", "double"))),
            True,
            ["output 'p' added"],
        ),
        (_sig(AGE), _sig(AGE, outputs=None), False, ["outputs no longer declared"]),
        (_sig(AGE, outputs=None), _sig(AGE), True, ["outputs now declared"]),
    ],
)
def test_compatibility_rules(
    old: Signature, new: Signature, compatible: bool, reasons: list[str]
) -> None:
    verdict = check_compatibility(old, new)
    assert (verdict.compatible, verdict.reasons) == (compatible, reasons)


def test_breaking_reasons_come_before_informational_ones() -> None:
    verdict = check_compatibility(_sig(AGE, CITY), _sig(Field("age", "string")))
    assert verdict.reasons == [
        "input 'age' retyped: long -> string",
        "input 'city' removed",
    ]


def test_tensor_shapes_may_generalise_but_not_change() -> None:
    def tensor(*shape: int, dtype: str = "float32") -> Signature:
        return _sig(Field("img", "tensor", shape=shape, dtype=dtype))

    assert check_compatibility(tensor(-1, 28, 28), tensor(-1, -1, -1)).compatible
    verdict = check_compatibility(tensor(-1, 28, 28), tensor(-1, 32, 32))
    assert verdict.reasons == ["input 'img' retyped: float32[-1, 28, 28] -> float32[-1, 32, 32]"]
    assert not check_compatibility(tensor(-1, 28), tensor(-1, 28, dtype="uint8")).compatible


def test_array_to_columns_is_compatible_but_said() -> None:
    x = np.zeros((2, 2))
    old, new = infer_signature(x), infer_signature(x, feature_names=["f0", "f1"])
    verdict = check_compatibility(old, new)
    assert verdict.compatible
    assert verdict.reasons == ["inputs taken as columns (was array)"]


# --- validate_records -----------------------------------------------------------------


@pytest.fixture
def signature(frame: pd.DataFrame) -> Signature:
    return infer_signature(frame[["age", "income", "city", "active", "joined", "score"]])


GOOD = {
    "joined": "2024-05-01T10:00:00",
    "age": 33,
    "income": 2,
    "city": "oslo",
    "active": False,
    "score": 0.25,
    "extra": "ignored",
}


def test_valid_records_become_a_dataframe_in_signature_order(signature: Signature) -> None:
    out = validate_records(signature, [GOOD, {**GOOD, "income": None, "city": None}])
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["age", "income", "city", "active", "joined", "score"]
    assert out["age"].dtype == np.int64
    assert out["income"].tolist()[0] == 2.0 and np.isnan(out["income"].iloc[1])
    assert out["score"].dtype == np.float32
    assert out["active"].dtype == bool
    assert out["joined"].iloc[0] == pd.Timestamp("2024-05-01 10:00")
    assert out["city"].tolist() == ["oslo", None]


def test_validated_records_feed_a_fitted_sklearn_model(
    frame: pd.DataFrame, fitted: LogisticRegression
) -> None:
    signature = infer_signature(frame[["age", "score"]])
    out = validate_records(signature, [{"score": 0.2, "age": 40}, {"age": 20.0, "score": 1}])
    assert fitted.predict(out).shape == (2,)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"age": "33"}, "age", "record 1: field 'age' expected long, got str '33'"),
        ({"age": 3.5}, "age", "record 1: field 'age' expected long, got float 3.5"),
        ({"age": True}, "age", "record 1: field 'age' expected long, got bool True"),
        ({"age": None}, "age", "record 1: field 'age' expected long, got null"),
        ({"income": "2"}, "income", "record 1: field 'income' expected double, got str '2'"),
        ({"active": 1}, "active", "record 1: field 'active' expected boolean, got int 1"),
        ({"city": 7}, "city", "record 1: field 'city' expected string, got int 7"),
        ({"joined": "soon"}, "joined", "expected datetime, got str 'soon'"),
        (
            {"age": "x" * 60},
            "age",
            "expected long, got str 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...",
        ),
    ],
)
def test_first_bad_record_is_reported_with_index_and_field(
    signature: Signature, change: dict[str, Any], field: str, message: str
) -> None:
    records = [GOOD, {**GOOD, **change}, {**GOOD, "age": "also bad"}]
    with pytest.raises(RecordSchemaError) as info:
        validate_records(signature, records)
    assert info.value.field == field and info.value.index == 1
    assert message in info.value.message
    assert info.value.hint is not None and "age long, income double?" in info.value.hint
    # Bad input, not the database-schema error.
    assert isinstance(info.value, InvalidInput) and not isinstance(info.value, SchemaMismatch)
    assert info.value.http_status == 400


def test_missing_required_field_is_named(signature: Signature) -> None:
    record = {k: v for k, v in GOOD.items() if k != "score"}
    with pytest.raises(
        RecordSchemaError, match="record 0: field 'score' expected float, got missing"
    ):
        validate_records(signature, [record])


def test_strict_refuses_unknown_fields_naming_them(signature: Signature) -> None:
    with pytest.raises(RecordSchemaError) as info:
        validate_records(signature, [{**GOOD, "zip": 1}], strict=True)
    assert info.value.message == "record 0 has unknown fields: 'extra', 'zip'"
    assert info.value.field == "extra"


@pytest.mark.parametrize("records", [{"age": 1}, [GOOD, ["not", "a", "record"]]])
def test_refuses_records_that_are_not_objects(signature: Signature, records: Any) -> None:
    with pytest.raises(RecordSchemaError, match=r"not an object|must be a list"):
        validate_records(signature, records)


def test_integer_fields_check_their_range() -> None:
    signature = _sig(Field("n", "integer"))
    assert validate_records(signature, [{"n": 2**31 - 1}])["n"].tolist() == [2**31 - 1]
    with pytest.raises(RecordSchemaError, match="expected integer, got int 2147483648"):
        validate_records(signature, [{"n": 2**31}])


def test_array_signature_gives_a_2d_float_array() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    model = RandomForestRegressor(n_estimators=3, random_state=0).fit(x, [1.0, 2.0])
    out = validate_records(infer_signature(x), [{"f1": 2, "f0": 1.5}])
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float64 and out.tolist() == [[1.5, 2.0]]
    assert model.predict(out).shape == (1,)


def test_without_pandas_columns_give_a_2d_array(
    signature: Signature, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    numeric = _sig(AGE, Field("income", "double", nullable=True))
    out = validate_records(numeric, [{"age": 1, "income": None}, {"age": 2, "income": 0.5}])
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert out[0, 0] == 1.0 and np.isnan(out[0, 1])
    mixed = validate_records(signature, [GOOD])
    assert isinstance(mixed, np.ndarray) and mixed.shape == (1, 6)


def test_empty_batch_keeps_the_columns(signature: Signature) -> None:
    assert list(validate_records(signature, []).columns) == signature.inputs.names


def test_vector_signature_feeds_a_text_pipeline() -> None:
    texts = np.array(["good movie", "bad movie", "great film", "awful film"])
    model = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [1, 0, 1, 0])
    signature = infer_signature(texts, model.predict(texts))
    out = validate_records(signature, [{"f0": "good film"}])
    assert model.predict(out).tolist() == [1]


def test_tensor_signature_checks_shapes() -> None:
    signature = infer_signature(np.zeros((1, 2, 2), dtype=np.float32))
    out = validate_records(signature, [{"input": [[1, 2], [3, 4]]}])
    assert out.shape == (1, 2, 2) and out.dtype == np.float32
    with pytest.raises(RecordSchemaError, match="expected float32\\[-1, 2, 2\\], got list"):
        validate_records(signature, [{"input": [1, 2, 3]}])


# --- declared schemas -----------------------------------------------------------------


def test_declared_schema_as_a_simple_mapping() -> None:
    schema = schema_from_declared({"age": "long", "city": "string"})
    assert schema == Schema((AGE, CITY))


def test_declared_schema_in_to_dict_form(frame: pd.DataFrame) -> None:
    schema = infer_signature(frame).inputs
    assert schema_from_declared(schema.to_dict()) == schema
    assert schema_from_declared(schema.to_dict()["fields"]) == schema


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"age": "int"}, "field 'age' has unknown type 'int'"),
        ({"age": "tensor"}, "field 'age' has unknown type 'tensor'"),
        ({}, "non-empty mapping"),
        ([{"name": "a"}], r"declared schema.fields\[0\] is missing key 'type'"),
    ],
)
def test_declared_schema_refuses_unknown_types(data: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        schema_from_declared(data)
    if "unknown type" in message:
        assert info.value.hint == (
            "allowed types: double, float, long, integer, boolean, string, binary, datetime"
        )
