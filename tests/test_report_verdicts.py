"""report.md's verdicts on the paper's findings, for report.json files whose numbers the test chose.

Each case builds the grid cells by hand, works out in the test what the
finding must say (from the numbers it chose, not from the report code), and
reads the verdict `render_report` prints.  The numbers sit on both sides of
each threshold: int8/float32 midpoint ratios of 10^2.5 and 10^3.5, a
mantissa-only midpoint 10x the all-bits one, equal exponent and mantissa
midpoints, and a depth correlation of exactly 0.
"""

from __future__ import annotations

import math
import re

import pytest
from scipy.stats import spearmanr

from onnxflip.report.reproduction import render_report

DEPTHS = {"vgg11": 11, "vgg13": 13, "vgg16": 16, "vgg19": 19}
LAYERS = {**DEPTHS, "resnet20": 20, "mobilenetv2s": 41}  # weight layers of the networks beyond VGG
EDGE = 1e-6  # decades either side of a threshold


def cell(model: str, fmt: str, bits: str = "all", midpoint: float | None = None, *, bound: str | None = None,
         bound_p: float | None = None, targets: tuple[str, ...] = ("activations",), section: str = "grid",
         bias: str = "int32", randomness: str = "fixed") -> dict:
    """One grid cell as report.json holds it."""
    return {
        "section": section, "bias": bias, "model": model, "depth": DEPTHS.get(model), "layers": LAYERS[model],
        "randomness": randomness, "batch_size": 50 if randomness == "per_run" else 500, "format": fmt,
        "targets": list(targets),
        "bits": bits, "direction": "both", "nonfinite": "keep", "clean_accuracy": 0.9, "midpoint": midpoint,
        "low": midpoint / 2 if midpoint else None, "high": midpoint * 2 if midpoint else None, "bound": bound,
        "bound_p": bound_p, "evaluations": 9, "wall_seconds": 1.0, "folder": f"cells/{model}-{fmt}-{bits}", "rows": [],
    }


def report(cells: list[dict]) -> dict:
    return {"cells": cells, "samples": 1000, "wall_seconds": 60.0,
            "spec": {"search": {"low": 1e-9, "high": 1e-2, "precision": 0.2, "budget": {"seconds": 600, "trials": None}}}}


def verdicts(cells: list[dict], network: str = "VGG") -> dict[str, tuple[str, str]]:
    """{finding: (verdict, numbers)} of one network from the findings table of the rendered report."""
    text = render_report(report(cells))
    table = text.split("## The paper's findings", 1)[1].strip().split("\n\n", 1)[0].splitlines()
    assert table[0] == "| network | finding | measured | numbers |"
    rows = [line.strip("| ").split(" | ") for line in table[2:] if line.startswith("|")]
    keys = {"Exponent": "exponent", "Deeper": "depth", "int8": "int8", "Confining": "mantissa"}
    found = {next(k for prefix, k in keys.items() if finding.startswith(prefix)): (verdict, numbers)
             for net, finding, verdict, numbers in rows if net == network}
    assert sorted(found) == sorted(keys.values()), rows
    return found


def int8_verdict_line(verdict: str) -> str:
    """The findings table's int8 verdict where one combination of noisy values has the given verdict."""
    return f"agrees for {int(verdict == 'agrees')} of 1 combinations of noisy values"


# --- int8 raises the tolerable probability by about three orders of magnitude -------------------------------------


def expected_int8_verdict(mean_log_ratio: float) -> str:
    """The paper says 'about three orders of magnitude': agreement is a mean ratio within 10^(3 +- 0.5)."""
    if 2.5 <= mean_log_ratio <= 3.5:
        return "agrees"
    if mean_log_ratio > 3.5:
        return "int8 gains more than three orders"
    return "partly: int8 is more tolerant, by fewer orders" if mean_log_ratio > 0 else "disagrees"


@pytest.mark.parametrize("log_ratios", [
    (3.0,), (2.5 + EDGE,), (2.5 - EDGE,), (3.5 - EDGE,), (3.5 + EDGE,), (1.0,), (EDGE,), (-EDGE,), (-2.0,),
    (2.0, 3.0 + 2 * EDGE), (2.0, 3.0 - 2 * EDGE), (4.0, 2.0),
])
def test_int8_ratio_verdict_at_the_edges(log_ratios):
    float32 = 1e-6
    models = list(DEPTHS)[: len(log_ratios)]
    cells = [c for m, r in zip(models, log_ratios)
             for c in (cell(m, "float32", midpoint=float32), cell(m, "int8", midpoint=float32 * 10**r))]
    mean = sum(log_ratios) / len(log_ratios)
    verdict, numbers = verdicts(cells)["int8"]
    assert verdict == int8_verdict_line(expected_int8_verdict(mean))
    assert numbers == f"activations: 10^{mean:.2f} ({expected_int8_verdict(mean)})"
    text = render_report(report(cells))
    for m, r in zip(models, log_ratios):  # each model's ratio in the table of ratios
        assert f"| {m} | {float32 * 10**r:.3g} | {float32:.3g} | {10**r:.3g} (10^{r:.2f}) |" in text


