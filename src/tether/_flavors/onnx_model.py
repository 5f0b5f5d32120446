"""ONNX models, loaded with onnxruntime (scikit-learn models converted with skl2onnx too).

Log an ``onnx.ModelProto`` or the path of an ``.onnx`` file. The file is
written as ``model.onnx`` (a model past protobuf's 2 GB limit keeps its
tensors in ``model.onnx.data`` beside it). ONNX is a graph of operators and
tensors, not code: loading runs nothing the file brings. ``tether.load`` gives
an ``onnxruntime.InferenceSession``; predictions (and serving) feed the input
to the graph's inputs, cast to the types the graph declares, and answer the
first output (for skl2onnx classifiers, the label).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._errors import InvalidInput
from ._common import as_array, entry_name, missing_framework, require
from .base import framework_fields

#: What loading needs; onnx itself (used to write the file) is not needed to load.
FRAMEWORK = ["onnxruntime", "numpy"]
ENTRY = "model.onnx"
_EXTERNAL_LIMIT = 1_800_000_000  # below protobuf's 2 GiB, with room for the graph

#: numpy type names (numpy is imported only to load or predict).
_NUMPY_TYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool_",
    "tensor(string)": "object_",
}


class OnnxFlavor:
    name: str = "onnx"

    def save(self, model: Any, dest: Path, **_options: Any) -> dict[str, Any]:
        try:
            import onnx
        except ImportError as error:
            raise missing_framework(
                "onnx", None, what="logging an ONNX model", error=error
            ) from None
        if isinstance(model, str | os.PathLike):
            source = Path(model)
            if not source.is_file():
                raise InvalidInput(f"{source} is not an ONNX file", hint="pass a .onnx file")
            try:
                model = onnx.load(os.fspath(source))  # with its external data, if any
            except Exception as error:
                raise InvalidInput(f"{source} is not a readable ONNX model: {error}") from None
        if not isinstance(model, onnx.ModelProto):
            raise InvalidInput(
                f"the onnx flavor stores an onnx.ModelProto or a .onnx path, "
                f"not a {type(model).__name__}"
            )
        try:
            onnx.checker.check_model(model)
        except Exception as error:
            raise InvalidInput(f"the ONNX model does not pass onnx.checker: {error}") from None
        large = model.ByteSize() > _EXTERNAL_LIMIT
        onnx.save_model(
            model, os.fspath(dest / ENTRY), save_as_external_data=large,
            all_tensors_to_one_file=True, location=f"{ENTRY}.data" if large else None,
        )
        graph = model.graph
        initialized = {t.name for t in graph.initializer}
        return {
            "name": self.name,
            "serialization": "onnx",
            "entry": ENTRY,
            "inputs": [_value_info(v) for v in graph.input if v.name not in initialized],
            "outputs": [_value_info(v) for v in graph.output],
            "opsets": {o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "ir_version": int(model.ir_version),
            **framework_fields(FRAMEWORK),
        }

    def load(
        self,
        src: Path,
        record: dict[str, Any],
        *,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
    ) -> Any:
        ort = require("onnxruntime", "onnxruntime", record, what="loading this ONNX model")
        path = src / entry_name(record, "entry", ENTRY, flavor="onnx")
        return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])

    def predict(self, model: Any, data: Any) -> Any:
        session = model if hasattr(model, "get_inputs") else _session(model)
        outputs = session.run(None, feed(session, data))
        return outputs[0]


def feed(session: Any, data: Any) -> dict[str, Any]:
    """The inputs of one run: ``data`` matched to the graph's inputs, cast to their types.

    One input takes the whole table or array. Several inputs take the columns
    (or mapping entries) of the same names, each as a column ``[N, 1]`` when
    the graph declares two dimensions.
    """
    import numpy as np

    inputs = session.get_inputs()
    if len(inputs) == 1 and not (isinstance(data, Mapping) and inputs[0].name in data):
        return {inputs[0].name: _cast(as_array(data), inputs[0])}
    columns = data if isinstance(data, Mapping) else None
    if columns is None and hasattr(data, "columns"):
        columns = {str(c): data[c].to_numpy() for c in data.columns}
    if columns is None:
        raise InvalidInput(
            f"this ONNX model takes {len(inputs)} inputs "
            f"({', '.join(i.name for i in inputs)}); give a table or mapping with those names"
        )
    missing = [i.name for i in inputs if i.name not in columns]
    if missing:
        raise InvalidInput(f"the ONNX model's input(s) {', '.join(missing)} are missing")
    out: dict[str, Any] = {}
    for spec in inputs:
        value = np.asarray(columns[spec.name])
        if len(spec.shape or ()) == 2 and value.ndim == 1:
            value = value.reshape(-1, 1)
        out[spec.name] = _cast(value, spec)
    return out


def _cast(value: Any, spec: Any) -> Any:
    import numpy as np

    wanted_name = _NUMPY_TYPES.get(spec.type)
    wanted = getattr(np, wanted_name) if wanted_name else None
    if wanted is None or value.dtype == wanted:
        return value
    if wanted is np.object_:
        return value.astype(str).astype(object)
    return value.astype(wanted)


def _session(model: Any) -> Any:
    """A session for a model as logged (a ModelProto or a path), to predict on the example."""
    ort = require("onnxruntime", "onnxruntime", None, what="running an ONNX model")
    if isinstance(model, str | os.PathLike):
        return ort.InferenceSession(os.fspath(model), providers=["CPUExecutionProvider"])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _value_info(value: Any) -> dict[str, Any]:
    """``{"name", "type", "shape"}`` of a graph input or output (-1 for a free dimension)."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "type": kind or "unknown"}
    import onnx

    tensor = value.type.tensor_type
    dims = [
        int(d.dim_value) if d.HasField("dim_value") else -1 for d in tensor.shape.dim
    ]
    return {
        "name": value.name,
        "type": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        if tensor.elem_type else "unknown",
        "shape": dims,
    }
