"""A corpus of ONNX models written by real exporters, built on the spot: nothing is downloaded.

Each model comes from a tool that people use to make ONNX files, with tiny
configurations and random weights, so that tests can check onnxflip on
graphs that it did not write itself:

* Hugging Face transformers (BERT, GPT-2 with its LM head tied to the token
  embedding, with and without past key values, ViT) through both of torch's
  exporters, ``torch.onnx.export(dynamo=False)`` (TorchScript) and
  ``dynamo=True`` (torch.export and onnxscript), and through optimum's
  ``main_export`` from a folder written by ``save_pretrained``;
* skl2onnx (an MLPClassifier and a LogisticRegression with their ZipMap output);
* onnxruntime.quantization (``quantize_dynamic`` on the BERT, ``quantize_static``
  in the QOperator format on a small CNN);
* onnxconverter-common's float16 converter (on the small CNN);
* hand-made forms of older exporters and the ONNX model zoo's classic CNNs
  (an IR-3 model whose initializers are also graph inputs, weights from
  ``Constant`` nodes and a bias from ``ConstantOfShape``, ``MatMul(x,
  Transpose(W))``, weights behind ``Identity``/``Reshape``/``Squeeze``/``Cast``, a
  shared zero bias) and a scripted ``Loop``.

``RECIPES`` maps each name to its recipe: the builder ``build_<name>(folder)``,
which writes the model (and any external data) into ``folder`` and returns its
path, the output to score, the kind of inputs and how to make them, and the
modules it needs.  ``build(name, folder)`` returns a :class:`CorpusModel`;
``Corpus`` builds each model at most once (the ``real_exports`` fixture in
conftest.py holds one per test session).

What the exporters do with these models (torch 2.14.1, transformers 4.57.6, optimum-onnx 0.1.0):
the transformers' parameters are perturbed first (``trained_like``), since the exporters store equal
tensors (the freshly initialised zero biases and unit LayerNorm scales) once for all layers; every
exporter stores GPT-2's tied matrix twice, the embedding for Gather and a constant-folded transposed
copy for the LM head's MatMul; the dynamo exporter writes its weights as external data
(``model.onnx.data``); TorchScript needs ``masks_without_vmap`` for GPT-2.  No combination is
left out: every model exports with both torch exporters and with optimum.

Every model is saved with an IR version that ONNX Runtime reads (at most
``MAX_IR_VERSION``), except the deliberately old IR-3 one.  The exporters'
warnings are silenced here, by message or category, so that the test suite
keeps ``filterwarnings = error``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MAX_IR_VERSION = 10  # onnx 1.23 writes IR 14 by default; the ONNX Runtime here reads up to 13

# The tiny transformers: hidden size 32, 2 layers, 2 heads, a vocabulary of 128.
VOCABULARY, HIDDEN, LAYERS, HEADS, LABELS = 128, 32, 2, 2, 3
SEQUENCE, PAST = 8, 3  # tokens fed (without past), past length fed to the models with past key values
IMAGE, PATCH, CLASSES = 32, 8, 10  # ViT: 32x32 images in patches of 8, 10 classes
CNN_IMAGE = 16  # the small CNN that is quantised and converted to float16: 3x16x16 -> 10 logits

TRANSFORMERS = ("torch", "transformers")
OPTIMUM = ("torch", "transformers", "optimum.exporters.onnx")
TORCH = ("torch",)


# --- the corpus's entries ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CorpusModel:
    """One built model: where it is, what to feed it and which output to score."""

    name: str
    path: pathlib.Path
    output: str  # the graph output to score
    inputs: str  # the kind of inputs: tokens, tokens+past, image, features, features+steps
    make_feeds: Callable[[int, np.random.Generator], dict[str, np.ndarray]]
    exporter: str  # the tool that wrote it
    float16: bool = False
    quantised: bool = False

    def graph_inputs(self) -> list[str]:
        """The inputs a session asks for (an IR-3 graph also lists its initializers as inputs)."""
        graph = onnx.load(str(self.path), load_external_data=False).graph
        stored = {t.name for t in graph.initializer}
        return [i.name for i in graph.input if i.name not in stored]

    def feeds(self, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
        """A feed dict of ``batch`` samples for exactly the model's inputs."""
        arrays = self.make_feeds(batch, np.random.default_rng(seed))
        names = self.graph_inputs()
        missing = [n for n in names if n not in arrays]
        if missing:
            raise KeyError(f"{self.name}: no feed made for the inputs {missing}")
        return {n: arrays[n] for n in names}

    def scores(self, value) -> np.ndarray:
        """The scored output as an array: a ZipMap's list of {class: probability} becomes (batch, classes)."""
        if isinstance(value, list):
            return np.array([[row[k] for k in sorted(row)] for row in value], dtype=np.float32)
        return np.asarray(value)