# --- confining noise to the mantissa helps a lot (mantissa-only midpoint >= 10x all bits) -------------------------


@pytest.mark.parametrize(("gains", "agreeing"), [
    ((1.0 + EDGE,), 1), ((1.0 - EDGE,), 0), ((2.0, 0.5, 1.0 + EDGE), 2), ((-1.0, 0.0), 0),
])
def test_mantissa_gain_verdict_at_ten_times(gains, agreeing):
    everything = 1e-5
    cells = []
    for m, gain in zip(DEPTHS, gains):
        cells += [cell(m, "float32", "all", everything), cell(m, "float32", "mantissa", everything * 10**gain)]
    verdict, numbers = verdicts(cells)["mantissa"]
    assert verdict == (f"agrees in {agreeing} of {len(gains)}" if agreeing else "disagrees")
    assert numbers.count("x10^") == len(gains)


def test_a_mantissa_midpoint_beyond_the_range_counts_from_its_bound():
    # The mantissa-only search never reached the midpoint below 1e-2: the gain is at least 10^3, "or more".
    cells = [cell("vgg11", "float32", "all", 1e-5), cell("vgg11", "float32", "mantissa", bound=">", bound_p=1e-2)]
    verdict, numbers = verdicts(cells)["mantissa"]
    assert verdict == "agrees in 1 of 1" and numbers == f"vgg11 float32: x10^{math.log10(1e-2 / 1e-5):.2f} or more"


def test_int8_ratio_table_gives_a_bound_where_a_midpoint_lies_beyond_the_range():
    # vgg11's int8 search never fell halfway below 0.5: its ratio is at least 0.5 / 2e-6; vgg13 has both.
    cells = [cell("vgg11", "float32", midpoint=2e-6), cell("vgg11", "int8", bound=">", bound_p=0.5),
             cell("vgg13", "float32", midpoint=1e-6), cell("vgg13", "int8", midpoint=3e-4)]
    text = render_report(report(cells))
    table = text.split("## int8 / float32 midpoint ratio", 1)[1].split("\n\n")[1].splitlines()
    rows = [line.strip("| ").split(" | ") for line in table[2:]]
    assert rows == [["vgg11", "> 0.5", "2e-06", f"≥ {0.5 / 2e-6:.3g} (10^{math.log10(0.5 / 2e-6):.2f})"],
                    ["vgg13", "0.0003", "1e-06", f"{300:.3g} (10^{math.log10(300):.2f})"]]
    # Without int8 cells there is no ratio table, not an empty one.
    assert "int8 / float32 midpoint ratio" not in render_report(report([c for c in cells if c["format"] != "int8"]))
    # The finding's mean counts the bound as a value: the mean is a bound too, and says so.
    verdict, numbers = verdicts(cells)["int8"]
    mean = (math.log10(0.5 / 2e-6) + math.log10(300)) / 2
    assert numbers == f"activations: bound 10^{mean:.2f} ({expected_int8_verdict(mean)})"
    assert verdict == int8_verdict_line(expected_int8_verdict(mean))


# --- exponent flips do more harm than mantissa flips ---------------------------------------------------------------


@pytest.mark.parametrize(("pairs", "agreeing"), [
    (((1e-7, 1e-4),), 1),  # exponent midpoint below the mantissa one
    (((1e-4, 1e-4),), 0),  # equal: not more harm
    (((1e-4, 1e-7),), 0),
    (((1e-7, 1e-4), (1e-6, 1e-6 * (1 + EDGE)), (3e-5, 2e-5)), 2),
])
def test_exponent_versus_mantissa_verdict(pairs, agreeing):
    cells = []
    for m, (exponent, mantissa) in zip(DEPTHS, pairs):
        cells += [cell(m, "float16", "exponent", exponent), cell(m, "float16", "mantissa", mantissa)]
    verdict, _ = verdicts(cells)["exponent"]
    assert verdict == (f"agrees in {agreeing} of {len(pairs)}" if agreeing else "disagrees")


