"""PyTorch (safetensors state dicts, torch.export programs) and Hugging Face flavors.

PyTorch's wheel is too heavy for the CI suite: these tests are marked ``torch``
and skip where torch is not installed; ``make test-torch`` builds ``.venv-torch``
with the CPU wheel and transformers and runs them. Every model is built here
from a config; nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tether import EnvironmentMismatch, InvalidInput, Registry, UnsafeArtifact
from tether._flavors import TorchModule, detect_flavor, get_flavor
from tether.serving import BackgroundServer, load_deployment

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

pytestmark = pytest.mark.torch

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


class TinyNet(torch.nn.Module):
    """Keeps its constructor arguments as attributes: they are found without help."""

    def __init__(self, in_features: int, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.in_features, self.hidden, self.classes = in_features, hidden, classes
        self.body = torch.nn.Sequential(
            torch.nn.Linear(in_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)
        )

    def forward(self, x: Any) -> Any:
        return self.body(x)


class Opaque(torch.nn.Module):
    """Does not keep its arguments: they must be given with TorchModule."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, width)

    def forward(self, x: Any) -> Any:
        return self.layer(x)


class Wide(torch.nn.Module):
    """Four 256x256 layers (1 MiB of float32 weights): several chunks per tensor."""

    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.width = width
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(4))

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x


HERE = f"{__name__}"


def _serve(registry: Registry, tmp_path: Path, ref: str, body: dict[str, Any],
           trusted: bool = False) -> Any:
    path = tmp_path / "deploy.yaml"
    trust = ", trusted: true" if trusted else ""
    endpoint = f"{{m: {{routes: [{ref}]{trust}}}}}"
    path.write_text(f"server: {{poll_interval: 0.1}}\nendpoints: {endpoint}\n")
    with BackgroundServer(registry, load_deployment(path)) as server, \
            httpx.Client(base_url=server.url) as client:
        response = client.post("/v1/endpoints/m/predict", json=body)
        assert response.status_code == 200, response.text
        return response.json()["predictions"]


def _net() -> Any:
    torch.manual_seed(0)
    return TinyNet(4, hidden=16).eval()


# -- state dicts ---------------------------------------------------------------------------


def test_state_dict_logs_as_safetensors_and_rebuilds_only_when_allowed(
    registry: Registry, tmp_path: Path
) -> None:
    net = _net()
    assert detect_flavor(net).name == "pytorch"
    example = np.asarray(ROWS, dtype=np.float32)
    v = registry.log_model(net, "net", input_example=example)
    assert [f.path for f in v.files] == ["model.safetensors"]
    assert v.flavor["python_class"] == f"{HERE}.TinyNet"
    assert v.flavor["init"] == {"args": [], "kwargs": {"in_features": 4, "hidden": 16,
                                                       "classes": 3}}
    assert v.flavor["framework_versions"]["torch"] == torch.__version__
    assert [f["type"] for f in v.signature["inputs"]["fields"]] == ["float"] * 4
    assert v.signature["outputs"]["kind"] == "array"

    with pytest.raises(UnsafeArtifact) as info:
        registry.load(v.ref)
    assert f"refusing to rebuild {HERE}.TinyNet" in str(info.value)
    assert "trusted_types" in (info.value.hint or "")

    loaded = registry.load(v.ref, trusted=True)
    assert type(loaded) is TinyNet and not loaded.training
    with torch.no_grad():
        want = net(torch.as_tensor(example)).numpy()
    np.testing.assert_allclose(get_flavor("pytorch").predict(loaded, example), want)

    # the caller's allow list: the class, or a module above it; the record never widens it
    where = tmp_path / "files"
    registry.store.materialize(v.files, where, label=v.ref)
    flavor = get_flavor("pytorch")
    for allowed in ([f"{HERE}.TinyNet"], [HERE], [HERE.partition(".")[0]]):
        assert type(flavor.load(where, v.flavor, trusted_types=allowed)) is TinyNet
    for refused in (["os"], [f"{HERE}.TinyNe"], [f"{HERE}.TinyNet.x"]):
        with pytest.raises(UnsafeArtifact):
            flavor.load(where, v.flavor, trusted_types=refused)

    assert _serve(registry, tmp_path, v.ref, {"inputs": ROWS}, trusted=True) == want.tolist()


