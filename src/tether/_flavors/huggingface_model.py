"""A Hugging Face model folder: config, safetensors weights, tokenizer files.

Log a ``transformers`` model (``PreTrainedModel``), a pipeline, a mapping
``{"model": model, "tokenizer": tokenizer}``, or (with ``flavor="huggingface"``)
the path of a folder written by ``save_pretrained``. The folder is stored as
it is, except that weights must be safetensors: pickled weights
(``pytorch_model.bin``, ``*.pt``, ...) and Python files (remote code) are
refused when logged.

Loading calls ``from_pretrained`` on the verified local copy, offline
(``local_files_only``), with ``use_safetensors=True`` and never
``trust_remote_code``: the model class is one of ``transformers``' own,
looked up by name in that package (the record cannot make it import
anything else). ``tether.load`` gives a `HuggingFaceModel`: ``.model``,
``.tokenizer`` (None without tokenizer files) and ``predict``, which takes
text (a column of strings) or token ids and answers the logits (or, for a
model without a head, the first token's hidden state).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._errors import InvalidInput, TetherError, UnsafeArtifact
from .._identity import part_reserved
from ._common import as_array, class_names, require
from .base import framework_fields

FRAMEWORK = ["transformers", "torch", "safetensors", "tokenizers", "numpy"]
#: Files that run code or unpickle when a folder is loaded: refused at log time.
_REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".py", ".h5", ".msgpack")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                    "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


class HuggingFaceModel:
    """A loaded Hugging Face model: ``model``, ``tokenizer`` and ``predict``."""

    def __init__(self, model: Any, tokenizer: Any = None, *, task: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.task = task

    def predict(self, data: Any) -> Any:
        import torch

        inputs = self._encode(torch, data)
        with torch.no_grad():
            output = self.model(**inputs)
        logits = getattr(output, "logits", None)
        if logits is None:
            pooled = getattr(output, "pooler_output", None)
            logits = pooled if pooled is not None else output.last_hidden_state[:, 0, :]
        return logits.detach().cpu().numpy()

    def _encode(self, torch: Any, data: Any) -> dict[str, Any]:
        import numpy as np

        if isinstance(data, Mapping) and "input_ids" in data:
            return {k: torch.as_tensor(np.asarray(v)) for k, v in data.items()}
        texts = _texts(data)
        if texts is not None:
            if self.tokenizer is None:
                raise InvalidInput("this model was logged without a tokenizer; send token ids")
            return dict(self.tokenizer(texts, padding=True, truncation=True,
                                       return_tensors="pt"))
        ids = torch.as_tensor(np.asarray(as_array(data), dtype=np.int64))
        if ids.ndim == 1:
            ids = ids.unsqueeze(0)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def __repr__(self) -> str:
        has = self.tokenizer is not None
        return f"HuggingFaceModel({type(self.model).__name__}, tokenizer={has})"


def _texts(data: Any) -> list[str] | None:
    """The strings of a text input (a string, a list, a one-column table), else None."""
    if isinstance(data, str):
        return [data]
    if hasattr(data, "columns"):
        if len(data.columns) != 1:
            return None
        data = data[data.columns[0]]
    values = list(data) if isinstance(data, list | tuple) or hasattr(data, "tolist") else None
    if values and all(isinstance(v, str) for v in values):
        return [str(v) for v in values]
    return None


class HuggingFaceFlavor:
    name: str = "huggingface"

    def save(self, model: Any, dest: Path, **options: Any) -> dict[str, Any]:
        task = None
        if isinstance(model, str | os.PathLike):
            _copy_folder(Path(model), dest)
        else:
            model, tokenizer, task = _parts(model)
            model.save_pretrained(os.fspath(dest), safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(os.fspath(dest))
        _refuse_code_and_pickles(dest)
        _refuse_shards_elsewhere(dest)
        if not (dest / "config.json").is_file() or not list(dest.glob("*.safetensors")):
            raise InvalidInput(
                "a Hugging Face model folder needs config.json and *.safetensors weights"
            )
        config = _config(dest / "config.json")
        architectures = config.get("architectures") or []
        return {
            "name": self.name,
            "serialization": "safetensors",
            "model_class": architectures[0] if architectures else None,
            "model_type": config.get("model_type"),
            "task": task,
            "tokenizer": any((dest / f).is_file() for f in _TOKENIZER_FILES),
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
        # Again at load: a version committed through the API (or a server) never went
        # through save, and what transformers picks up from the folder (a tokenizer's
        # files, a checkpoint it prefers) is its choice, not ours (a review).
        if not trusted:
            _refuse_code_and_pickles(src, UnsafeArtifact)
        # Whatever the trust: weights from outside the version are not its bytes.
        _refuse_shards_elsewhere(src, UnsafeArtifact)
        transformers = require("transformers", "transformers", record,
                               what="loading this Hugging Face model")
        require("torch", "torch", record, what="loading this Hugging Face model")
        require("safetensors", "safetensors", record, what="loading this Hugging Face model")
        cls = _model_class(transformers, record.get("model_class"))
        where = os.fspath(src)
        model = cls.from_pretrained(where, local_files_only=True, use_safetensors=True,
                                    trust_remote_code=False)
        model.eval()
        tokenizer = None
        if record.get("tokenizer"):
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                where, local_files_only=True, trust_remote_code=False)
        return HuggingFaceModel(model, tokenizer, task=record.get("task"))

    def predict(self, model: Any, data: Any) -> Any:
        if not isinstance(model, HuggingFaceModel):
            model = HuggingFaceModel(*_parts(model)[:2])
        return model.predict(data)


def _refuse_code_and_pickles(folder: Path,
                             error: type[TetherError] = InvalidInput) -> None:
    refused = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if p.suffix.lower() in _REFUSED_SUFFIXES)
    if refused:
        raise error(
            f"the model folder holds {', '.join(refused[:8])}: pickled weights or code, "
            "which Tether does not load",
            hint="save the weights as safetensors (save_pretrained(safe_serialization=True))",
        )


#: Most bytes of a sharded checkpoint's index read (a 70B model's is about 100 KB).
_MAX_SHARD_INDEX = 64 * 1024 * 1024


def _refuse_shards_elsewhere(folder: Path,
                             error: type[TetherError] = InvalidInput) -> None:
    """Refuse a sharded checkpoint whose index (``model.safetensors.index.json``) names
    a shard outside the folder, or one it does not hold. ``from_pretrained`` joins each
    name to the folder: ``../../tmp/w.safetensors`` or an absolute path loaded weights
    that were never logged, from wherever the name pointed on the loading machine,
    while the version verified (a review)."""
    root = folder.resolve()
    # Only what use_safetensors reads: a Hub folder also carries pytorch_model.bin's
    # index without its shards, which from_pretrained never opens here (a review).
    for index in sorted(folder.rglob("*.safetensors.index.json")):
        name = index.relative_to(folder).as_posix()
        try:
            if index.stat().st_size > _MAX_SHARD_INDEX:
                raise ValueError(f"over {_MAX_SHARD_INDEX} bytes")
            weight_map = json.loads(index.read_bytes()).get("weight_map", {})
            if not isinstance(weight_map, Mapping) or not all(
                    isinstance(v, str) for v in weight_map.values()):
                raise ValueError("its weight_map is not a mapping of tensor names to files")
        except (OSError, ValueError, AttributeError, RecursionError) as failure:
            raise error(f"the checkpoint index {name} cannot be read: {failure}",
                        hint="write it with save_pretrained") from None
        for shard in sorted(set(weight_map.values())):
            where = (index.parent / shard).resolve()
            if "\\" in shard or Path(shard).is_absolute() or not where.is_relative_to(root):
                raise error(f"the checkpoint index {name} names the shard {shard[:200]!r}, "
                            "outside the model folder: weights that are not this version's",
                            hint="keep every shard in the folder, named relative to it")
            if not where.is_file():
                raise error(f"the checkpoint index {name} names the shard {shard[:200]!r}, "
                            "which the model folder does not hold",
                            hint="log the folder with every shard its index names")


def _parts(model: Any) -> tuple[Any, Any, str | None]:
    """(model, tokenizer, task) of what was logged."""
    if isinstance(model, Mapping):
        if "model" not in model:
            raise InvalidInput("log a mapping as {'model': model, 'tokenizer': tokenizer}")
        return model["model"], model.get("tokenizer"), None
    if "transformers.pipelines.base.Pipeline" in class_names(model):
        return model.model, model.tokenizer, getattr(model, "task", None)
    if "transformers.modeling_utils.PreTrainedModel" in class_names(model):
        return model, None, None
    raise InvalidInput(
        f"the huggingface flavor stores a transformers model, pipeline or model folder, "
        f"not a {type(model).__name__}"
    )


def _model_class(transformers: Any, name: Any) -> Any:
    """One of transformers' own model classes, by name; AutoModel when none is named."""
    if name is None:
        return transformers.AutoModel
    cls = getattr(transformers, str(name), None) if str(name).isidentifier() else None
    base = transformers.PreTrainedModel
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise InvalidInput(
            f"the model class {name!r} is not one of transformers' model classes",
            hint="Tether loads only transformers' own classes (no remote code); "
            "upgrade transformers if the class is newer",
        )
    return cls


