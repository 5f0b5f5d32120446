"""PyTorch: a module's state dict as safetensors, or a ``torch.export`` program.

**State dicts.** A ``torch.nn.Module`` is stored as ``model.safetensors`` (its
tensors, no pickle) plus, in the record, the import path of its class and the
constructor arguments (JSON). Loading rebuilds it: imports the class, calls it
with those arguments, loads the tensors into it (strictly: every name and
shape must match). Importing a module and running a constructor is running
code, so it happens only when the caller allows it: ``trusted=True``, or
``trusted_types`` naming the class or a module it lives under
(``["mypkg.models"]`` allows ``mypkg.models.Net`` and ``mypkg.models.cnn.Net``).
The record never widens that list.

The constructor arguments are taken from ``TorchModule(module, args=..., kwargs=...)``
when the caller wraps the module; otherwise from the module itself: each
parameter of the class's ``__init__`` read from the attribute of the same name
(or its default). Either way the class is rebuilt once at save time, on the
``meta`` device (no memory for weights), and its state dict's names and shapes
must match, so a version that cannot be rebuilt is refused when logged, not
when loaded. The class must be importable by name (not defined in
``__main__`` or inside a function).

**Exported programs.** A ``torch.export.ExportedProgram`` is written with
``torch.export.save`` (``model.pt2``) and read back without
``torch.export.load``, which unpickles the sample inputs: the graph (JSON) and
the raw weights are read, and an archive holding any pickled payload is
refused. Loading an exported program imports no user code.

Safetensors lays the tensors out in a fixed order after a JSON header, so a
new version that changes one tensor stores, in the chunk store, about the
bytes of that tensor.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._errors import InvalidInput, UnsafeArtifact
from ._common import as_array, class_names, entry_name, require
from .base import TRUST_HINT, framework_fields
from .python import _distributions_of

STATE_ENTRY = "model.safetensors"
EXPORT_ENTRY = "model.pt2"
_JSON_SCALARS = (str, int, float, bool, type(None))


class TorchModule:
    """A module to log with its constructor arguments, given explicitly.

    ``tether.log_model(TorchModule(net, kwargs={"hidden": 64}), "net")`` stores
    ``net``'s state dict and ``type(net)(hidden=64)`` as the way to rebuild it.
    ``args`` and ``kwargs`` must be JSON values.
    """

    def __init__(
        self, module: Any, *, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> None:
        self.module = module
        self.args = list(args)
        self.kwargs = dict(kwargs or {})

    def predict(self, data: Any) -> Any:
        return _run(self.module, data)


class PyTorchFlavor:
    name: str = "pytorch"

    def save(self, model: Any, dest: Path, **options: Any) -> dict[str, Any]:
        torch = require("torch", "torch", None, what="logging a PyTorch model")
        if "torch.export.exported_program.ExportedProgram" in class_names(model):
            return self._save_exported(torch, model, dest)
        init: tuple[list[Any], dict[str, Any]] | None = None
        if isinstance(model, TorchModule):
            init = (model.args, model.kwargs)
            model = model.module
        if not isinstance(model, torch.nn.Module):
            raise InvalidInput(
                f"the pytorch flavor stores a torch.nn.Module or an ExportedProgram, "
                f"not a {type(model).__name__}"
            )
        if options.get("serialization") not in (None, "safetensors"):
            raise InvalidInput(
                "a PyTorch module is stored as safetensors; log torch.export.export(...) "
                "for an exported program"
            )
        cls = type(model)
        path = importable_path(cls)
        args, kwargs = init if init is not None else constructor_arguments(model)
        _check_json(args, kwargs, path)
        _check_rebuild(torch, cls, args, kwargs, model)
        safetensors_torch = require(
            "safetensors.torch", "safetensors", None, what="logging a PyTorch model"
        )
        # save_model drops the duplicates of shared (tied) tensors; load_model restores them.
        safetensors_torch.save_model(model, os.fspath(dest / STATE_ENTRY))
        return {
            "name": self.name,
            "format": "state_dict",
            "serialization": "safetensors",
            "entry": STATE_ENTRY,
            "python_class": path,
            "init": {"args": args, "kwargs": kwargs},
            "parameters": int(sum(p.numel() for p in model.parameters())),
            **framework_fields(["torch", "safetensors", "numpy", *_distributions_of(model)]),
        }

    def _save_exported(self, torch: Any, program: Any, dest: Path) -> dict[str, Any]:
        torch.export.save(program, os.fspath(dest / EXPORT_ENTRY))
        try:
            _check_no_pickle(dest / EXPORT_ENTRY)
        except (ImportError, AttributeError) as error:
            raise _reader_changed(torch, None, error) from error
        return {
            "name": self.name,
            "format": "exported_program",
            "serialization": "pt2",
            "entry": EXPORT_ENTRY,
            "python_class": "torch.export.ExportedProgram",
            **framework_fields(["torch", "numpy"]),
        }

    def load(
        self,
        src: Path,
        record: dict[str, Any],
        *,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
    ) -> Any:
        torch = require("torch", "torch", record, what="loading this PyTorch model")
        if record.get("format") == "exported_program":
            entry = entry_name(record, "entry", EXPORT_ENTRY, flavor="pytorch")
            try:
                return load_exported(src / entry)
            except (ImportError, AttributeError) as error:
                raise _reader_changed(torch, record, error) from error
        if record.get("format") != "state_dict":
            raise InvalidInput(
                f"this PyTorch model was saved as {record.get('format')!r}, "
                "which this version of Tether cannot load",
                hint="upgrade Tether",
            )
        path = str(record.get("python_class") or "")
        if not trusted and not allowed(path, trusted_types):
            raise UnsafeArtifact(
                f"refusing to rebuild {path}: loading this PyTorch state dict imports "
                f"{path.rpartition('.')[0] or path} and runs the class's constructor, "
                "which is code execution, and the caller trusted neither the version "
                "nor that class",
                hint=(
                    f"after reviewing the class, pass trusted_types=[{path!r}] (or its module) "
                    f"to the flavor's load; or {TRUST_HINT}"
                ),
            )
        safetensors_torch = require(
            "safetensors.torch", "safetensors", record, what="loading this PyTorch model"
        )
        cls = import_class(path)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise InvalidInput(f"{path} is not a torch.nn.Module class")
        init = record.get("init") or {}
        module = cls(*init.get("args", []), **init.get("kwargs", {}))
        entry = entry_name(record, "entry", STATE_ENTRY, flavor="pytorch")
        missing, unexpected = safetensors_torch.load_model(
            module, os.fspath(src / entry), strict=True
        )
        if missing or unexpected:  # pragma: no cover - strict=True raises first
            raise InvalidInput(f"the weights do not fit {path}: {missing} {unexpected}")
        module.eval()
        return module

    def predict(self, model: Any, data: Any) -> Any:
        if isinstance(model, TorchModule):
            model = model.module
        if hasattr(model, "graph_signature") and hasattr(model, "module"):
            model = model.module()  # an ExportedProgram: its callable module
        return _run(model, data)


# -- rebuilding a module ----------------------------------------------------------------


def importable_path(cls: type) -> str:
    """``module.QualName`` of a class that importing that module gives back."""
    path = f"{cls.__module__}.{cls.__qualname__}"
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise InvalidInput(
            f"{path} cannot be imported by name, so a state dict of it could not be rebuilt",
            hint="define the module's class in an importable module (not in __main__ or "
            "inside a function), or log torch.export.export(module, example_args)",
        )
    try:
        found = import_class(path)
    except (ImportError, AttributeError) as error:
        raise InvalidInput(f"{path} cannot be imported: {error}") from None
    if found is not cls:
        raise InvalidInput(f"importing {path} gives another object than the module's class")
    return path


def import_class(path: str) -> Any:
    """The class ``path`` names: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no module of {path} can be imported")


