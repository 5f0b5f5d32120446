"""Standard request and response bodies, translated to and from Tether records.

Two protocols besides Tether's own ``{"records": [...]}``, all three going
through the same `Endpoint.predict` path:

- the Open Inference Protocol (KServe v2, as Triton and MLServer speak it):
  tensors with a datatype, a shape and row-major data, in JSON or with the
  binary tensor extension (``Inference-Header-Content-Length``) that
  tritonclient uses by default;
- MLflow's scoring protocol (``POST /invocations``): ``dataframe_split``,
  ``dataframe_records``, ``instances`` and ``inputs``.

Decoding gives either records (objects of named fields) or positional rows
(lists of values in the order of the version's input schema; the version that
serves the request names them, see `LoadedModel.named`). Pure translation, no
I/O.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _strict_json as json_body
from .._errors import InvalidInput
from .._schema import Field, Schema, Signature
from .guard import float_limit

# -- Open Inference Protocol ----------------------------------------------------------------

#: OIP datatype -> numpy dtype (BYTES is handled apart).
OIP_DTYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
_FIELD_DATATYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
                    "boolean": "BOOL", "string": "BYTES", "binary": "BYTES",
                    "datetime": "BYTES"}
_NUMPY_DATATYPES = {v: k for k, v in OIP_DTYPES.items()}
#: Largest tensor (elements) one request may carry.
MAX_ELEMENTS = 16 * 1024 * 1024
#: Most dimensions a tensor may have (numpy's own limit is 64: past it, a 500).
MAX_DIMENSIONS = 32


def field_datatype(f: Field) -> str:
    if f.type == "tensor" and f.dtype is not None:
        return _NUMPY_DATATYPES.get(np.dtype(f.dtype).name, "BYTES")
    return _FIELD_DATATYPES.get(f.type, "BYTES")


def tensor_metadata(schema: Schema | None, *, outputs: bool) -> list[dict[str, Any]]:
    """The tensors a schema declares, as OIP metadata (``name``, ``datatype``, ``shape``).

    A ``columns`` schema is one 1-D tensor per column (a single 2-D tensor with
    the columns in order is accepted too); an ``array`` schema (a model logged
    from a 2-D array) is one 2-D tensor named ``input`` (``predictions`` for
    outputs); a vector is one 1-D tensor; a tensor keeps its declared shape.
    """
    if schema is None or not schema.fields:
        return []
    fields = schema.fields
    if schema.kind == "tensor":
        f = fields[0]
        return [{"name": f.name, "datatype": field_datatype(f),
                 "shape": list(f.shape) if f.shape is not None else [-1]}]
    if schema.kind == "array":
        types = {field_datatype(f) for f in fields}
        datatype = types.pop() if len(types) == 1 else "BYTES"
        name = "predictions" if outputs else "input"
        return [{"name": name, "datatype": datatype, "shape": [-1, len(fields)]}]
    return [{"name": f.name, "datatype": field_datatype(f), "shape": [-1]} for f in fields]


def model_metadata(endpoint: str, versions: list[str], signature: Signature | None,
                   platform: str) -> dict[str, Any]:
    return {"name": endpoint, "versions": versions, "platform": platform,
            "inputs": tensor_metadata(signature.inputs if signature else None, outputs=False),
            "outputs": tensor_metadata(signature.outputs if signature else None, outputs=True)}


@dataclass(frozen=True)
class InferRequest:
    records: list[Any]
    request_id: str | None
    #: Output names asked for (None: all), and whether each goes back as binary.
    outputs: dict[str, bool] | None
    binary_default: bool


def parse_infer(body: bytes, header_length: str | None,
                max_records: int | None = None) -> InferRequest:
    """An OIP inference request as records (several named inputs) or rows (one 2-D input);
    refused before any value is decoded when an input has more than ``max_records`` rows
    (an endpoint's limit: a 16 MB body of four million BYTES took 4 s of the event loop
    to decode and be refused by it)."""
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInput("Inference-Header-Content-Length is not a number") from None
        if not 0 < size <= len(body):
            raise InvalidInput("Inference-Header-Content-Length is beyond the body")
        body, binary = body[:size], body[size:]
    data = _json(body)
    if not isinstance(data, Mapping):
        raise InvalidInput("an inference request must be a JSON object with \"inputs\"")
    unknown = set(data) - {"id", "parameters", "inputs", "outputs"}
    if unknown:
        raise InvalidInput(f"unknown key(s) in the inference request: {', '.join(sorted(unknown))}")
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("\"inputs\" must be a non-empty list of tensors")
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("\"id\" must be a string")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise InvalidInput("\"parameters\" must be an object")
    binary_default = parameters.get("binary_data_output") is True
    outputs = _requested_outputs(data.get("outputs"), binary_default)
    offset = 0
    tensors: list[tuple[str, list[int], list[Any]]] = []
    for index, tensor in enumerate(inputs):
        name, shape, values, used = _tensor(tensor, index, binary, offset, max_records)
        offset += used
        tensors.append((name, shape, values))
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} byte(s) of binary tensor data are not "
                           "claimed by any input's binary_data_size")
    return InferRequest(_records(tensors), request_id, outputs, binary_default)


def _requested_outputs(value: Any, binary_default: bool) -> dict[str, bool] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("\"outputs\" must be a list of {\"name\": ...}")
    out: dict[str, bool] = {}
    for item in value:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise InvalidInput("each requested output needs a \"name\"")
        params = item.get("parameters") or {}
        binary = params.get("binary_data", binary_default) if isinstance(params, Mapping) \
            else binary_default
        out[item["name"]] = binary is True
    return out


def _tensor(tensor: Any, index: int, binary: bytes, offset: int,
            max_records: int | None = None) -> tuple[str, list[int], list[Any], int]:
    where = f"input {index}"
    if not isinstance(tensor, Mapping):
        raise InvalidInput(f"{where} must be an object with name, shape, datatype and data")
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where} needs a name")
    where = f"input {name!r}"
    if not (isinstance(shape, list) and shape and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise InvalidInput(f"{where}: shape must be a list of sizes, such as [2, 4]")
    if len(shape) > MAX_DIMENSIONS:
        raise InvalidInput(f"{where}: {len(shape)} dimensions is over the limit of "
                           f"{MAX_DIMENSIONS}")
    if 0 in shape:
        # No values, but rows all the same: [10**24, 0] was a 90-byte request that built
        # that many empty rows on the event loop.
        raise InvalidInput(f"{where}: shape {shape} holds no values: nothing to predict",
                           hint="send at least one record")
    if max_records is not None and shape[0] > max_records:
        raise InvalidInput(f"{where}: {shape[0]} records is over this endpoint's limit of "
                           f"{max_records}", hint="send the records in smaller requests")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInput(f"{where}: {count} elements is over the limit of {MAX_ELEMENTS}")
    if not isinstance(datatype, str) or (datatype not in OIP_DTYPES and datatype != "BYTES"):
        raise InvalidInput(f"{where}: unknown datatype {datatype!r}",
                           hint="datatypes: " + ", ".join([*OIP_DTYPES, "BYTES"]))
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, Mapping) else None
    used = 0
    if size is not None:
        if "data" in tensor:
            raise InvalidInput(f"{where} has both data and binary_data_size")
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"{where}: binary_data_size {size!r} is beyond the body")
        values = _from_binary(binary[offset:offset + size], datatype, count, where)
        used = size
    else:
        if "data" not in tensor:
            raise InvalidInput(f"{where} has no data")
        values = _flat(tensor["data"], where)
        if len(values) != count:  # before each value is looked at (15M of them took 6 s)
            raise InvalidInput(
                f"{where}: shape {shape} needs {count} values, data has {len(values)}")
        _check_values(values, datatype, where)
    if len(values) != count:
        raise InvalidInput(f"{where}: shape {shape} needs {count} values, data has {len(values)}")
    return name, shape, values, used


def _flat(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: data must be a list")
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                if len(stack) > 64:
                    raise InvalidInput(f"{where}: data is nested too deeply")
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _check_values(values: list[Any], datatype: str, where: str) -> None:
    if datatype == "BOOL":
        ok = all(type(v) is bool for v in values)
    elif datatype == "BYTES":
        ok = all(type(v) is str for v in values)
    elif datatype.startswith(("INT", "UINT")):
        ok = all(type(v) is int for v in values)
    else:  # floating point: JSON integers are numbers too; NaN/Infinity are judged later
        ok = all(type(v) is float or type(v) is int for v in values)
    if not ok:
        bad = next(v for v in values if not _fits(v, datatype))
        raise InvalidInput(f"{where}: {bad!r} is not a {datatype} value")
    _check_range(values, datatype, where)


def _check_range(values: list[Any], datatype: str, where: str) -> None:
    """Refuse a value its datatype cannot hold: 300 as UINT8, or 1e39 as FP32 (which
    becomes infinity, and fails the model as infinity does). NaN and infinities
    themselves are judged later, by the endpoint's allow_non_finite."""
    if not values or datatype in ("BOOL", "BYTES", "FP64"):
        return
    if datatype.startswith(("INT", "UINT")):
        info = np.iinfo(OIP_DTYPES[datatype])
        low, high = min(values), max(values)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(f"{where}: {bad!r} is outside {datatype}'s range "
                               f"[{info.min}, {info.max}]")
        return
    limit = float_limit("tensor", OIP_DTYPES[datatype])  # where it rounds to infinity
    assert limit is not None
    try:
        array = np.asarray(values, dtype=np.float64)
    except OverflowError:  # an integer beyond any float
        raise InvalidInput(f"{where}: a value is too large for {datatype}") from None
    finite = array[np.isfinite(array)]
    if finite.size and float(np.abs(finite).max()) >= limit:
        bad = float(finite[np.abs(finite) >= limit][0])
        largest = float(np.finfo(OIP_DTYPES[datatype]).max)
        raise InvalidInput(f"{where}: {bad!r} is beyond {datatype}'s range (it would be "
                           f"infinity); the largest is {largest:g}")