def test_exponent_bounds_count_only_where_they_decide():
    # Exponent midpoint below the range (< 1e-9) and mantissa above it (> 1e-2): agreement.  An exponent
    # midpoint above the range says nothing about the order, so that pair is not counted.
    cells = [cell("vgg11", "float32", "exponent", bound="<", bound_p=1e-9),
             cell("vgg11", "float32", "mantissa", bound=">", bound_p=1e-2),
             cell("vgg13", "float32", "exponent", bound=">", bound_p=1e-2),
             cell("vgg13", "float32", "mantissa", 1e-3)]
    verdict, numbers = verdicts(cells)["exponent"]
    assert verdict == "agrees in 1 of 1" and "vgg13" not in numbers


# --- deeper networks tolerate less ---------------------------------------------------------------------------------


@pytest.mark.parametrize("midpoints", [
    (1e-3, 1e-4, 1e-5, 1e-6),  # falls with depth
    (1e-6, 1e-5, 1e-4, 1e-3),  # rises
    (1e-5, 1e-3, 1e-6, 1e-4),  # ranks 2, 4, 1, 3: Spearman exactly 0, no agreement
    (1e-4, 1e-3, 1e-5),        # three depths are enough
])
def test_depth_verdict_follows_the_spearman_correlation(midpoints):
    models = list(DEPTHS)[: len(midpoints)]
    cells = [cell(m, "float32", midpoint=p) for m, p in zip(models, midpoints)]
    rho = spearmanr([DEPTHS[m] for m in models], midpoints).statistic
    verdict, numbers = verdicts(cells)["depth"]
    assert verdict == ("agrees in 1 of 1 formats" if rho < 0 else "disagrees")
    assert numbers.startswith(f"float32: Spearman {rho:+.2f}")


def test_depth_is_judged_per_format():
    falling, rising = (1e-3, 1e-4, 1e-5), (1e-5, 1e-4, 1e-3)
    models = list(DEPTHS)[:3]
    cells = [cell(m, "float32", midpoint=p) for m, p in zip(models, falling)]
    cells += [cell(m, "bfloat16", midpoint=p) for m, p in zip(models, rising)]
    assert verdicts(cells)["depth"][0] == "agrees in 1 of 2 formats"


# --- what was not measured is said so ------------------------------------------------------------------------------


def test_findings_without_their_cells_are_not_measured():
    found = verdicts([cell("vgg11", "float32", midpoint=1e-5), cell("vgg13", "float32", midpoint=1e-6)])
    assert {k: v for k, (v, _) in found.items()} == {
        "exponent": "not measured", "depth": "not measured", "int8": "not measured", "mantissa": "not measured"}


# --- the int8 claim per combination of noisy values ----------------------------------------------------------------


def claim_table(text: str) -> dict[tuple[str, str], tuple[str, str]]:
    """{(noisy values, int8 biases): (mean ratio, verdict)} from the per-combination verdict table of report.md."""
    section = text.split("## The int8 claim per combination of noisy values", 1)[1].split("\n## ", 1)[0]
    header = "| network | noisy values | int8 biases | mean ratio | three orders of magnitude? |"
    rows = section.split(header, 1)[1].strip().splitlines()[1:]
    cells = [r.strip("| ").split(" | ") for r in rows]
    assert all(c[0] == "VGG" for c in cells)
    return {tuple(c[1:3]): tuple(c[3:]) for c in cells}


