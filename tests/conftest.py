"""Shared helpers: FlipBits sessions over one node, and bit counting."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxflip.bits import field_mask
from onnxflip.modelio import save_model
from onnxflip.runtime.contract import ELEMENT_TYPES, element_type
from onnxflip.runtime.flip import flipbits_node_model, run_flipbits_session
from onnxflip.runtime.session import make_session, session_options

TYPE_NAMES = [t.name for t in ELEMENT_TYPES]  # every element type the library's contract lists


def raw(array: np.ndarray) -> np.ndarray:
    """The array's bits as unsigned integers of the same width."""
    return np.ascontiguousarray(array).view(np.dtype(f"u{array.dtype.itemsize}"))


def popcount(bits: np.ndarray) -> int:
    return int(np.bitwise_count(bits).sum())


def random_array(type_name: str, size: int, seed: int = 0) -> np.ndarray:
    """Random bit patterns of a type (NaNs and infinities included for floats)."""
    etype = element_type(type_name)
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << etype.width, size=size, dtype=np.uint64)
    return bits.astype(f"u{etype.width // 8}").view(etype.dtype)


class FlipBitsNode:
    """A one-node FlipBits session whose probabilities and seed are inputs."""

    def __init__(self, type_name: str, *, bits="all", stream=0, randomness="fixed", nonfinite="keep", threads=None):
        etype = element_type(type_name)
        model = flipbits_node_model(
            etype, mask=field_mask(etype, bits), stream=stream, randomness=randomness, nonfinite=nonfinite
        )
        self.mask = field_mask(etype, bits)
        self.session = make_session(model, threads=threads)

    def __call__(self, x: np.ndarray, *, p01: float = 0.0, p10: float = 0.0, seed: int = 0) -> np.ndarray:
        return run_flipbits_session(self.session, x, p01=p01, p10=p10, seed=seed)


@pytest.fixture(params=TYPE_NAMES)
def type_name(request) -> str:
    return request.param


# --- models -------------------------------------------------------------------------------------


def model_from_text(text: str, initializers: list) -> onnx.ModelProto:
    """A model from ONNX text, its declared initializers filled with the given tensors."""
    proto = onnx.parser.parse_model(text)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(initializers)
    return proto


def run_model(model, feeds: dict, *, exact: bool = False) -> list[np.ndarray]:
    """Run an ir.Model, a proto or a path on the CPU.

    ``exact`` runs without the optimisations that only apply to constant
    weights (graph level basic, no prepacking), so that a model whose weights
    pass through FlipBits computes in the same order as the original.
    """
    options = session_options()
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.add_session_config_entry("session.disable_prepacking", "1")
    return make_session(model, options=options).run(None, feeds)


def file_digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def needs_zoo_extra() -> None:
    """Skip the calling test (or module) where the zoo extra, torch and its ONNX exporter, is not installed."""
    from onnxflip.zoo import EXTRA_MODULES

    for module in EXTRA_MODULES:
        pytest.importorskip(module, reason="needs the zoo extra: pip install 'onnxflip[zoo]'")


def tiny_network(name: str, *, width: float, seed: int = 0):
    """A randomly initialised zoo network with non-trivial BatchNorm statistics, in eval mode."""
    needs_zoo_extra()
    import torch

    from onnxflip.zoo import build_model

    torch.manual_seed(seed)
    model = build_model(name, width=width)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def tiny_vgg(seed: int = 0):
    """A randomly initialised VGG-11 at width 1/8 with non-trivial BatchNorm statistics."""
    return tiny_network("vgg11", width=0.125, seed=seed)


def assert_export_matches(model, path, batches: tuple[int, ...]) -> None:
    """The exported model at ``path`` computes what the torch ``model`` does, for random inputs of each batch
    size (within 1e-4)."""
    import torch

    for batch in batches:
        x = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (got,) = run_model(path, {"input": x})
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="session")
def vgg_path(tmp_path_factory) -> pathlib.Path:
    needs_zoo_extra()
    from onnxflip.zoo.export import export_onnx

    path = tmp_path_factory.mktemp("models") / "vgg.onnx"
    export_onnx(tiny_vgg(), path)
    return path


@pytest.fixture(scope="session")
def qdq_path(vgg_path, tmp_path_factory) -> pathlib.Path:
    from onnxflip.quantize import quantize_model

    path = tmp_path_factory.mktemp("models") / "vgg_int8.onnx"
    calibration = np.random.default_rng(0).random((32, 3, 32, 32), dtype=np.float32)
    quantize_model(vgg_path, path, calibration=calibration)
    return path


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)


# --- synthetic CIFAR-like data and a classifier that solves it ---------------------------------