def _copy_folder(source: Path, dest: Path) -> None:
    if not source.is_dir():
        raise InvalidInput(f"{source} is not a folder", hint="pass a save_pretrained folder")
    for path in sorted(source.rglob("*")):
        if any(part_reserved(part) for part in path.relative_to(source).parts):
            continue  # a clone's .git (a model cloned from a hub) is not the model
        if path.is_symlink() and not path.resolve().is_relative_to(source.resolve()):
            raise InvalidInput(f"{path} links outside the folder")
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def _config(path: Path) -> dict[str, Any]:
    """config.json as a mapping whose ``architectures`` is a list of class names and
    ``model_type`` text: nested deep, a list, or a mapping there, it was a traceback
    (RecursionError, AttributeError, KeyError: a review)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read((16 << 20) + 1)
        config = json.loads(raw)
    except (OSError, ValueError, RecursionError) as error:
        raise InvalidInput(f"{path.name} is not a Hugging Face config: {str(error)[:200]}"
                           ) from None
    if len(raw) > 16 << 20 or not isinstance(config, dict):
        raise InvalidInput(f"{path.name} is not a Hugging Face config (an object of at "
                           "most 16 MB)")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(
            isinstance(a, str) for a in architectures):
        raise InvalidInput(f"{path.name}: architectures is not a list of class names")
    if config.get("model_type") is not None and not isinstance(config["model_type"], str):
        raise InvalidInput(f"{path.name}: model_type is not text")
    return config
