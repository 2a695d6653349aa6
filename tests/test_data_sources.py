"""Data sources: ImageFolder, .npz and CIFAR-10 against plain loops, the protocol's promises, and bad input."""

from __future__ import annotations

import json
import threading

import numpy as np
import onnx
import pytest
from conftest import (
    TokenClassifier,
    needs_zoo_extra,
    write_image_folder,
    write_photo_folder,
    write_pickle_folder,
)

from onnxflip import OnnxflipError, make_session
from onnxflip.data import (
    PREPROCESS_METADATA_KEY,
    ArraySource,
    DataSource,
    Preprocess,
    load_split,
    model_inputs,
    open_source,
)
from onnxflip.data.base import InputSpec, model_outputs
from onnxflip.data.imagefolder import PREFETCH_BATCHES, ImageSource
from onnxflip.data.sources import check_labels
from onnxflip.faults import FaultModel
from onnxflip.graph.config import InjectionConfig
from onnxflip.graph.inject import insert_flipbits
from onnxflip.metrics import Agreement, RelError, TopK
from onnxflip.modelio import load_model, save_model
from onnxflip.runtime.session import runtime_proto

IMAGENET = Preprocess.parse("imagenet")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("photos"), classes=4, per_class=3)


def run_source(session, source: DataSource, batch_size: int):
    outputs, labels = [], []
    for batch in source.batches(batch_size):
        outputs.append(session.run(None, batch.feeds)[0])
        labels.append(batch.labels)
    return np.concatenate(outputs), (np.concatenate(labels) if source.has_labels else None)


def concatenated(source: DataSource, batch_size: int) -> dict[str, np.ndarray]:
    batches = list(source.batches(batch_size))
    feeds = {k: np.concatenate([b.feeds[k] for b in batches]) for k in batches[0].feeds}
    if source.has_labels:
        feeds["labels"] = np.concatenate([b.labels for b in batches])
    return feeds


# --- preprocessing --------------------------------------------------------------------------------


def torchvision_reference(image, spec: dict) -> np.ndarray:
    """The same steps with torchvision's transforms, channel order and layout by hand: (H, W, C) or (C, H, W)."""
    needs_zoo_extra()
    import torch
    from torchvision import transforms

    steps = []
    if "resize" in spec:
        steps.append(transforms.Resize(spec["resize"], interpolation=transforms.InterpolationMode.BILINEAR))
    if "crop" in spec:
        steps.append(transforms.CenterCrop(spec["crop"]))
    x = transforms.PILToTensor()(transforms.Compose(steps)(image.convert("RGB"))).to(torch.float32)
    if spec.get("scale", True):
        x = x / 255.0
    if spec.get("channels") == "BGR":
        x = x.flip(0)
    x = transforms.Normalize(spec.get("mean", [0.0] * 3), spec.get("std", [1.0] * 3))(x)
    return (x.permute(1, 2, 0) if spec.get("layout") == "NHWC" else x).numpy()


@pytest.mark.parametrize("spec", [
    {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    {"resize": [40, 30]},
    {"resize": 50, "crop": [32, 48], "channels": "BGR", "layout": "NHWC", "scale": False,
     "mean": [104.0, 117.0, 123.0], "std": [1.0, 2.0, 3.0]},
], ids=["imagenet", "exact-size", "bgr-nhwc-0-255"])
def test_preprocessing_equals_torchvision_transforms(photos, spec):
    from PIL import Image

    path = next((photos / "class_2").iterdir())
    preprocess = Preprocess.parse(json.dumps(spec))
    with Image.open(path) as image:
        got = preprocess.array(preprocess.image(image)[None])[0]
        expected = torchvision_reference(image, spec)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)


def test_preprocess_spec_from_a_file_a_preset_and_back(tmp_path):
    path = tmp_path / "pre.json"
    path.write_text(IMAGENET.to_json())
    assert Preprocess.parse(str(path)) == IMAGENET == Preprocess.parse(IMAGENET.to_json())
    assert Preprocess.parse("cifar10").resize == (32, 32)


# --- ImageFolder: a real architecture against a plain ONNX Runtime loop ---------------------------