def allowed(path: str, trusted_types: Sequence[str]) -> bool:
    """Whether the caller's list names the class or a module (or package) above it."""
    return bool(path) and any(
        path == name or path.startswith(name.rstrip(".") + ".") for name in trusted_types if name
    )


def constructor_arguments(module: Any) -> tuple[list[Any], dict[str, Any]]:
    """The keyword arguments of ``type(module).__init__`` read back from the module.

    Each parameter is taken from the attribute of the same name when it holds a
    JSON value, else its default; a parameter with neither is an error that
    asks for `TorchModule`.
    """
    cls = type(module)
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtin __init__
        return [], {}
    kwargs: dict[str, Any] = {}
    for name, parameter in list(parameters.items())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = getattr(module, name, inspect.Parameter.empty)
        if value is not inspect.Parameter.empty and _is_json(value):
            kwargs[name] = list(value) if isinstance(value, tuple) else value
        elif parameter.default is not inspect.Parameter.empty:
            kwargs[name] = parameter.default
        else:
            raise InvalidInput(
                f"cannot tell the constructor argument {name!r} of {cls.__qualname__}: the "
                "module has no attribute of that name holding a JSON value",
                hint=f"log tether._flavors.TorchModule(module, kwargs={{{name!r}: ...}})",
            )
    return [], kwargs


def _is_json(value: Any) -> bool:
    import numpy as np

    if isinstance(value, _JSON_SCALARS):
        return not isinstance(value, float) or np.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _check_json(args: list[Any], kwargs: dict[str, Any], path: str) -> None:
    if not _is_json(args) or not _is_json(kwargs):
        raise InvalidInput(f"the constructor arguments of {path} must be JSON values")
    json.dumps([args, kwargs])


