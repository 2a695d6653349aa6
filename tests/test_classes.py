"""Class folders are matched to the model's classes by name: a 2-class folder given to a 10-class model."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from onnxflip.cli import main
from onnxflip.data import CLASSES
from onnxflip.data.sources import match_classes, model_class_names, open_source
from onnxflip.errors import OnnxflipError
from onnxflip.modelio import load_model


def _folder(root: pathlib.Path, names: list[str], per_class: int = 3) -> pathlib.Path:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_folders_take_the_labels_of_the_model_classes_they_are_named_after(vgg_path, tmp_path):
    model = load_model(vgg_path)
    assert model_class_names(model) == tuple(CLASSES)
    source = open_source(_folder(tmp_path / "data", ["dog", "Cat"]), model=model)
    assert sorted(set(source.labels.tolist())) == [0, 1]  # the folders' sorted order: Cat, dog
    matched = match_classes(source, model_class_names(model), where="data")
    assert matched.labels.tolist() == [CLASSES.index("cat")] * 3 + [CLASSES.index("dog")] * 3
    with pytest.raises(OnnxflipError, match="class folder 'cow' is none of the model's classes"):
        match_classes(open_source(_folder(tmp_path / "cows", ["cow", "dog"]), model=model), CLASSES, where="x")


def test_evaluate_refuses_a_folder_that_is_no_class_and_reads_class_names_from_a_file(vgg_path, tmp_path, capsys):
    data = _folder(tmp_path / "data", ["dog", "cow"])
    common = ["evaluate", vgg_path, "--data", data, "--p", "0", "--trials", "1"]
    code, _, err = _cli(capsys, *common, "--out", tmp_path / "r1")
    assert code == 1 and err.count("\n") == 1 and "'cow' is none of the model's classes" in err
    names = tmp_path / "names.txt"
    names.write_text("\n".join(["cow", *CLASSES[1:]]) + "\n")
    code, _, err = _cli(capsys, *common, "--out", tmp_path / "r2", "--classes", names)
    assert code == 0, err
    assert json.loads((tmp_path / "r2" / "results.json").read_text())["experiment"]["classes"][0] == "cow"
    code, _, err = _cli(capsys, *common, "--out", tmp_path / "r3", "--classes", "cow,dog")
    assert code == 1 and "--classes names 2 classes but the model's output" in err