def test_resnet18_on_an_image_folder_equals_a_plain_onnxruntime_loop(resnet18_path, photos):
    from PIL import Image

    spec = json.loads(IMAGENET.to_json())
    session = make_session(str(resnet18_path))
    source = open_source(photos, model=load_model(resnet18_path), preprocess=IMAGENET)
    assert len(source) == 12 and source.has_labels
    outputs, labels = run_source(session, source, batch_size=5)

    reference, truth = [], []
    for label, folder in enumerate(sorted(photos.iterdir())):
        for path in sorted(folder.iterdir()):
            with Image.open(path) as image:
                x = torchvision_reference(image, spec)[None]
            reference.append(session.run(None, {"input": x})[0][0])
            truth.append(label)
    reference, truth = np.stack(reference), np.asarray(truth)
    assert outputs.shape == (12, 1000)
    np.testing.assert_array_equal(labels, truth)
    np.testing.assert_allclose(outputs, reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(TopK(1).scores(outputs, None, labels), np.argmax(reference, 1) == truth)
    top5 = np.argsort(-reference, axis=1)[:, :5]
    np.testing.assert_array_equal(TopK(5).scores(outputs, None, labels), (top5 == truth[:, None]).any(axis=1))


def test_nhwc_model_of_four_classes_reads_its_layout_from_the_input_shape(squeezenet4_path, photos):
    model = load_model(squeezenet4_path)
    source = open_source(photos, model=model)  # no spec: resized to 96x96, NHWC as the input says
    batch = next(source.batches(3))
    assert batch.feeds["image"].shape == (3, 96, 96, 3)
    outputs, labels = run_source(make_session(str(squeezenet4_path)), source, batch_size=4)
    assert outputs.shape == (12, 4) and TopK(1).floor(outputs.shape) == 0.25
    assert 0 <= TopK(1).scores(outputs, None, labels).mean() <= 1


def injected_session(path, p: float):
    """A session of the model with every activation, weight and bias exposed to flips of probability p."""
    config = InjectionConfig(activations=FaultModel.symmetric(p, randomness="per_run"),
                             weights=FaultModel.symmetric(p), biases=FaultModel.symmetric(p))
    return make_session(runtime_proto(insert_flipbits(load_model(path), config=config)).SerializeToString())


@pytest.mark.parametrize("kind", ["resnet18-imagefolder", "tokens-npz"])
def test_agreement_is_exactly_one_at_p0_and_falls_at_a_large_p(kind, resnet18_path, token_model_path, photos,
                                                              token_npz):
    path, data, preprocess = ((resnet18_path, photos, IMAGENET) if kind.startswith("resnet")
                              else (token_model_path, token_npz, None))
    source = open_source(data, model=load_model(path), preprocess=preprocess).cached(1 << 30)
    clean, _ = run_source(make_session(str(path)), source, batch_size=8)
    at_zero, _ = run_source(injected_session(path, 0.0), source, batch_size=8)
    at_large, _ = run_source(injected_session(path, 0.05), source, batch_size=8)
    assert np.all(Agreement().scores(at_zero, clean, None) == 1.0)
    # equal up to float rounding: BatchNorm folding and constant-weight kernels reorder the arithmetic
    np.testing.assert_array_equal(RelError(threshold=1e-4).scores(at_zero, clean, None), 1.0)
    assert Agreement().scores(at_large, clean, None).mean() < 0.9


# --- the protocol ---------------------------------------------------------------------------------


@pytest.fixture(params=["imagefolder", "npz", "cifar10-pickles", "cifar10-imagefolder", "unlabelled"])
def any_source(request, tmp_path, photos) -> DataSource:
    if request.param == "imagefolder":
        return open_source(photos, preprocess=Preprocess(resize=(20, 24)))
    if request.param == "npz":
        np.savez(tmp_path / "t.npz", **TokenClassifier.arrays(23))
        return open_source(tmp_path / "t.npz")
    if request.param == "cifar10-pickles":
        return open_source(write_pickle_folder(tmp_path, {"test": 3}))
    if request.param == "cifar10-imagefolder":
        return open_source(write_image_folder(tmp_path, {"test": 3}))
    (tmp_path / "flat").mkdir()
    for i, path in enumerate(sorted(photos.glob("*/*"))):
        path_copy = tmp_path / "flat" / f"{i}{path.suffix}"
        path_copy.write_bytes(path.read_bytes())
    return open_source(tmp_path / "flat", preprocess=Preprocess(resize=(16, 16)))


def test_sources_keep_the_protocol(any_source):
    source = any_source
    assert isinstance(source, DataSource)
    whole = concatenated(source, batch_size=len(source))
    assert all(len(v) == len(source) for v in whole.values())
    for batch_size in (1, 4):  # any batch size gives the same samples in the same order
        parts = concatenated(source, batch_size)
        assert parts.keys() == whole.keys()
        for key in whole:
            np.testing.assert_array_equal(parts[key], whole[key])
    cached = source.cached(1 << 30)
    assert isinstance(cached, ArraySource)
    for key, value in concatenated(cached, 3).items():
        np.testing.assert_array_equal(value, whole[key])
    assert source.cached(1) is source or isinstance(source, ArraySource)


def test_subsets_are_nested_prefixes_and_class_balanced(any_source):
    source = any_source
    small, large = concatenated(source.subset(3), 2), concatenated(source.subset(len(source) - 1), 2)
    for key in small:
        np.testing.assert_array_equal(small[key], large[key][:3])
    if source.has_labels:
        labels = concatenated(source.subset(len(source)), 7)["labels"]
        per_class = np.bincount(labels)
        for count in range(1, len(per_class) * per_class.min() + 1):  # while every class has samples left
            counts = np.bincount(labels[:count], minlength=len(per_class))
            assert counts.max() - counts.min() <= 1
    with pytest.raises(OnnxflipError, match="asked for"):
        source.subset(len(source) + 1)


def test_streaming_decodes_on_worker_threads_at_most_a_few_batches_ahead():
    lock, state = threading.Lock(), {"loaded": 0, "consumed": 0, "ahead": 0, "threads": set()}

    def load(item):
        with lock:
            state["loaded"] += 1
            state["ahead"] = max(state["ahead"], state["loaded"] - state["consumed"])
            state["threads"].add(threading.current_thread().name)
        return np.full((4, 4, 3), item % 256, np.uint8)

    spec = InputSpec("input", ("N", 3, 4, 4), np.dtype(np.float32))
    source = ImageSource(range(500), None, load=load, spec=spec, preprocess=Preprocess(layout="NCHW"), name="t",
                         workers=3)
    for batch in source.batches(10):
        threading.Event().wait(0.002)  # a slow consumer: the loader must not run away
        with lock:
            state["consumed"] += len(batch)
    assert state["consumed"] == state["loaded"] == 500
    assert state["ahead"] <= (1 + PREFETCH_BATCHES) * 10
    assert all(name.startswith("onnxflip-decode") for name in state["threads"])


# --- CIFAR-10 and the zoo's stored preprocessing ---------------------------------------------------


@pytest.mark.parametrize("writer", [write_image_folder, write_pickle_folder], ids=["imagefolder", "pickles"])
def test_cifar10_source_equals_load_split(tmp_path, writer, vgg_path):
    root = writer(tmp_path, {"train": 2, "test": 3})
    model = load_model(vgg_path)
    assert PREPROCESS_METADATA_KEY in model.metadata_props  # the zoo export stores its preprocessing
    for split in ("train", "test"):
        source = open_source(root, model=model, split=split)
        expected = load_split(root, split)
        whole = concatenated(source, 7)  # both list the images in the order load_split reads them
        np.testing.assert_array_equal(whole["labels"], expected.labels)
        np.testing.assert_array_equal(whole["input"], expected.as_float_nchw())
        # the same images as Split.subset, which keeps them in file order: equal once grouped by class
        sub, old = concatenated(source.subset(13), 4), expected.subset(13)
        by_class = np.argsort(sub["labels"], kind="stable")
        np.testing.assert_array_equal(sub["labels"][by_class], np.sort(old.labels, kind="stable"))
        np.testing.assert_array_equal(sub["input"][by_class], old.as_float_nchw()[np.argsort(old.labels, kind="stable")])


def test_the_models_preprocessing_metadata_is_used_unless_a_spec_is_given(tmp_path, vgg_path):
    root = write_pickle_folder(tmp_path, {"test": 1})
    proto = onnx.load(vgg_path)
    for entry in proto.metadata_props:
        if entry.key == PREPROCESS_METADATA_KEY:
            entry.value = json.dumps({"channels": "BGR", "mean": [0.5, 0.5, 0.5]})
    bgr_path = tmp_path / "bgr.onnx"
    save_model(proto, bgr_path)
    plain = next(open_source(root).batches(10)).feeds["input"]
    stored = next(open_source(root, model=load_model(bgr_path)).batches(10)).feeds["input"]
    np.testing.assert_allclose(stored, plain[:, ::-1] - 0.5, atol=1e-6)
    given = next(open_source(root, model=load_model(bgr_path), preprocess=Preprocess()).batches(10)).feeds["input"]
    np.testing.assert_array_equal(given, plain)


# --- npz ------------------------------------------------------------------------------------------


def test_npz_feeds_every_input_with_its_dtype(token_model_path, token_npz):
    model = load_model(token_model_path)
    assert [(s.name, s.dtype) for s in model_inputs(model)] == [("input_ids", np.int64), ("attention_mask", np.int64)]
    source = open_source(token_npz, model=model)
    arrays = TokenClassifier.arrays(40)
    got = concatenated(source, 16)
    for key in ("input_ids", "attention_mask", "labels"):
        np.testing.assert_array_equal(got[key], arrays[key])
    assert got["input_ids"].dtype == np.int64


# --- bad input: one line each ---------------------------------------------------------------------


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize(("change", "expected"), [
    (lambda a: a.pop("attention_mask"), r"no array for model input 'attention_mask' \(expected \(batch, 12\) int64\)"),
    (lambda a: a.update(attention_mask=a["attention_mask"][:, :5]),
     r"input 'attention_mask' is \(40, 5\) int64, but the model expects \(batch, 12\) int64"),
    (lambda a: a.update(input_ids=a["input_ids"].astype(np.int32)),
     r"input 'input_ids' is \(40, 12\) int32, but the model expects \(batch, 12\) int64"),
    (lambda a: a.update(labels=a["labels"][:7]), r"different numbers of samples"),
    (lambda a: a.update(labels=a["labels"].astype(np.float32)), r"labels must be integers"),
], ids=["missing", "shape", "dtype", "count", "float-labels"])
def test_npz_that_does_not_fit_the_model(tmp_path, token_model_path, change, expected):
    arrays = TokenClassifier.arrays(40)
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(OnnxflipError, match=expected) as excinfo:
        open_source(tmp_path / "bad.npz", model=load_model(token_model_path))
    one_line(excinfo)


def test_image_folders_that_cannot_serve(tmp_path, resnet18_path, token_model_path, squeezenet4_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no images here")
    five = write_photo_folder(tmp_path / "five", classes=5, per_class=1)
    (tmp_path / "splits" / "train" / "a").mkdir(parents=True)
    (tmp_path / "file.csv").write_text("1,2")
    cases = [
        (lambda: open_source(tmp_path / "empty"), "holds no images"),
        (lambda: open_source(tmp_path / "nowhere"), "does not exist"),
        (lambda: open_source(tmp_path / "file.csv"), "is not an .npz"),
        (lambda: open_source(tmp_path / "splits"), "split folder.*train but no 'test'"),
        (lambda: open_source(five, model=load_model(token_model_path)), "takes 2 .*give an .npz"),
        (lambda: check_labels(open_source(five), model_outputs(load_model(squeezenet4_path))[0], where="five"),
         "five has labels up to 4 but the model's output 'logits' has 4 classes"),
    ]
    for call, expected in cases:
        with pytest.raises(OnnxflipError, match=expected) as excinfo:
            call()
        one_line(excinfo)
    varied = open_source(five)  # images of different sizes and no size to resize to
    with pytest.raises(OnnxflipError, match="differ in size") as excinfo:
        next(varied.batches(5))
    one_line(excinfo)
    small = open_source(five, model=load_model(resnet18_path), preprocess=Preprocess(crop=224))
    with pytest.raises(OnnxflipError, match="smaller than the crop") as excinfo:
        next(small.batches(5))
    one_line(excinfo)


@pytest.mark.parametrize(("spec", "expected"), [
    ("{resize: 256}", "not valid JSON"),
    ('{"resize": 256, "size": 3}', "unknown key.*size"),
    ('{"layout": "CHW"}', "layout must be NCHW or NHWC"),
    ('{"resize": -1}', "resize must be a positive integer"),
    ('{"std": [1, 0, 1]}', "std must be positive"),
    ('{"mean": [1, 2]}', "mean must be 3 numbers"),
    ('{"channels": "RGBA"}', "channels must be RGB or BGR"),
    ('[256]', "must be a JSON object"),
    ("no-such-file.json", "not JSON, an existing .json file or a preset"),
])
def test_preprocessing_specs_that_do_not_parse(spec, expected):
    with pytest.raises(OnnxflipError, match=expected) as excinfo:
        Preprocess.parse(spec)
    one_line(excinfo)


def test_a_folder_that_is_likely_not_the_data_meant_is_warned_about(classifier_path, tmp_path, caplog):
    """A split folder read as another split, and class folders that do not match the model's classes."""
    import logging

    root = write_image_folder(tmp_path / "cifar", {"train": 2, "test": 2})
    model = load_model(classifier_path)
    output = model_outputs(model)[0]
    with caplog.at_level(logging.WARNING, logger="onnxflip"):
        check_labels(open_source(root, model=model), output, where=str(root))
        assert not caplog.records
        open_source(root / "train", model=model)
        assert "is a train split, read here as the test data" in caplog.text
        caplog.clear()
        check_labels(open_source(root / "train", model=model, split="train"), output, where=str(root))
        assert not caplog.records
        (tmp_path / "other").mkdir()
        check_labels(open_source(tmp_path, model=model), output, where=str(tmp_path))
        assert "2 class folders (cifar, other) but the model's output" in caplog.text