@dataclasses.dataclass(frozen=True)
class Recipe:
    build: Callable[[pathlib.Path], pathlib.Path]
    output: str
    inputs: str
    make_feeds: Callable[[int, np.random.Generator], dict[str, np.ndarray]]
    exporter: str
    requires: tuple[str, ...] = ()  # modules the builder imports (a test skips without them)
    float16: bool = False
    quantised: bool = False


def build(name: str, folder: pathlib.Path) -> CorpusModel:
    """Build one model of the corpus into ``folder`` (created) and describe it."""
    recipe = RECIPES[name]
    folder.mkdir(parents=True, exist_ok=True)
    path = recipe.build(folder)
    return CorpusModel(name=name, path=path, output=recipe.output, inputs=recipe.inputs,
                       make_feeds=recipe.make_feeds, exporter=recipe.exporter, float16=recipe.float16,
                       quantised=recipe.quantised)


class Corpus:
    """Builds each model at most once, each in a folder of its own under ``root``; ``seconds`` are the build times."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.models: dict[str, CorpusModel] = {}
        self.seconds: dict[str, float] = {}

    def __getitem__(self, name: str) -> CorpusModel:
        if name not in self.models:
            start = time.perf_counter()
            self.models[name] = build(name, self.root / name)
            self.seconds[name] = time.perf_counter() - start
        return self.models[name]


# --- feeds -------------------------------------------------------------------------------------


def token_feeds(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token ids, an attention mask with right padding (every row keeps at least 3 tokens), segment ids."""
    ids = rng.integers(0, VOCABULARY, size=(batch, SEQUENCE), dtype=np.int64)
    lengths = rng.integers(3, SEQUENCE + 1, size=batch)
    mask = (np.arange(SEQUENCE)[None, :] < lengths[:, None]).astype(np.int64)
    segments = (np.arange(SEQUENCE)[None, :] >= SEQUENCE // 2).astype(np.int64).repeat(batch, axis=0)
    positions = np.arange(SEQUENCE, dtype=np.int64)[None, :].repeat(batch, axis=0)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments, "position_ids": positions}