def class_templates(seed: int = 0) -> np.ndarray:
    """Ten random 32x32 RGB templates, one per class, uint8 (10, 32, 32, 3)."""
    return np.random.default_rng(seed).integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)


def synthetic_split(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images near their class template: (N, 32, 32, 3) uint8 and labels, classes interleaved."""
    rng = np.random.default_rng(seed)
    templates = class_templates().astype(np.float32)
    labels = np.tile(np.arange(10), per_class)
    noise = rng.integers(0, 256, size=(len(labels), 32, 32, 3)).astype(np.float32)
    images = np.clip(0.6 * templates[labels] + 0.4 * noise, 0, 255).astype(np.uint8)
    return images, labels


def write_image_folder(root: pathlib.Path, splits: dict[str, int]) -> pathlib.Path:
    from PIL import Image

    from onnxflip.data import CLASSES

    for split, per_class in splits.items():
        images, labels = synthetic_split(per_class, seed=len(split))
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def write_pickle_folder(root: pathlib.Path, splits: dict[str, int]) -> pathlib.Path:
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for split, per_class in splits.items():
        images, labels = synthetic_split(per_class, seed=len(split))
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        for part, name in zip(np.array_split(np.arange(len(labels)), len(names)), names):
            data = images[part].transpose(0, 3, 1, 2).reshape(len(part), -1)
            with open(folder / name, "wb") as f:
                pickle.dump({b"data": data, b"labels": labels[part].tolist()}, f)
    return root


def template_classifier() -> ir.Model:
    """x -> Relu(Gemm(x, templates)) -> Gemm(., I): a two-layer nearest-template classifier of 10 logits."""
    t = class_templates().astype(np.float32).transpose(0, 3, 1, 2).reshape(10, -1) / 255.0
    centred = t - t.mean(axis=0)
    bias = -(centred * t).sum(axis=1) + (centred * t).sum(axis=1).max() + 1.0
    text = """
    <ir_version: 10, opset_import: ["" : 21]>
    templates (float[N,3,32,32] input) => (float[N,10] logits) <float[10,3072] T, float[10] b, float[10,10] I, float[10] z> {
      flat = Flatten (input)
      scores = Gemm <transB = 1> (flat, T, b)
      hidden = Relu (scores)
      logits = Gemm (hidden, I, z)
    }
    """
    return ir.serde.deserialize_model(model_from_text(text, [
        onnx.numpy_helper.from_array(centred.astype(np.float32), "T"),
        onnx.numpy_helper.from_array(bias.astype(np.float32), "b"),
        onnx.numpy_helper.from_array(np.eye(10, dtype=np.float32), "I"),
        onnx.numpy_helper.from_array(np.zeros(10, np.float32), "z"),
    ]))


def four_logit_model() -> onnx.ModelProto:
    """A classifier of 4 classes (not CIFAR-10's 10), as an ONNX proto."""
    return model_from_text("""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[N,3,32,32] input) => (float[N,4] y) <float[4,3072] W> {
      f = Flatten (input)
      y = Gemm <transB = 1> (f, W)
    }""", [onnx.numpy_helper.from_array(np.ones((4, 3072), np.float32), "W")])


def write_zoo_models(folder: pathlib.Path, data: pathlib.Path, names: tuple[str, ...]) -> pathlib.Path:
    """A models folder as `reproduce` reads it: <name>.onnx (the template classifier) and <name>_int8.onnx,
    quantised on the data's training split."""
    from onnxflip.data import load_split
    from onnxflip.quantize import quantize_model

    folder.mkdir()
    calibration = load_split(data, "train").as_float_nchw()
    for name in names:
        save_model(template_classifier(), folder / f"{name}.onnx")
        quantize_model(folder / f"{name}.onnx", folder / f"{name}_int8.onnx", calibration=calibration)
    return folder


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> pathlib.Path:
    return write_image_folder(tmp_path_factory.mktemp("cifar"), {"train": 20, "test": 30})


@pytest.fixture(scope="session")
def classifier_path(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("models") / "templates.onnx"
    save_model(template_classifier(), path)
    return path


# --- torchvision architectures and a token model with random weights (nothing downloaded) ------


def export_torch(module, example: tuple, path: pathlib.Path, *, inputs: list[str], output: str = "logits") -> pathlib.Path:
    """Export a torch module with a dynamic batch axis, as the zoo exports its models."""
    needs_zoo_extra()
    import torch

    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(module.eval(), example, input_names=inputs, output_names=[output],
                                dynamic_shapes=tuple({0: batch} for _ in example), dynamo=True, optimize=True,
                                verbose=False)
    save_model(program.model_proto, path)
    return path


@pytest.fixture(scope="session")
def resnet18_path(tmp_path_factory) -> pathlib.Path:
    """torchvision's ResNet-18, random weights: (batch, 3, 224, 224) -> 1000 logits."""
    needs_zoo_extra()
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "resnet18.onnx"
    return export_torch(torchvision.models.resnet18(weights=None), (torch.rand(2, 3, 224, 224),), path,
                        inputs=["input"])


@pytest.fixture(scope="session")
def squeezenet4_path(tmp_path_factory) -> pathlib.Path:
    """torchvision's SqueezeNet 1.1 with 4 classes, random weights, taking NHWC images of 96x96."""
    needs_zoo_extra()
    import torch
    import torchvision

    class Nhwc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torchvision.models.squeezenet1_1(weights=None, num_classes=4)

        def forward(self, x):
            return self.net(x.permute(0, 3, 1, 2))

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("models") / "squeezenet4.onnx"
    return export_torch(Nhwc(), (torch.rand(2, 96, 96, 3),), path, inputs=["image"])


class TokenClassifier:
    """Embedding -> mean over the tokens the attention mask keeps -> Linear: int64 ids and mask, 3 classes."""

    vocabulary, length, classes = 50, 12, 3

    @classmethod
    def module(cls):
        import torch

        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = torch.nn.Embedding(cls.vocabulary, 16)
                self.head = torch.nn.Linear(16, cls.classes)

            def forward(self, input_ids, attention_mask):
                keep = attention_mask.unsqueeze(-1).to(torch.float32)
                pooled = (self.embed(input_ids) * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
                return self.head(pooled)

        torch.manual_seed(2)
        return Module()

    @classmethod
    def arrays(cls, count: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, cls.vocabulary, size=(count, cls.length), dtype=np.int64)
        lengths = rng.integers(1, cls.length + 1, size=count)
        mask = (np.arange(cls.length)[None, :] < lengths[:, None]).astype(np.int64)
        labels = rng.integers(0, cls.classes, size=count, dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture(scope="session")
def token_model_path(tmp_path_factory) -> pathlib.Path:
    needs_zoo_extra()
    import torch

    example = {k: torch.from_numpy(v) for k, v in TokenClassifier.arrays(2).items() if k != "labels"}
    path = tmp_path_factory.mktemp("models") / "tokens.onnx"
    return export_torch(TokenClassifier.module(), (example["input_ids"], example["attention_mask"]), path,
                        inputs=["input_ids", "attention_mask"])


@pytest.fixture(scope="session")
def token_npz(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("data") / "tokens.npz"
    np.savez(path, **TokenClassifier.arrays(40))
    return path


CIFAR10_SHARED = pathlib.Path("/work/shared/cifar10/test")


def write_photo_folder(root: pathlib.Path, *, classes: int, per_class: int) -> pathlib.Path:
    """An ImageFolder tree of JPEGs of different sizes (and one PNG in grey): CIFAR-10 test images enlarged when
    the shared copy is present, else random pictures."""
    from PIL import Image

    rng = np.random.default_rng(3)
    sizes = [(64, 48), (80, 80), (50, 70), (96, 64)]
    names = sorted(p.name for p in CIFAR10_SHARED.iterdir())[:classes] if CIFAR10_SHARED.is_dir() else []
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            if names:
                image = Image.open(CIFAR10_SHARED / names[c] / f"{i:04d}.jpg").convert("RGB")
            else:
                image = Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
            image = image.resize(sizes[(c + i) % len(sizes)], Image.Resampling.BICUBIC)
            if (c, i) == (0, 1):
                image.convert("L").save(folder / f"{i:03d}.png")
            else:
                image.save(folder / f"{i:03d}.jpg", quality=90)
    return root


# --- models written by real exporters (tests/real_exports.py), built on the spot ---------------


@pytest.fixture(scope="session")
def real_exports(tmp_path_factory):
    """The corpus of real exports: ``real_exports[name]`` builds that model the first time a test asks for it."""
    from real_exports import Corpus

    return Corpus(tmp_path_factory.mktemp("real_exports"))


UNLOADABLE = """<ir_version: 10, opset_import: ["" : 21]>
g (double[N,4] x) => (double[N,3] y) <double[4,3] W> {
  h = MatMul (x, W)
  a = Acosh (h)
  y = Relu (a)
}"""


def write_unloadable_model(path: pathlib.Path) -> pathlib.Path:
    """A model onnx.checker accepts and ONNX Runtime cannot load (it has no double Acosh kernel), input x (N, 4)."""
    proto = model_from_text(UNLOADABLE, [onnx.numpy_helper.from_array(np.ones((4, 3)), "W")])
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path
