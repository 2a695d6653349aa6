"""The ray executor on a local Ray of 2 CPUs: the files of the local executor, number for number; a worker that
dies mid-trial is replaced and its trial run again; resume across executors; one-line errors."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import venv

import pytest
from conftest import template_classifier, write_zoo_models

from onnxflip import OnnxflipError
from onnxflip.campaign.executors import RayExecutor
from onnxflip.campaign.experiment import run
from onnxflip.campaign.trials import LocalRunner, TrialSettings
from onnxflip.cli import main
from onnxflip.data.sources import open_source
from onnxflip.metrics import metric_from_spec

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'onnxflip[ray]'")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One Ray instance for the module; the executors find it started and leave it running."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def numbers(data):
    """The results without what the clock decides (seconds) and the command line that asked for them."""
    if isinstance(data, dict):
        return {k: numbers(v) for k, v in data.items() if k not in ("seconds", "wall_seconds", "wall_seconds_this_run",
                                                                    "command")}
    if isinstance(data, list):
        return [numbers(v) for v in data]
    return data


def evaluate(classifier_path, synthetic_data, out: pathlib.Path, *extra: str) -> dict:
    args = ["evaluate", str(classifier_path), "--data", str(synthetic_data), "--midpoint", "--p-range", "1e-7:1e-1",
            "--precision", "0.6", "--targets", "activations,weights", "--out", str(out), *extra]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())


def test_evaluate_on_ray_writes_the_numbers_of_the_local_executor_and_resumes_its_campaign(
        classifier_path, synthetic_data, tmp_path, capsys):
    local = evaluate(classifier_path, synthetic_data, tmp_path / "local")
    on_ray = evaluate(classifier_path, synthetic_data, tmp_path / "ray", "--executor", "ray")
    assert numbers(on_ray) == numbers(local)
    assert len(local["trials"]) > 20 and local["midpoint"]["status"] == "precision"
    assert "tasks" in capsys.readouterr().err  # the progress lines count Ray's tasks
    # A campaign the local executor began (its first 12 trials written) ends on Ray with the same numbers.
    begun = tmp_path / "begun"
    begun.mkdir()
    kept = {k: v for k, v in local.items() if k not in ("midpoint", "fit", "curve", "design", "rows", "trials")}
    (begun / "results.json").write_text(json.dumps({**kept, "rows": [], "trials": local["trials"][:12]}))
    resumed = evaluate(classifier_path, synthetic_data, begun, "--executor", "ray", "--resume")
    assert numbers(resumed) == numbers(local)


def test_a_two_model_two_format_grid_on_ray_equals_the_local_one(synthetic_data, tmp_path, capsys):
    models = write_zoo_models(tmp_path / "models", synthetic_data, ("vgg11", "vgg13"))
    args = ["reproduce", "--models", "vgg11,vgg13", "--models-dir", str(models), "--formats", "float32,int8",
            "--p-range", "1e-8:0.3", "--precision", "1", "--budget", "40", "--no-extras", "--target-sets", "none", "--bits", "all",
            "--data", str(synthetic_data)]
    reports, errs = {}, {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        code = main([*args, "--out", str(out), "--executor", executor])
        errs[executor] = capsys.readouterr().err
        assert code == 0, errs[executor]
        reports[executor] = json.loads((out / "report.json").read_text())
    assert "onnxflip: tasks " in errs["ray"] and "onnxflip: tasks " not in errs["local"]
    assert len(reports["ray"]["cells"]) == 4
    assert numbers(reports["ray"]) == numbers(reports["local"])
    for cell in reports["local"]["cells"]:
        local, on_ray = (json.loads((tmp_path / e / cell["folder"] / "results.json").read_text()) for e in ("local", "ray"))
        assert numbers(on_ray) == numbers(local)


DIES_ONCE = '''
import os
import pathlib

import numpy as np

MARKER = pathlib.Path({marker!r})


def top1(outputs, clean, labels):
    """Top-1 accuracy; the first process to call it dies at once (and leaves the marker behind): creating the
    marker is atomic, so two workers that call it at once never both die."""
    try:
        os.close(os.open(MARKER, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return (outputs.argmax(axis=1) == labels).astype(np.float64)
    os._exit(1)


top1.needs_labels = True
'''


def test_a_worker_that_dies_mid_trial_is_replaced_and_the_trial_run_again(synthetic_data, tmp_path):
    marker = tmp_path / "died"
    plugin = tmp_path / "dies_once.py"
    plugin.write_text(DIES_ONCE.format(marker=str(marker)))
    marker.touch()  # the local reference runs without dying
    source = open_source(synthetic_data, model=template_classifier())
    runner = LocalRunner(template_classifier(), source, metric_from_spec(f"{plugin}:top1"),
                         TrialSettings(batch_size=100, seed=3))
    expected = runner.run(3e-3, [0, 1, 2, 3, 4], len(source))
    marker.unlink()
    with RayExecutor() as executor, executor.bind(runner) as on_ray:
        outcomes = on_ray.run(3e-3, [0, 1, 2, 3, 4], len(source))
        assert executor.counts.failed == 1 and executor.counts.done == 5
    assert marker.exists()
    strip = lambda outcomes: [{k: v for k, v in o.to_json().items() if k != "seconds"} for o in outcomes]  # noqa: E731
    assert strip(outcomes) == strip(expected)


def test_an_error_in_a_trial_is_raised_here_as_it_was_raised_there(classifier_path, synthetic_data, tmp_path):
    plugin = tmp_path / "wrong.py"
    plugin.write_text("def score(outputs, clean, labels):\n    return outputs[:1, 0]\n")
    from onnxflip.campaign.experiment import Experiment

    experiment = Experiment(search=None, probabilities=(0.0, 1e-3), metric=f"{plugin}:score")
    with RayExecutor() as executor, pytest.raises(OnnxflipError, match="one score per sample"):
        run(experiment, model_path=classifier_path, data=synthetic_data, out=tmp_path / "r", executor=executor)


@pytest.mark.parametrize(("extra", "message"), [
    (["--ray-address", "127.0.0.1:9"], "no Ray cluster answers at 127.0.0.1:9"),
    (["--ray-address", "head"], "is not HOST:PORT"),
    (["--provider", "cuda"], "the Ray cluster has none"),
])
def test_bad_ray_input_is_one_line(classifier_path, synthetic_data, tmp_path, capsys, extra, message):
    code = main(["evaluate", str(classifier_path), "--data", str(synthetic_data), "--executor", "ray", *extra,
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err  # may hold what the workers of earlier tests logged late
    errors = [line for line in err.splitlines() if line.startswith("onnxflip:")]
    assert code == 1 and errors == [f"onnxflip: error: {errors[0].split('error: ', 1)[1]}"] and message in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_run_from_a_source_checkout_the_workers_import_the_installed_package(classifier_path, synthetic_data,
                                                                              tmp_path):
    """`pip install .` then `onnxflip evaluate --executor ray` in the checkout: Ray puts the working folder first on
    its workers' path, where the source tree (no compiled library) would shadow the installed package."""
    import onnxflip

    env = tmp_path / "env"  # a plain install: the package and its library in site-packages, no editable finder
    venv.EnvBuilder(with_pip=False).create(env)
    (site,) = env.glob("lib/python*/site-packages")
    for folder in onnxflip.__path__:
        shutil.copytree(folder, site / "onnxflip", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    (site / "dependencies.pth").write_text("\n".join(p for p in sys.path if p.endswith("-packages")) + "\n")
    checkout = tmp_path / "checkout"  # the working folder: the source tree, never built
    shutil.copytree(pathlib.Path(onnxflip.__file__).parent, checkout / "onnxflip",
                    ignore=shutil.ignore_patterns("__pycache__", "lib", "*.so"))
    assert not list((checkout / "onnxflip").rglob("*.so"))
    script = env / "bin" / "onnxflip-cli"  # as the console script runs: its own folder first, not the working one
    script.write_text("import sys\nfrom onnxflip.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHON"))}
    done = subprocess.run([str(env / "bin" / "python"), str(script), "evaluate", str(classifier_path), "--data",
                           str(synthetic_data), "--p", "1e-3", "--trials", "2", "--executor", "ray", "--out",
                           str(tmp_path / "r")], cwd=checkout, env=environment, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(json.loads((tmp_path / "r" / "results.json").read_text())["trials"]) == 3