def past_feeds(batch: int, rng: np.random.Generator, new: int = 1) -> dict[str, np.ndarray]:
    """One decoding step after ``PAST`` tokens: ids (batch, new), mask (batch, PAST + new), keys and values
    (batch, heads, PAST, head size) named as optimum names them, and position ids."""
    feeds = {
        "input_ids": rng.integers(0, VOCABULARY, size=(batch, new), dtype=np.int64),
        "attention_mask": np.ones((batch, PAST + new), dtype=np.int64),
        "position_ids": np.arange(PAST, PAST + new, dtype=np.int64)[None, :].repeat(batch, axis=0),
    }
    for name in past_names():
        feeds[name] = rng.standard_normal((batch, HEADS, PAST, HIDDEN // HEADS)).astype(np.float32)
    return feeds


def past_names() -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]


def present_names() -> list[str]:
    return [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]


def pixel_feeds(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"pixel_values": rng.standard_normal((batch, 3, IMAGE, IMAGE)).astype(np.float32)}


def cnn_feeds(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": rng.random((batch, 3, CNN_IMAGE, CNN_IMAGE), dtype=np.float32)}


def cnn16_feeds(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": rng.random((batch, 3, CNN_IMAGE, CNN_IMAGE), dtype=np.float32).astype(np.float16)}


def small_image_feeds(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The hand-made CNNs' input: (batch, 3, 8, 8)."""
    return {"x": rng.random((batch, 3, 8, 8), dtype=np.float32)}


def feature_feeds(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((batch, 4)).astype(np.float32)}


def loop_feeds(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((batch, 8)).astype(np.float32), "steps": np.array(3, dtype=np.int64)}


# --- saving ------------------------------------------------------------------------------------


def readable(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Cap the IR version at one ONNX Runtime reads."""
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    return proto


def save(proto: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(readable(proto), str(path))
    return path


def cap_ir_version(path: pathlib.Path) -> pathlib.Path:
    """Rewrite a file a tool wrote if its IR version is too new for ONNX Runtime (external data left as it is)."""
    proto = onnx.load(str(path), load_external_data=False)
    if proto.ir_version > MAX_IR_VERSION:
        onnx.save(readable(proto), str(path))
    return path


# --- torch and transformers --------------------------------------------------------------------


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the warnings that exporting these models is known to give, and only those."""
    with warnings.catch_warnings():
        for message in (
            r"You are using the legacy TorchScript-based ONNX export",  # every dynamo=False export
            r"The feature will be removed",  # torch's TorchScript exporter sets up its logging
            r"Exporting aten::index operator of advanced indexing",  # TorchScript: BERT's and GPT-2's masks
            r"# The axis name: .* will not be used",  # dynamo: input axes that share one symbol
            r"Converting a tensor to a Python (boolean|integer|index)",  # TorchScript traces transformers' masks
            r"`torch_dtype` is deprecated",  # optimum 2.1 with transformers 4.57
            r"`torch.jit.script` is deprecated",  # the scripted Loop
        ):
            warnings.filterwarnings("ignore", message=message)
        try:
            import torch

            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        except ImportError:
            pass
        yield


def torch_export(module, args: tuple, path: pathlib.Path, *, inputs: list[str], outputs: list[str],
                 axes: dict[str, dict[int, str]], dynamo: bool, nested: bool = False) -> pathlib.Path:
    """``torch.onnx.export`` with dynamic axes named per input, by either exporter.

    TorchScript takes ``dynamic_axes``; dynamo takes ``dynamic_shapes`` shaped like the forward's
    arguments (``nested``: the inputs after the first two are one ``*past`` argument).  The dynamo
    exporter writes the weights as external data (``MODEL.onnx.data``), its default.
    """
    import torch

    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_exporters():
        if dynamo:
            dims: dict[str, object] = {}
            for per_input in axes.values():
                for name in per_input.values():
                    dims.setdefault(name, torch.export.Dim.AUTO if name == "total" else torch.export.Dim(name))
            shapes = [{axis: dims[name] for axis, name in axes.get(i, {}).items()} or None for i in inputs]
            dynamic = (*shapes[:2], tuple(shapes[2:])) if nested else tuple(shapes)
            torch.onnx.export(module, args, str(path), dynamo=True, verbose=False, input_names=inputs,
                              output_names=outputs, dynamic_shapes=dynamic)
        else:
            with masks_without_vmap():
                torch.onnx.export(module, args, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                                  dynamic_axes=axes)
    return cap_ir_version(path)


@contextlib.contextmanager
def masks_without_vmap() -> Iterator[None]:
    """Attention masks built by broadcasting while TorchScript traces a transformers model.

    transformers >= 4.53 builds its attention masks with ``torch.vmap``, which TorchScript's tracer
    cannot follow: exporting GPT-2 with ``dynamo=False`` fails with ``RuntimeError: unordered_map::at``
    (torch 2.14.1, transformers 4.57.6), and its non-vmap fallback bakes the traced shapes in.  optimum's
    ModelPatcher swaps in a broadcast version for the same reason; this is that swap, for the plain
    TorchScript exports.
    """
    try:
        from transformers import masking_utils as mu
    except ImportError:
        yield
        return
    if not hasattr(mu, "ALL_MASK_ATTENTION_FUNCTIONS"):
        yield
        return
    import torch

    def sdpa_mask(batch_size, cache_position, kv_length, kv_offset=0, mask_function=None, attention_mask=None,
                  local_size=None, allow_is_causal_skip=True, **kwargs):
        mask_function = mask_function or mu.causal_mask_function
        padding = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
        if allow_is_causal_skip and mu._ignore_causal_mask_sdpa(padding, cache_position.shape[0], kv_length,
                                                                kv_offset, local_size):
            return None
        if padding is not None:
            mask_function = mu.and_masks(mask_function, mu.padding_mask_function(padding))
        q = cache_position[None, None, :, None]
        heads = torch.arange(1, dtype=torch.long)[None, :, None, None]
        batches = torch.arange(batch_size, dtype=torch.long)[:, None, None, None]
        kv = torch.arange(kv_length, dtype=torch.long)[None, None, None, :] + kv_offset
        return mask_function(batches, heads, q, kv).expand(batch_size, -1, cache_position.shape[0], kv_length)

    def eager_mask(*args, dtype=torch.float32, **kwargs):
        kwargs.pop("allow_is_causal_skip", None)
        mask = sdpa_mask(*args, allow_is_causal_skip=False, **kwargs)
        return torch.where(mask, torch.tensor(0.0, dtype=dtype), torch.finfo(dtype).min)

    registry = mu.ALL_MASK_ATTENTION_FUNCTIONS
    saved = {name: registry[name] for name in ("sdpa", "eager")}
    registry.register("sdpa", sdpa_mask)
    registry.register("eager", eager_mask)
    try:
        yield
    finally:
        for name, function in saved.items():
            registry.register(name, function)


def trained_like(model):
    """Perturb every parameter, as training would: transformers initialises biases to 0 and LayerNorm scales to 1,
    and the exporters then store equal tensors once, shared by every layer, which trained models never have."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model.eval()


def tiny_bert():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCABULARY, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=2 * HIDDEN, max_position_embeddings=64,
                        num_labels=LABELS)
    return trained_like(BertForSequenceClassification(config))


def tiny_gpt2():
    """GPT-2 whose LM head is tied to the token embedding (one stored matrix, read by Gather and MatMul)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(vocab_size=VOCABULARY, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64,
                        bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    model = trained_like(GPT2LMHeadModel(config))
    assert model.lm_head.weight is model.transformer.wte.weight
    return model


def tiny_vit():
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(2)
    config = ViTConfig(image_size=IMAGE, patch_size=PATCH, num_channels=3, hidden_size=HIDDEN,
                       num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=2 * HIDDEN,
                       num_labels=CLASSES)
    return trained_like(ViTForImageClassification(config))


def _wrappers():
    """torch modules that give the exporters plain tensors in and out (the models return ModelOutputs)."""
    import torch

    class Bert(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              return_dict=False)[0]

    class Gpt2(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                              return_dict=False)[0]

    class Gpt2WithPast(torch.nn.Module):
        """(input_ids, attention_mask, key 0, value 0, key 1, ...) -> (logits, present key 0, value 0, ...)."""

        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *past):
            from transformers import DynamicCache

            cache = DynamicCache.from_legacy_cache(tuple(zip(past[0::2], past[1::2])))
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                             use_cache=True)
            present = [t for pair in out.past_key_values.to_legacy_cache() for t in pair]
            return (out.logits, *present)

    class Vit(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values, return_dict=False)[0]

    return Bert, Gpt2, Gpt2WithPast, Vit


def _torch_feeds(feeds: dict[str, np.ndarray], names: list[str]) -> tuple:
    import torch

    return tuple(torch.from_numpy(feeds[n]) for n in names)


TOKEN_AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
              "token_type_ids": {0: "batch", 1: "sequence"}}


def export_bert(folder: pathlib.Path, *, dynamo: bool) -> pathlib.Path:
    bert, _, _, _ = _wrappers()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    args = _torch_feeds(token_feeds(2, np.random.default_rng(0)), names)
    return torch_export(bert(tiny_bert()), args, folder / "model.onnx", inputs=names, outputs=["logits"],
                        axes=TOKEN_AXES, dynamo=dynamo)


def export_gpt2(folder: pathlib.Path, *, dynamo: bool) -> pathlib.Path:
    _, gpt2, _, _ = _wrappers()
    names = ["input_ids", "attention_mask"]
    args = _torch_feeds(token_feeds(2, np.random.default_rng(0)), names)
    return torch_export(gpt2(tiny_gpt2()), args, folder / "model.onnx", inputs=names, outputs=["logits"],
                        axes={n: TOKEN_AXES[n] for n in names}, dynamo=dynamo)


def export_gpt2_past(folder: pathlib.Path, *, dynamo: bool) -> pathlib.Path:
    """Inputs and outputs laid out as optimum lays out decoders with past (without position_ids)."""
    _, _, with_past, _ = _wrappers()
    names = ["input_ids", "attention_mask", *past_names()]
    args = _torch_feeds(past_feeds(2, np.random.default_rng(0), new=2), names)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
            **{n: {0: "batch", 2: "past"} for n in past_names()}}
    return torch_export(with_past(tiny_gpt2()), args, folder / "model.onnx", inputs=names,
                        outputs=["logits", *present_names()], axes=axes, dynamo=dynamo, nested=True)


def export_vit(folder: pathlib.Path, *, dynamo: bool) -> pathlib.Path:
    _, _, _, vit = _wrappers()
    args = _torch_feeds(pixel_feeds(2, np.random.default_rng(0)), ["pixel_values"])
    return torch_export(vit(tiny_vit()), args, folder / "model.onnx", inputs=["pixel_values"], outputs=["logits"],
                        axes={"pixel_values": {0: "batch"}}, dynamo=dynamo)


def build_bert_torchscript(folder: pathlib.Path) -> pathlib.Path:
    return export_bert(folder, dynamo=False)


def build_bert_dynamo(folder: pathlib.Path) -> pathlib.Path:
    return export_bert(folder, dynamo=True)


def build_gpt2_torchscript(folder: pathlib.Path) -> pathlib.Path:
    return export_gpt2(folder, dynamo=False)


def build_gpt2_dynamo(folder: pathlib.Path) -> pathlib.Path:
    return export_gpt2(folder, dynamo=True)


def build_gpt2_past_torchscript(folder: pathlib.Path) -> pathlib.Path:
    return export_gpt2_past(folder, dynamo=False)


def build_gpt2_past_dynamo(folder: pathlib.Path) -> pathlib.Path:
    return export_gpt2_past(folder, dynamo=True)


def build_vit_torchscript(folder: pathlib.Path) -> pathlib.Path:
    return export_vit(folder, dynamo=False)


def build_vit_dynamo(folder: pathlib.Path) -> pathlib.Path:
    return export_vit(folder, dynamo=True)


# --- optimum -----------------------------------------------------------------------------------


def optimum_export(model, task: str, folder: pathlib.Path) -> pathlib.Path:
    """save_pretrained into ``folder/pretrained``, then optimum's main_export from that local folder."""
    from optimum.exporters.onnx import main_export

    source, output = folder / "pretrained", folder / "onnx"
    model.save_pretrained(source)
    with quiet_exporters():
        main_export(str(source), output=output, task=task, device="cpu", library_name="transformers",
                    do_validation=False)
    return cap_ir_version(output / "model.onnx")


def build_bert_optimum(folder: pathlib.Path) -> pathlib.Path:
    return optimum_export(tiny_bert(), "text-classification", folder)


def build_gpt2_optimum(folder: pathlib.Path) -> pathlib.Path:
    return optimum_export(tiny_gpt2(), "text-generation", folder)


def build_gpt2_past_optimum(folder: pathlib.Path) -> pathlib.Path:
    return optimum_export(tiny_gpt2(), "text-generation-with-past", folder)


def build_vit_optimum(folder: pathlib.Path) -> pathlib.Path:
    return optimum_export(tiny_vit(), "image-classification", folder)


# --- skl2onnx ----------------------------------------------------------------------------------


def sklearn_data() -> tuple[np.ndarray, np.ndarray]:
    """60 samples of 4 features in 3 classes."""
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    features = rng.standard_normal((60, 4)).astype(np.float32) + labels[:, None].astype(np.float32)
    return features, labels


def sklearn_export(estimator, folder: pathlib.Path) -> pathlib.Path:
    """Fit on the tiny data set and convert with skl2onnx's defaults (ZipMap output included)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)  # the MLP, on 60 samples
        estimator.fit(*sklearn_data())
    proto = convert_sklearn(estimator, initial_types=[("input", FloatTensorType([None, 4]))])
    return save(proto, folder / "model.onnx")


def build_sklearn_mlp(folder: pathlib.Path) -> pathlib.Path:
    from sklearn.neural_network import MLPClassifier

    return sklearn_export(MLPClassifier(hidden_layer_sizes=(16,), max_iter=200, random_state=0), folder)


def build_sklearn_logistic(folder: pathlib.Path) -> pathlib.Path:
    from sklearn.linear_model import LogisticRegression

    return sklearn_export(LogisticRegression(max_iter=200), folder)


# --- a small CNN, quantised by onnxruntime and converted to float16 by onnxconverter-common -----


def small_cnn():
    """Conv-ReLU-pool twice, then a MatMul+Add layer (x @ W + b) and a Linear (Gemm): 3x16x16 -> 10."""
    import torch

    class Cnn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.w = torch.nn.Parameter(torch.randn(8 * 4 * 4, 16) * 0.1)
            self.b = torch.nn.Parameter(torch.randn(16) * 0.1)
            self.head = torch.nn.Linear(16, CLASSES)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = torch.relu(torch.matmul(x.flatten(1), self.w) + self.b)
            return self.head(x)

    torch.manual_seed(3)
    return Cnn().eval()


def build_cnn_torchscript(folder: pathlib.Path) -> pathlib.Path:
    args = _torch_feeds(cnn_feeds(2, np.random.default_rng(0)), ["input"])
    return torch_export(small_cnn(), args, folder / "model.onnx", inputs=["input"], outputs=["logits"],
                        axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


def build_cnn_qoperator_int8(folder: pathlib.Path) -> pathlib.Path:
    """quantize_static in the QOperator format: QLinearConv, QLinearMatMul, QLinearAdd, QGemm."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class RandomImages(CalibrationDataReader):
        """Four batches of two random images."""

        def __init__(self) -> None:
            self.batches = iter([cnn_feeds(2, np.random.default_rng(10 + i)) for i in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    source = build_cnn_torchscript(folder / "float")
    path = folder / "model.onnx"
    quantize_static(str(source), str(path), RandomImages(), quant_format=QuantFormat.QOperator)
    return cap_ir_version(path)


def build_bert_dynamic_int8(folder: pathlib.Path) -> pathlib.Path:
    """quantize_dynamic on the TorchScript BERT: MatMulInteger with DynamicQuantizeLinear on the activations."""
    from onnxruntime.quantization import quantize_dynamic

    source = build_bert_torchscript(folder / "float")
    path = folder / "model.onnx"
    quantize_dynamic(str(source), str(path))
    return cap_ir_version(path)


def build_cnn_float16(folder: pathlib.Path) -> pathlib.Path:
    """onnxconverter-common's convert_float_to_float16 with its defaults: float16 weights, inputs and outputs.

    (On the TorchScript BERT it writes a model ONNX Runtime refuses, a Cast whose output type no longer
    matches its value_info, and warns that -3.4e38 is truncated to -10000, so the CNN is converted.)
    """
    from onnxconverter_common.float16 import convert_float_to_float16

    source = build_cnn_torchscript(folder / "float")
    return save(convert_float_to_float16(onnx.load(str(source))), folder / "model.onnx")


# --- hand-made forms of older exporters and the model zoo's classic CNNs -----------------------


def _random(shape: tuple[int, ...], seed: int, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(dtype)


def _graph_model(nodes, inputs, outputs, initializers, *, opset: int, ir_version: int | None = None,
                 name: str = "graph") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxflip-tests")
    if ir_version is not None:
        proto.ir_version = ir_version
    onnx.checker.check_model(proto)
    return proto


def _image_input(name: str = "x") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3, 8, 8])


def _logits(classes: int = CLASSES) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])


def build_ir3_cnn(folder: pathlib.Path) -> pathlib.Path:
    """IR version 3, opset 8: Conv-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm, every initializer also
    a graph input (as IR 3 requires; the model zoo's oldest CNNs look like this)."""
    weights = {"conv1_w": _random((8, 3, 3, 3), 0), "conv1_b": _random((8,), 1),
               "conv2_w": _random((8, 8, 3, 3), 2), "conv2_b": _random((8,), 3),
               "fc_w": _random((CLASSES, 8), 4), "fc_b": _random((CLASSES,), 5)}
    nodes = [
        helper.make_node("Conv", ["x", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p2"]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    initializers = [numpy_helper.from_array(a, n) for n, a in weights.items()]
    inputs = [_image_input()] + [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape)
                                 for n, a in weights.items()]
    proto = _graph_model(nodes, inputs, [_logits()], initializers, opset=8, ir_version=3)
    path = folder / "model.onnx"
    onnx.save(proto, str(path))  # IR 3 on purpose
    return path


def build_constant_weights(folder: pathlib.Path) -> pathlib.Path:
    """Weights made by Constant nodes (value attribute) instead of initializers, and a zero Conv bias made by
    ConstantOfShape, as some exporters and converters write them."""

    def const(name: str, array: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))

    nodes = [
        const("conv1_w", _random((8, 3, 3, 3), 10)),
        const("bias_shape", np.array([8], dtype=np.int64)),
        helper.make_node("ConstantOfShape", ["bias_shape"], ["conv1_b"],
                         value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Conv", ["x", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"]),
        helper.make_node("Flatten", ["p1"], ["f"]),
        const("fc_w", _random((CLASSES, 8), 11)),
        const("fc_b", _random((CLASSES,), 12)),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    return save(_graph_model(nodes, [_image_input()], [_logits()], [], opset=13), folder / "model.onnx")


def build_matmul_transpose(folder: pathlib.Path) -> pathlib.Path:
    """Linear layers without bias as MatMul(x, Transpose(W)) with W stored (out, in), as torch's older exporters
    wrote them, then a Gemm head."""
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Transpose", ["fc1_w"], ["fc1_wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["f", "fc1_wt"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "fc2_w", "fc2_b"], ["logits"], transB=1),
    ]
    weights = {"conv_w": _random((4, 3, 3, 3), 20), "conv_b": _random((4,), 21), "fc1_w": _random((16, 64), 22),
               "fc2_w": _random((CLASSES, 16), 23), "fc2_b": _random((CLASSES,), 24)}
    initializers = [numpy_helper.from_array(a, n) for n, a in weights.items()]
    return save(_graph_model(nodes, [_image_input()], [_logits()], initializers, opset=13), folder / "model.onnx")