@pytest.mark.parametrize("log_ratios", [
    {"activations": 2.5 - EDGE, "weights": 3.5 + EDGE, "biases": 2.5 + EDGE, "activations+weights": 3.5 - EDGE,
     "activations+weights+biases": -EDGE},
    {"activations": EDGE, "weights": 4.0, "biases": 1.0, "activations+weights": 3.0, "activations+weights+biases": 2.0},
])
def test_int8_claim_per_target_combination_follows_the_numbers(log_ratios):
    # Two models; each combination's mean log ratio is the chosen one (the models sit 0.3 decades either side),
    # and the int8 models with float32 biases get one decade more where biases are noisy.
    float32 = 1e-6
    cells = []
    for name, r in log_ratios.items():
        targets = tuple(name.split("+"))
        section = "grid" if targets == ("activations",) else "targets"
        for m, shift in (("vgg11", 0.3), ("vgg13", -0.3)):
            cells += [cell(m, "float32", midpoint=float32, targets=targets, section=section),
                      cell(m, "int8", midpoint=float32 * 10 ** (r + shift), targets=targets, section=section)]
            if "biases" in targets:
                cells.append(cell(m, "int8", midpoint=float32 * 10 ** (r + shift + 1), targets=targets,
                                  section=section, bias="float"))
    text = render_report(report(cells))
    table = claim_table(text)
    expected = {}
    for name, r in log_ratios.items():
        expected[(name, "int32")] = (f"10^{r:.2f}", expected_int8_verdict(r))
        if "biases" in name:
            expected[(name, "float32")] = (f"10^{r + 1:.2f}", expected_int8_verdict(r + 1))
    assert table == expected
    # The summary at the top names every combination under the verdict its numbers give.
    summary = text.split("**Summary.**", 1)[1].split("\n", 1)[0]
    for (name, bias), (_, verdict) in expected.items():
        label = name + (" (float32 biases)" if bias == "float32" else "")
        phrase = {"agrees": "hold when", "int8 gains more than three orders": "are exceeded",
                  "partly: int8 is more tolerant, by fewer orders": "do not hold",
                  "disagrees": "are reversed"}[verdict]
        clause = next(c for c in summary.split("; ") if phrase in c)
        assert label in re.findall(r"([a-z+]+(?: \(float32 biases\))?) \(10\^", clause), (label, clause)


# --- the networks beyond VGG are judged each on its own --------------------------------------------------------------


@pytest.mark.parametrize("resnet_midpoint", [1e-6, 1e-4, 1e-2])
def test_another_network_is_judged_on_its_own_and_against_the_vggs_for_depth(resnet_midpoint):
    vgg = {"vgg11": 4e-5, "vgg13": 3e-5, "vgg16": 2e-5, "vgg19": 1e-5}
    cells = [cell(m, "float32", midpoint=p) for m, p in vgg.items()]
    cells += [cell(m, "int8", midpoint=p * 1e3) for m, p in vgg.items()]  # VGGs: exactly 10^3
    cells += [cell("resnet20", "float32", midpoint=resnet_midpoint), cell("resnet20", "int8", midpoint=resnet_midpoint * 10),
              cell("resnet20", "float32", "exponent", resnet_midpoint),
              cell("resnet20", "float32", "mantissa", bound=">", bound_p=0.5)]
    vggs, resnet = verdicts(cells), verdicts(cells, "ResNet-20")
    assert vggs["int8"] == (int8_verdict_line("agrees"), "activations: 10^3.00 (agrees)")
    assert resnet["int8"] == (int8_verdict_line("partly: int8 is more tolerant, by fewer orders"),
                              "activations: 10^1.00 (partly: int8 is more tolerant, by fewer orders)")
    # ResNet-20 has 20 weight layers: deeper than VGG-E (19), so it should tolerate less than VGG-E, per format.
    pairs = [("float32", resnet_midpoint, vgg["vgg19"]), ("int8", resnet_midpoint * 10, vgg["vgg19"] * 1e3)]
    below = sum(mine < theirs for _, mine, theirs in pairs)
    assert resnet["depth"] == (f"against the VGGs: agrees in {below} of 2 formats" if below else
                               "against the VGGs: disagrees (tolerates more than a shallower VGG)",
                               "; ".join(f"{f}: resnet20 (20 layers) {mine:.3g} vs vgg19 (19) {theirs:.3g}"
                                         for f, mine, theirs in pairs))
    assert vggs["depth"][0] == "agrees in 2 of 2 formats"  # the VGGs' midpoints fall with depth in both formats
    assert resnet["exponent"][0] == "agrees in 1 of 1" and resnet["mantissa"][0] == "agrees in 1 of 1"
    assert vggs["exponent"][0] == "not measured"


def test_write_and_read_noise_are_set_side_by_side():
    cells = [cell("vgg11", "float32", midpoint=1e-5),
             cell("vgg11", "float32", midpoint=3e-6, targets=("weights",), section="targets"),
             cell("vgg11", "float32", midpoint=3e-5, targets=("weights",), section="reads", randomness="per_run")]
    text = render_report(report(cells))
    section = text.split("## Write noise and read noise", 1)[1]
    assert "every batch of 50 images reads them with flips of its own" in section
    row = "| vgg11 | float32 | weights | 3e-06 [1.5e-06, 6e-06], 9 trials | 3e-05 [1.5e-05, 6e-05], 9 trials | 10^+1.00 |"
    assert row in section
    assert "## Write noise and read noise" not in render_report(report(cells[:2]))