def test_constructor_arguments_given_explicitly_or_refused(registry: Registry) -> None:
    layer = Opaque(5)
    with pytest.raises(InvalidInput, match="constructor argument 'width'"):
        registry.log_model(layer, "opaque")
    with pytest.raises(InvalidInput, match="does not rebuild the logged module"):
        registry.log_model(TorchModule(layer, kwargs={"width": 6}), "opaque")
    v = registry.log_model(TorchModule(layer, kwargs={"width": 5}), "opaque")
    loaded = registry.load(v.ref, trusted=True)
    assert torch.equal(loaded.layer.weight, layer.layer.weight)

    class Local(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x

    with pytest.raises(InvalidInput, match="cannot be imported by name"):
        registry.log_model(Local(), "local")


def test_one_changed_tensor_stores_about_that_tensor(registry: Registry) -> None:
    torch.manual_seed(1)
    wide = Wide()
    first = registry.log_model(wide, "wide")
    size = first.files[0].size
    assert size > 1_000_000
    before = registry.store.stats().stored_bytes
    with torch.no_grad():
        wide.layers[2].weight.add_(0.5)  # one tensor of four, a quarter of the bytes
    second = registry.log_model(wide, "wide")
    assert second.files_digest != first.files_digest
    added = registry.store.stats().stored_bytes - before
    # the changed 256 KiB tensor plus the chunks at its edges; not the whole file again
    assert added < 0.45 * size, (added, size)
    again = registry.load(second.ref, trusted=True)
    assert torch.equal(again.layers[2].weight, wide.layers[2].weight)


# -- exported programs -----------------------------------------------------------------------


def test_exported_program_loads_without_trust_and_without_unpickling(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _net()
    example = torch.as_tensor(np.asarray(ROWS, dtype=np.float32))
    program = torch.export.export(net, (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    v = registry.log_model(program, "exported", input_example=example.numpy())
    assert [f.path for f in v.files] == ["model.pt2"]
    assert v.flavor["format"] == "exported_program"

    def no_unpickling(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = registry.load(v.ref)  # no user code is imported: no trust needed
    assert "ExportedProgram" in type(loaded).__name__
    with torch.no_grad():
        want = net(example).numpy()
    got = get_flavor("pytorch").predict(loaded, np.asarray(ROWS * 3, dtype=np.float32))
    np.testing.assert_allclose(got[:2], want, rtol=1e-5)
    served = _serve(registry, tmp_path, v.ref, {"inputs": ROWS})
    np.testing.assert_allclose(np.asarray(served), want, rtol=1e-5)


def test_loading_without_torch_names_the_package(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = registry.log_model(_net(), "net")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(EnvironmentMismatch) as info:
        registry.load(v.ref, trusted=True, env_policy="off")
    assert "needs torch, which is not installed here" in str(info.value)
    assert f"pip install 'torch=={torch.__version__}'" in (info.value.hint or "")


# -- Hugging Face -------------------------------------------------------------------------------


@pytest.fixture
def tiny_bert(tmp_path: Path) -> tuple[Any, Any]:
    transformers = pytest.importorskip("transformers")
    words = ["good", "bad", "movie", "great", "awful", "the", "was", "film"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})
    assert 1 not in tokenizer("the movie was good")["input_ids"]  # no [UNK]: a real vocabulary
    config = transformers.BertConfig(
        vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    return model, tokenizer


def test_hugging_face_folder_round_trips_with_its_tokenizer(
    registry: Registry, tiny_bert: tuple[Any, Any], tmp_path: Path
) -> None:
    import pandas as pd

    from tether._flavors import HuggingFaceModel

    model, tokenizer = tiny_bert
    bundle = {"model": model, "tokenizer": tokenizer}
    assert detect_flavor(bundle).name == "huggingface"
    assert detect_flavor(model).name == "huggingface"
    texts = pd.DataFrame({"text": ["the movie was good", "awful film"]})
    v = registry.log_model(bundle, "bert", input_example=texts)
    paths = {f.path for f in v.files}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= paths
    assert not any(p.endswith((".bin", ".pt", ".py")) for p in paths)
    assert v.flavor["model_class"] == "BertForSequenceClassification"
    assert v.flavor["tokenizer"] is True
    assert set(v.flavor["framework_versions"]) >= {"transformers", "torch", "safetensors"}
    field = v.signature["inputs"]["fields"][0]
    assert (field["name"], field["type"]) == ("text", "string")

    loaded = registry.load(v.ref)
    assert isinstance(loaded, HuggingFaceModel) and type(loaded.model) is type(model)
    encoded = tokenizer(list(texts["text"]), padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**encoded).logits.numpy()
    np.testing.assert_allclose(loaded.predict(texts), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(want[0], want[1])  # the two texts are told apart
    np.testing.assert_allclose(loaded.predict(encoded["input_ids"].numpy())[:1], want[:1],
                               rtol=1e-4, atol=1e-5)

    served = _serve(registry, tmp_path, v.ref,
                    {"records": [{"text": t} for t in texts["text"]]})
    np.testing.assert_allclose(np.asarray(served), want, rtol=1e-5, atol=1e-6)


def test_hugging_face_folder_with_pickled_weights_is_refused(
    registry: Registry, tiny_bert: tuple[Any, Any], tmp_path: Path
) -> None:
    model, _ = tiny_bert
    folder = tmp_path / "folder"
    model.save_pretrained(folder, safe_serialization=True)
    v = registry.log_model(str(folder), "folder", flavor="huggingface")
    assert type(registry.load(v.ref).model).__name__ == "BertForSequenceClassification"
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidInput, match=r"pytorch_model\.bin: pickled weights or code"):
        registry.log_model(str(folder), "folder", flavor="huggingface")


def test_hugging_face_record_cannot_name_another_class(
    registry: Registry, tiny_bert: tuple[Any, Any]
) -> None:
    model, _ = tiny_bert
    v = registry.log_model(model, "bert")
    where = registry.cache_dir / "check"
    registry.store.materialize(v.files, where, label=v.ref)
    record = {**v.flavor, "model_class": "os.system"}
    with pytest.raises(InvalidInput, match="not one of transformers' model classes"):
        get_flavor("huggingface").load(where, record)