def build_indirect_weights(folder: pathlib.Path) -> pathlib.Path:
    """Weights that reach their layer through another node: Identity (conv1), Reshape of a flat vector (conv2),
    Cast of a float16 initializer to float (conv3), Squeeze of a (1, out, in) tensor (the Gemm head); and one
    zero bias behind Identity read by two Convs."""
    nodes = [
        helper.make_node("Identity", ["conv1_w"], ["conv1_w_id"]),
        helper.make_node("Identity", ["zero_b"], ["zero_b_id"]),
        helper.make_node("Conv", ["x", "conv1_w_id", "zero_b_id"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Reshape", ["conv2_flat", "conv2_shape"], ["conv2_w"]),
        helper.make_node("Conv", ["r1", "conv2_w", "zero_b_id"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Cast", ["conv3_w16"], ["conv3_w"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["r2", "conv3_w", "conv3_b"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Squeeze", ["fc_w3", "squeeze_axes"], ["fc_w"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    weights = {
        "conv1_w": _random((8, 3, 3, 3), 30), "zero_b": np.zeros(8, np.float32),
        "conv2_flat": _random((8 * 8 * 3 * 3,), 31), "conv2_shape": np.array([8, 8, 3, 3], dtype=np.int64),
        "conv3_w16": _random((8, 8, 3, 3), 32, np.float16), "conv3_b": _random((8,), 33),
        "fc_w3": _random((1, CLASSES, 8), 34), "squeeze_axes": np.array([0], dtype=np.int64),
        "fc_b": _random((CLASSES,), 35),
    }
    initializers = [numpy_helper.from_array(a, n) for n, a in weights.items()]
    return save(_graph_model(nodes, [_image_input()], [_logits()], initializers, opset=13), folder / "model.onnx")


def build_scripted_loop(folder: pathlib.Path) -> pathlib.Path:
    """torch.jit.script of a module that applies a Linear+Tanh ``steps`` times (a tensor input), exported with
    dynamo=False: a Loop whose body's Gemm reads the outer graph's weight and bias."""
    import torch

    class Repeat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = torch.nn.Linear(8, 8)
            self.head = torch.nn.Linear(8, LABELS)

        def forward(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
            h = x
            for _ in range(int(steps.item())):
                h = torch.tanh(self.step(h))
            return self.head(h)

    torch.manual_seed(4)
    with quiet_exporters():
        scripted = torch.jit.script(Repeat().eval())
    args = _torch_feeds(loop_feeds(2, np.random.default_rng(0)), ["x", "steps"])
    path = torch_export(scripted, args, folder / "model.onnx", inputs=["x", "steps"], outputs=["logits"],
                        axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    assert any(node.op_type == "Loop" for node in onnx.load(str(path)).graph.node)
    return path


# --- the registry ------------------------------------------------------------------------------

_TS, _DYNAMO = "torch.onnx.export(dynamo=False)", "torch.onnx.export(dynamo=True)"
_OPT = "optimum.exporters.onnx.main_export"

RECIPES: dict[str, Recipe] = {
    "bert_torchscript": Recipe(build_bert_torchscript, "logits", "tokens", token_feeds, _TS, TRANSFORMERS),
    "bert_dynamo": Recipe(build_bert_dynamo, "logits", "tokens", token_feeds, _DYNAMO, TRANSFORMERS),
    "bert_optimum": Recipe(build_bert_optimum, "logits", "tokens", token_feeds, _OPT, OPTIMUM),
    "gpt2_torchscript": Recipe(build_gpt2_torchscript, "logits", "tokens", token_feeds, _TS, TRANSFORMERS),
    "gpt2_dynamo": Recipe(build_gpt2_dynamo, "logits", "tokens", token_feeds, _DYNAMO, TRANSFORMERS),
    "gpt2_optimum": Recipe(build_gpt2_optimum, "logits", "tokens", token_feeds, _OPT, OPTIMUM),
    "gpt2_past_torchscript": Recipe(build_gpt2_past_torchscript, "logits", "tokens+past", past_feeds, _TS,
                                    TRANSFORMERS),
    "gpt2_past_dynamo": Recipe(build_gpt2_past_dynamo, "logits", "tokens+past", past_feeds, _DYNAMO, TRANSFORMERS),
    "gpt2_past_optimum": Recipe(build_gpt2_past_optimum, "logits", "tokens+past", past_feeds, _OPT, OPTIMUM),
    "vit_torchscript": Recipe(build_vit_torchscript, "logits", "image", pixel_feeds, _TS, TRANSFORMERS),
    "vit_dynamo": Recipe(build_vit_dynamo, "logits", "image", pixel_feeds, _DYNAMO, TRANSFORMERS),
    "vit_optimum": Recipe(build_vit_optimum, "logits", "image", pixel_feeds, _OPT, OPTIMUM),
    "sklearn_mlp": Recipe(build_sklearn_mlp, "output_probability", "features", feature_feeds, "skl2onnx",
                          ("sklearn", "skl2onnx")),
    "sklearn_logistic": Recipe(build_sklearn_logistic, "output_probability", "features", feature_feeds, "skl2onnx",
                               ("sklearn", "skl2onnx")),
    "cnn_torchscript": Recipe(build_cnn_torchscript, "logits", "image", cnn_feeds, _TS, TORCH),
    "cnn_qoperator_int8": Recipe(build_cnn_qoperator_int8, "logits", "image", cnn_feeds,
                                 "onnxruntime.quantization.quantize_static(QOperator)", TORCH, quantised=True),
    "bert_dynamic_int8": Recipe(build_bert_dynamic_int8, "logits", "tokens", token_feeds,
                                "onnxruntime.quantization.quantize_dynamic", TRANSFORMERS, quantised=True),
    "cnn_float16": Recipe(build_cnn_float16, "logits", "image", cnn16_feeds,
                          "onnxconverter_common.float16.convert_float_to_float16", (*TORCH, "onnxconverter_common"),
                          float16=True),
    "ir3_cnn": Recipe(build_ir3_cnn, "logits", "image", small_image_feeds, "onnx.helper (IR 3, opset 8)"),
    "constant_weights": Recipe(build_constant_weights, "logits", "image", small_image_feeds, "onnx.helper"),
    "matmul_transpose": Recipe(build_matmul_transpose, "logits", "image", small_image_feeds, "onnx.helper"),
    "indirect_weights": Recipe(build_indirect_weights, "logits", "image", small_image_feeds, "onnx.helper"),
    "scripted_loop": Recipe(build_scripted_loop, "logits", "features+steps", loop_feeds,
                            "torch.jit.script + torch.onnx.export(dynamo=False)", TORCH),
}