def _fits(value: Any, datatype: str) -> bool:
    if datatype == "BOOL":
        return type(value) is bool
    if datatype == "BYTES":
        return type(value) is str
    if datatype.startswith(("INT", "UINT")):
        return type(value) is int
    return type(value) is float or type(value) is int


def _from_binary(raw: bytes, datatype: str, count: int, where: str) -> list[Any]:
    if datatype == "BYTES":
        if len(raw) < 4 * count:  # each element has its 4-byte length: said before decoding
            raise InvalidInput(f"{where}: {len(raw)} bytes of binary data cannot hold {count} "
                               "BYTES elements (4 bytes of length each, at least)")
        out: list[Any] = []
        pos = 0
        while pos < len(raw):
            if len(out) == count:  # more elements than the shape: said before decoding on
                raise InvalidInput(f"{where}: binary data holds more than the {count} "
                                   "BYTES element(s) its shape needs")
            if pos + 4 > len(raw):
                raise InvalidInput(f"{where}: truncated BYTES element")
            (length,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + length > len(raw):
                raise InvalidInput(f"{where}: truncated BYTES element")
            chunk = raw[pos:pos + length]
            pos += length
            try:
                out.append(chunk.decode())
            except UnicodeDecodeError:
                raise InvalidInput(f"{where}: BYTES element is not UTF-8 text") from None
        return out
    dtype = np.dtype(OIP_DTYPES[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"{where}: {len(raw)} bytes of binary data for {count} "
                           f"{datatype} values")
    values: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
    return values


def _records(tensors: list[tuple[str, list[int], list[Any]]]) -> list[Any]:
    """One 2-D (or higher) input: positional rows. Otherwise one record field per input."""
    if len(tensors) == 1 and len(tensors[0][1]) >= 2:
        _name, shape, values = tensors[0]
        return _split(values, shape)
    rows: int | None = None
    columns: dict[str, list[Any]] = {}
    for name, shape, values in tensors:
        if name in columns:
            raise InvalidInput(f"input {name!r} is given twice")
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise InvalidInput(f"input {name!r} has {shape[0]} rows; the first input has {rows}",
                               hint="every input carries one value (or row) per record")
        columns[name] = [row[0] if len(shape) == 2 and shape[1] == 1 else row
                         for row in _split(values, shape)] if len(shape) > 1 else values
    return [{name: column[i] for name, column in columns.items()} for i in range(rows or 0)]


def _split(values: list[Any], shape: list[int]) -> list[Any]:
    """Row-major flat values as nested lists of ``shape``."""
    if len(shape) == 1:
        return values
    if len(shape) == 2:
        width = shape[1]
        return [values[i * width:(i + 1) * width] for i in range(shape[0])]
    out: list[Any] = np.array(values, dtype=object).reshape(shape).tolist()
    return out


def infer_response(endpoint: str, version: str, request_id: str, predictions: list[Any],
                   signature: Signature | None, request: InferRequest) -> tuple[bytes, int | None]:
    """The OIP response body, and the JSON header's length when binary tensors follow."""
    outputs = _output_tensors(predictions, signature)
    wanted = request.outputs
    if wanted is not None:  # every name it holds is an output: see check_outputs
        outputs = [o for o in outputs if o[0] in wanted]
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, datatype, array in outputs:
        binary = wanted.get(name, request.binary_default) if wanted is not None \
            else request.binary_default
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = _to_binary(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    header = json_body.dumps({"model_name": endpoint, "model_version": version,
                              "id": request_id, "outputs": tensors}).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def check_outputs(predictions: list[Any], signature: Signature | None,
                  request: InferRequest) -> None:
    """Refuse a request naming an output these predictions do not have (InvalidInput),
    before the endpoint counts the request as served."""
    if request.outputs is None:
        return
    names = [name for name, _ in _output_names(predictions, signature)]
    unknown = sorted(set(request.outputs) - set(names))
    if unknown:
        raise InvalidInput(f"no output named {unknown[0]!r}", hint="outputs: " + ", ".join(names))


def check_inputs(signature: Signature | None, request: InferRequest) -> None:
    """Refuse named inputs the version does not take (InvalidInput): they were dropped
    without a word, so a misspelt input went unnoticed while the model saw the rest."""
    if signature is None or signature.inputs.kind != "columns" or not request.records:
        return
    first = request.records[0]
    if not isinstance(first, Mapping):
        return  # one 2-D input: positional rows, named by the version
    names = set(signature.inputs.names)
    unknown = sorted(set(first) - names)
    if unknown:
        raise InvalidInput(f"no input named {unknown[0]!r}",
                           hint="inputs: " + ", ".join(signature.inputs.names))


def _output_names(predictions: list[Any],
                  signature: Signature | None) -> list[tuple[str, list[Any] | None]]:
    """(name, column of a frame's predictions or None for all of them) per output."""
    schema = signature.outputs if signature is not None else None
    if predictions and all(isinstance(p, Mapping) for p in predictions):  # a frame of columns
        names = list(dict.fromkeys(k for p in predictions for k in p))
        return [(str(n), [p.get(n) for p in predictions]) for n in names]
    name = "predictions"
    if schema is not None and len(schema.fields) == 1 and schema.kind != "array":
        name = schema.fields[0].name
    return [(name, None)]


def _output_tensors(predictions: list[Any],
                    signature: Signature | None) -> list[tuple[str, str, Any]]:
    """(name, datatype, array) per output tensor; named by the output schema where it says."""
    return [(name, *_typed(predictions if column is None else column))
            for name, column in _output_names(predictions, signature)]


def _typed(values: list[Any]) -> tuple[str, Any]:
    try:
        array = np.asarray(values)
    except ValueError:  # ragged
        array = np.asarray([json.dumps(v) for v in values])
    kind = array.dtype.kind
    if kind == "b":
        return "BOOL", array
    if kind in "iu":
        return "INT64", array.astype(np.int64)
    if kind == "f":
        return "FP64", array.astype(np.float64)
    if kind == "U":
        return "BYTES", array
    return "BYTES", np.asarray([v if isinstance(v, str) else json.dumps(v, default=str)
                                for v in array.reshape(-1).tolist()]).reshape(array.shape)


def _to_binary(array: Any, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1).tolist():
            raw = str(value).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    data: bytes = np.ascontiguousarray(array, dtype=np.dtype(OIP_DTYPES[datatype])
                                       .newbyteorder("<")).tobytes()
    return data


# -- MLflow's scoring protocol ---------------------------------------------------------------

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def parse_mlflow(data: Any) -> list[Any]:
    """An MLflow ``/invocations`` JSON body as records or positional rows."""
    if not isinstance(data, Mapping):
        raise InvalidInput("the body must be a JSON object with one of: "
                           + ", ".join(MLFLOW_FORMATS))
    given = [k for k in MLFLOW_FORMATS if k in data]
    unknown = set(data) - {*MLFLOW_FORMATS, "params"}
    if unknown:
        raise InvalidInput(f"unknown key(s): {', '.join(sorted(unknown))}",
                           hint="one of: " + ", ".join(MLFLOW_FORMATS) + " (and params)")
    if len(given) != 1:
        raise InvalidInput("the body must hold exactly one of: " + ", ".join(MLFLOW_FORMATS),
                           hint=f"it holds {', '.join(given) or 'none'}")
    if data.get("params"):
        raise InvalidInput("inference params are not supported by tether serve",
                           hint="drop \"params\"; a version predicts with what it was logged with")
    kind = given[0]
    value = data[kind]
    if kind == "dataframe_split":
        if not isinstance(value, Mapping) or not isinstance(value.get("data"), list):
            raise InvalidInput("dataframe_split must be {\"columns\": [...], \"data\": [[...]]}")
        columns, rows = value.get("columns"), value["data"]
        if columns is None:
            return list(rows)
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise InvalidInput("dataframe_split.columns must be a list of names")
        if len(set(columns)) != len(columns):  # one of them would silently win
            twice = next(c for c in columns if columns.count(c) > 1)
            raise InvalidInput(f"dataframe_split.columns names {twice!r} twice")
        out = []
        for index, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(columns):
                raise InvalidInput(f"dataframe_split.data[{index}] must be a list of "
                                   f"{len(columns)} values, one per column")
            out.append(dict(zip(columns, row, strict=True)))
        return out
    if kind == "dataframe_records":
        if not isinstance(value, list):
            raise InvalidInput("dataframe_records must be a list of objects")
        return list(value)
    if isinstance(value, Mapping):  # {"a": [...], "b": [...]}: named columns (tensors)
        return _columns_to_records(value, kind)
    if not isinstance(value, list):
        raise InvalidInput(f"{kind} must be a list of rows or an object of named columns")
    return list(value)


def _columns_to_records(columns: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    lists = {str(k): v for k, v in columns.items()}
    if not lists:
        raise InvalidInput(f"{kind} names no column")
    if not all(isinstance(v, list) for v in lists.values()):  # one record of scalars
        return [dict(lists)]
    lengths = {len(v) for v in lists.values()}
    if len(lengths) != 1:
        raise InvalidInput(f"the columns of {kind} have different lengths: "
                           + ", ".join(f"{k}={len(v)}" for k, v in lists.items()))
    rows = lengths.pop()
    return [{k: v[i] for k, v in lists.items()} for i in range(rows)]


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"body is not valid JSON: {str(error)[:200]}") from None
    except RecursionError:
        raise InvalidInput("body is not valid JSON: nested too deeply") from None