def _check_rebuild(torch: Any, cls: type, args: list[Any], kwargs: dict[str, Any],
                   model: Any) -> None:
    """Build the class on the meta device; its state dict must match the module's."""
    try:
        with torch.device("meta"):
            rebuilt = cls(*args, **kwargs)
    except Exception as error:
        raise InvalidInput(
            f"{cls.__qualname__}(*{args!r}, **{kwargs!r}) fails: {error}",
            hint="log tether._flavors.TorchModule(module, args=..., kwargs=...) "
            "with the arguments it was built with",
        ) from None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:4]
        raise InvalidInput(
            f"{cls.__qualname__}(*{args!r}, **{kwargs!r}) does not rebuild the logged module "
            f"(its tensors differ: {diff})",
            hint="log tether._flavors.TorchModule(module, args=..., kwargs=...) "
            "with the arguments it was built with",
        )


# -- exported programs ------------------------------------------------------------------


def _reader_changed(torch: Any, record: dict[str, Any] | None, error: Exception) -> Exception:
    """The archive reader uses torch's internals; a torch that moved them is named."""
    from .._errors import EnvironmentMismatch

    saved = ((record or {}).get("framework_versions") or {}).get("torch")
    return EnvironmentMismatch(
        f"this torch ({torch.__version__}) lays out exported-program archives differently from "
        f"what Tether reads without unpickling ({type(error).__name__}: {error})",
        hint=f"pip install 'torch=={saved}'" if saved else
        "log a state dict instead, or use the torch release Tether was tested with (2.13)",
    )


def _check_no_pickle(path: Path) -> None:
    """Refuse an archive that holds a pickled payload (tensor subclasses, custom objects)."""
    from torch.export.pt2_archive import _package as package

    plain = (package.WEIGHT_FILENAME_PREFIX, package.TENSOR_CONSTANT_FILENAME_PREFIX)
    _, configs, _ = _archive(path)
    for config in configs:
        for fqn, meta in config.config.items():
            pickled = meta.use_pickle or not meta.path_name.startswith(plain)
            if pickled:
                raise InvalidInput(
                    f"the exported program stores {fqn} as a pickle ({meta.path_name}), "
                    "which Tether does not load",
                    hint="export a program whose weights and constants are plain tensors",
                )


def _archive(path: Path) -> tuple[Any, list[Any], list[str]]:
    from torch.export.pt2_archive import _package as package
    from torch.export.pt2_archive._package import PT2ArchiveReader

    reader = PT2ArchiveReader(os.fspath(path))
    names = list(reader.get_file_names())
    models = [
        n[len("models/"):-len(".json")] for n in names
        if n.startswith("models/") and n.endswith(".json")
    ]
    if models != ["model"]:
        raise InvalidInput(f"{path.name} holds the programs {models}, not one program 'model'")
    legacy = [n for n in names if n.endswith(".pt") and "/sample_inputs/" not in f"/{n}"]
    if legacy:
        raise InvalidInput(f"{path.name} holds pickled payloads ({', '.join(legacy)})")
    configs = [
        package._load_payload_config(reader, fmt.format("model"))
        for fmt in (package.WEIGHTS_CONFIG_FILENAME_FORMAT,
                    package.CONSTANTS_CONFIG_FILENAME_FORMAT)
    ]
    return reader, configs, names


def load_exported(path: Path) -> Any:
    """The ExportedProgram in a ``torch.export.save`` archive, read without unpickling.

    ``torch.export.load`` unpickles the archive's sample inputs (and pickled
    weights, when any): this reads the graph and the raw tensors only, and
    refuses an archive with a pickled payload. The sample inputs are not read.
    """
    from torch._export.serde.schema import ExportedProgram as SerializedProgram
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass
    from torch.export.pt2_archive import _package as package

    _check_no_pickle(path)
    reader, _, _ = _archive(path)
    serialized = _bytes_to_dataclass(
        SerializedProgram, reader.read_bytes(package.MODELS_FILENAME_FORMAT.format("model"))
    )
    state_dict = package._load_state_dict(reader, "model")
    constants = package._load_constants(reader, "model")
    deserializer = ExportedProgramDeserializer(None)
    program = deserializer.deserialize(serialized, state_dict, constants, ((), {}))
    program.example_inputs = None  # the archive's were not read (they are a pickle)
    return program


# -- predicting ---------------------------------------------------------------------------


def _run(module: Any, data: Any) -> Any:
    """``module(tensor)`` without gradients, as numpy; floats in the module's own dtype."""
    import torch

    if isinstance(data, Mapping):
        inputs = {k: _tensor(torch, module, v) for k, v in data.items()}
        with torch.no_grad():
            return _numpy(module(**inputs))
    with torch.no_grad():
        return _numpy(module(_tensor(torch, module, data)))


def _tensor(torch: Any, module: Any, value: Any) -> Any:
    import numpy as np

    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(
        np.ascontiguousarray(as_array(value))
    )
    if tensor.is_floating_point():
        dtype = next(
            (p.dtype for p in getattr(module, "parameters", list)() if p.is_floating_point()),
            torch.float32,
        )
        tensor = tensor.to(dtype)
    return tensor


def _numpy(output: Any) -> Any:
    if isinstance(output, Mapping):
        output = output.get("logits", next(iter(output.values())))
    if isinstance(output, list | tuple):
        output = output[0]
    return output.detach().cpu().numpy()
