"""report.md for ``onnxflip reproduce``, written from report.json alone."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from onnxflip.zoo.configs import NETWORK_NAMES, network

__all__ = ["claim_by_targets", "findings", "orders_verdict", "render_report", "target_ratios"]

FLOATS = ("float16", "bfloat16", "float32", "float64")


def _p(value: float | None) -> str:
    return f"{value:.3g}" if value else "-"


def _mid(cell: dict) -> str:
    """The midpoint, or the bound when it lies outside the searched range ("> 0.01")."""
    if cell.get("midpoint"):
        return _p(cell["midpoint"])
    return f"{cell['bound']} {cell['bound_p']:.3g}" if cell.get("bound") else "-"


def _upper(cell: dict) -> float | None:
    """A value the midpoint is at most (the midpoint, or the bound '<')."""
    return cell.get("midpoint") or (cell["bound_p"] if cell.get("bound") == "<" else None)


def _lower(cell: dict) -> float | None:
    """A value the midpoint is at least (the midpoint, or the bound '>')."""
    return cell.get("midpoint") or (cell["bound_p"] if cell.get("bound") == ">" else None)


def _interval(cell: dict) -> str:
    return f"[{_p(cell['low'])}, {_p(cell['high'])}]" if cell["low"] and cell["high"] else "-"


def _log_ratio(a: float | None, b: float | None) -> float | None:
    return math.log10(a / b) if a and b else None


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(xs) < 3:
        return None
    rx, ry = np.argsort(np.argsort(xs)), np.argsort(np.argsort(ys))
    return float(np.corrcoef(rx, ry)[0, 1])


def _find(cells: list[dict], **match) -> dict | None:
    for cell in cells:
        if all(cell[k] == v for k, v in match.items()):
            return cell
    return None


def orders_verdict(mean_log_ratio: float) -> str:
    """The paper's "about three orders of magnitude" against a mean log10 int8/float32 ratio: 10^(3 +- 0.5) agrees."""
    if 2.5 <= mean_log_ratio <= 3.5:
        return "agrees"
    if mean_log_ratio > 3.5:
        return "int8 gains more than three orders"
    return "partly: int8 is more tolerant, by fewer orders" if mean_log_ratio > 0 else "disagrees"


def _ratio_bound(q: dict, f: dict) -> tuple[float | None, str]:
    """log10 of the int8/float32 midpoint ratio, and "=" or ">=" or "<=" where a midpoint lies beyond the range."""
    if q.get("midpoint") and f.get("midpoint"):
        return _log_ratio(q["midpoint"], f["midpoint"]), "="
    low = _log_ratio(_lower(q), _upper(f))
    if low is not None:
        return low, ">="
    return _log_ratio(_upper(q), _lower(f)), "<="


def target_ratios(report: dict) -> list[dict]:
    """For each combination of noisy stored values (grid and "targets" cells), each bias type and model: the
    int8 and float32 cells and their log10 midpoint ratio."""
    cells = [c for c in report["cells"] if c["section"] in ("grid", "targets") and c["bits"] == "all"
             and c.get("direction", "both") == "both" and c.get("nonfinite", "keep") == "keep"]
    out = []
    for targets in dict.fromkeys(tuple(c["targets"]) for c in cells):
        for bias in ("int32", "float"):
            for m in dict.fromkeys(c["model"] for c in cells):
                match = [c for c in cells if tuple(c["targets"]) == targets and c["model"] == m]
                f = next((c for c in match if c["format"] == "float32"), None)
                q = next((c for c in match if c["format"] == "int8" and c.get("bias", "int32") == bias), None)
                if q and f:
                    log_ratio, kind = _ratio_bound(q, f)
                    out.append({"targets": targets, "bias": bias, "model": m, "network": network(m), "int8": q,
                                "float32": f, "log_ratio": log_ratio, "kind": kind})
    return out


def _grid_ratios(report: dict) -> list[dict]:
    """The :func:`target_ratios` rows of the grid's own cells (its noisy values, int32 biases)."""
    return [r for r in target_ratios(report)
            if r["bias"] == "int32" and r["int8"]["section"] == "grid" and r["float32"]["section"] == "grid"]


def _ratio_text(r: dict) -> str:
    if r["log_ratio"] is None:
        return "-"
    sign = "" if r["kind"] == "=" else r["kind"].replace(">=", "≥ ").replace("<=", "≤ ")
    return f"{sign}{10 ** r['log_ratio']:.3g} (10^{r['log_ratio']:.2f})"


def claim_by_targets(report: dict) -> list[dict]:
    """The int8 claim's verdict for each network (the VGGs together, each other architecture alone), combination
    of noisy values and bias type, from the mean log ratio over the network's models."""
    rows = target_ratios(report)
    out = []
    for key in dict.fromkeys((r["network"], r["targets"], r["bias"]) for r in rows):
        group = [r for r in rows if (r["network"], r["targets"], r["bias"]) == key and r["log_ratio"] is not None]
        if not group:
            continue
        mean = sum(r["log_ratio"] for r in group) / len(group)
        bounded = any(r["kind"] != "=" for r in group)
        out.append({"network": key[0], "targets": key[1], "bias": key[2], "mean": mean,
                    "verdict": orders_verdict(mean), "bounded": bounded, "models": group})
    return out


def _network_name(key: str) -> str:
    return NETWORK_NAMES.get(key, key)


def _combination(c: dict) -> str:
    return "+".join(c["targets"]) + (" (float32 biases)" if c["bias"] == "float" and "biases" in c["targets"] else "")


def _claim_summary(claims: list[dict]) -> list[str]:
    """One paragraph: under which assumptions the paper's three orders of magnitude hold, per network, from the
    numbers."""
    if not claims:
        return []
    sentences = []
    for net in dict.fromkeys(c["network"] for c in claims):
        shown = [c for c in claims if c["network"] == net and (c["bias"] == "int32" or "biases" in c["targets"])]
        groups = {v: [c for c in shown if c["verdict"] == v] for v in dict.fromkeys(c["verdict"] for c in shown)}
        parts = []
        for verdict, label in (("agrees", "hold when the noisy values are"),
                               ("int8 gains more than three orders", "are exceeded when the noisy values are"),
                               ("partly: int8 is more tolerant, by fewer orders", "do not hold (int8 gains fewer) for"),
                               ("disagrees", "are reversed (float32 tolerates more) for")):
            if groups.get(verdict):
                listed = ", ".join(f"{_combination(c)} (10^{c['mean']:.2f})" for c in groups[verdict])
                parts.append(f"{label} {listed}")
        sentences.append(f"{_network_name(net)}: " + "; ".join(parts) + ".")
    return ["**Summary.** The paper's \"about three orders of magnitude\" (int8 over float32, mean log10 midpoint "
            "ratio over a network's models within 3 +- 0.5) " + " ".join(sentences) + " The int8 biases are int32 "
            "as ONNX Runtime's quantiser stores them unless marked float32 biases.", ""]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def findings(report: dict) -> list[tuple[str, str, str, str]]:
    """(network, finding, verdict, numbers) for each of the paper's findings and each network of the grid: the
    VGGs together (their depths a series), each other architecture alone."""
    grid = [c for c in report["cells"] if c["section"] == "grid"]
    claims = claim_by_targets(report)
    out = []
    for net in dict.fromkeys(network(c["model"]) for c in grid):
        cells = [c for c in grid if network(c["model"]) == net]
        name = _network_name(net)
        out += [(name, *row) for row in (_fields_finding(cells), _depth_finding(cells, grid, net),
                                         _int8_finding([c for c in claims if c["network"] == net]),
                                         _mantissa_finding(cells))]
    return out


def _fields_finding(grid: list[dict]) -> tuple[str, str, str]:
    models = list(dict.fromkeys(c["model"] for c in grid))
    pairs = [(m, f, _find(grid, model=m, format=f, bits="exponent"), _find(grid, model=m, format=f, bits="mantissa"))
             for m in models for f in FLOATS]
    pairs = [(m, f, e, n) for m, f, e, n in pairs if e and n and _upper(e) and _lower(n)]
    if not pairs:
        return ("Exponent-bit flips do more harm than mantissa flips", "not measured",
                "run with --bits all,exponent,mantissa")
    agree = sum(_upper(e) < _lower(n) for _, _, e, n in pairs)
    numbers = "; ".join(f"{m} {f}: {_mid(e)} vs {_mid(n)}" for m, f, e, n in pairs)
    return ("Exponent-bit flips do more harm than mantissa flips (lower midpoint)",
            f"agrees in {agree} of {len(pairs)}" if agree else "disagrees", numbers)


def _layers(cell: dict) -> int | None:
    return cell.get("layers") or cell.get("depth")


def _depth_finding(cells: list[dict], grid: list[dict], net: str) -> tuple[str, str, str]:
    """The VGGs: the Spearman correlation of midpoint and depth per format.  Another architecture, one depth:
    against the deepest VGG shallower than it, per format (deeper should tolerate less)."""
    finding = "Deeper networks tolerate less (midpoint falls with depth)"
    if net == "vgg":
        rhos = []
        for fmt in dict.fromkeys(c["format"] for c in cells):
            points = [(c["depth"], c["midpoint"]) for c in cells if c["format"] == fmt and c["bits"] == "all"
                      and c["midpoint"] and c["depth"]]
            rho = _spearman(*zip(*points)) if len(points) >= 3 else None
            if rho is not None:
                rhos.append((fmt, rho, points))
        if not rhos:
            return ("Deeper networks tolerate less", "not measured", "needs at least three depths")
        agree = sum(rho < 0 for _, rho, _ in rhos)
        numbers = "; ".join(f"{fmt}: Spearman {rho:+.2f} ({', '.join(f'{d}: {_p(p)}' for d, p in pts)})"
                            for fmt, rho, pts in rhos)
        return (finding, f"agrees in {agree} of {len(rhos)} formats" if agree else "disagrees", numbers)
    vggs = [c for c in grid if network(c["model"]) == "vgg" and c["bits"] == "all" and c["midpoint"]]
    compared = []
    for c in cells:
        layers = _layers(c)
        if c["bits"] != "all" or not c["midpoint"] or not layers:
            continue
        shallower = [v for v in vggs if v["format"] == c["format"] and v["depth"] < layers]
        if shallower:
            compared.append((c, max(shallower, key=lambda v: v["depth"])))
    if not compared:
        return (finding, "not measured", "needs the VGGs' cells in the same formats")
    agree = sum(c["midpoint"] < v["midpoint"] for c, v in compared)
    numbers = "; ".join(f"{c['format']}: {c['model']} ({_layers(c)} layers) {_p(c['midpoint'])} vs {v['model']} "
                        f"({v['depth']}) {_p(v['midpoint'])}" for c, v in compared)
    verdict = (f"against the VGGs: agrees in {agree} of {len(compared)} formats" if agree
               else "against the VGGs: disagrees (tolerates more than a shallower VGG)")
    return (finding, verdict, numbers)


def _int8_finding(claims: list[dict]) -> tuple[str, str, str]:
    """The verdict per combination of noisy values (int32 biases, and float32 biases where biases are noisy)."""
    finding = "int8 raises the tolerable probability by about three orders of magnitude over float32"
    shown = [c for c in claims if c["bias"] == "int32" or "biases" in c["targets"]]
    if not shown:
        return (finding, "not measured", "needs int8 and float32 cells")
    agree = [c for c in shown if c["verdict"] == "agrees"]
    verdict = f"agrees for {len(agree)} of {len(shown)} combinations of noisy values"
    numbers = "; ".join(f"{_combination(c)}: {'bound ' if c['bounded'] else ''}10^{c['mean']:.2f} ({c['verdict']})"
                        for c in shown)
    return (finding + " (per combination of noisy values)", verdict, numbers)


def _mantissa_finding(grid: list[dict]) -> tuple[str, str, str]:
    models = list(dict.fromkeys(c["model"] for c in grid))
    gains = [(m, f, _log_ratio(_lower(n), _upper(a)), n)
             for m in models for f in FLOATS
             for n, a in [(_find(grid, model=m, format=f, bits="mantissa"), _find(grid, model=m, format=f, bits="all"))]
             if n and a]
    gains = [(m, f, g, n) for m, f, g, n in gains if g is not None]
    if not gains:
        return ("Confining noise to the mantissa improves robustness a lot", "not measured",
                "run with --bits all,mantissa")
    agree = sum(g >= 1 for _, _, g, _ in gains)
    return ("Confining noise to the mantissa improves robustness a lot (mantissa-only midpoint >= 10x all-bits)",
            f"agrees in {agree} of {len(gains)}" if agree else "disagrees",
            "; ".join(f"{m} {f}: x10^{g:.2f}" + (" or more" if not n.get("midpoint") else "") for m, f, g, n in gains))


def render_report(report: dict) -> str:
    cells = report["cells"]
    grid = [c for c in cells if c["section"] == "grid"]
    networks = "VGG" if all(c.get("depth") for c in cells) else "the zoo's networks"  # only the VGGs have a depth
    lines = [f"# Reproduction: bit flips in {networks} on CIFAR-10", ""]
    lines += _claim_summary(claim_by_targets(report))
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    spec = report["spec"]
    search = spec["search"]
    budget = search["budget"]
    limit = f"{budget['seconds']:g} s" if budget.get("seconds") else (f"{budget['trials']} trials" if budget.get("trials")
                                                                      else "none")
    lines += [(f"{report['samples']} test images; each cell a sequential midpoint search in "
               f"[{search['low']:g}, {search['high']:g}] until its 95% interval is {search['precision']:g} decades "
               f"wide (budget per cell: {limit}); wall time {report['wall_seconds'] / 60:.1f} min."), ""]
    memory = cells[0].get("memory") if cells else None
    if memory:
        lines += ["Memory faults in every cell: " + ", ".join(f"{k} {v}" for k, v in memory.items()) + ".", ""]

    lines += ["## Midpoints", ""]
    lines += _table(["model", "format", "targets", "bits", "clean", "midpoint", "95% interval", "trials"],
                    [[c["model"], c["format"], "+".join(c["targets"]), c["bits"], f"{c['clean_accuracy']:.4f}",
                      _mid(c), _interval(c), str(c["evaluations"])] for c in grid])

    ratios = _grid_ratios(report)
    if ratios:  # only where the grid has int8 and float32 cells of a model
        lines += ["", "## int8 / float32 midpoint ratio", ""]
        lines += _table(["model", "int8", "float32", "ratio"],
                        [[r["model"], _mid(r["int8"]), _mid(r["float32"]), _ratio_text(r)] for r in ratios])

    claims = claim_by_targets(report)
    if any(len(c["targets"]) != 1 or c["targets"] != tuple(grid[0]["targets"] if grid else ()) for c in claims):
        lines += ["", "## The int8 claim per combination of noisy values", ""]
        lines += ["Which stored values are noisy decides the int8/float32 ratio. int32 biases: as ONNX Runtime's "
                  "quantiser writes them; float32 biases: the same int8 model quantised with `--bias float` "
                  "(only combinations with biases differ).", ""]
        rows = []
        for r in target_ratios(report):
            rows.append(["+".join(r["targets"]), "float32" if r["bias"] == "float" else "int32", r["model"],
                         _mid(r["float32"]), _mid(r["int8"]), _ratio_text(r)])
        lines += _table(["noisy values", "int8 biases", "model", "float32", "int8", "int8 / float32"], rows)
        lines += [""]
        lines += _table(["network", "noisy values", "int8 biases", "mean ratio", "three orders of magnitude?"],
                        [[_network_name(c["network"]), "+".join(c["targets"]),
                          "float32" if c["bias"] == "float" else "int32",
                          f"{'bound: ' if c['bounded'] else ''}10^{c['mean']:.2f}", c["verdict"]] for c in claims])

    lines += ["", "## Exponent, mantissa and all bits", ""]
    rows = []
    for m in dict.fromkeys(c["model"] for c in grid):
        for f in FLOATS:
            got = {b: _find(grid, model=m, format=f, bits=b) for b in ("all", "exponent", "mantissa")}
            if any(got.values()):
                rows.append([m, f] + [_mid(got[b]) if got[b] else "-" for b in ("all", "exponent", "mantissa")])
    lines += _table(["model", "format", "all", "exponent", "mantissa"], rows)

    lines += ["", "## Midpoint vs depth", ""]
    every_model = list(dict.fromkeys(c["model"] for c in grid))
    models = [m for m in every_model if _find(grid, model=m)["depth"]]
    if len(models) < len(every_model):
        left_out = ", ".join(m for m in every_model if m not in models)
        lines += [f"Networks without a depth (not VGGs), left out here: {left_out}.", ""]
    rows = []
    for f in dict.fromkeys(c["format"] for c in grid):
        rows.append([f] + [_mid(c) if (c := _find(grid, model=m, format=f, bits="all")) else "-" for m in models])
    lines += _table(["format"] + [f"{m} ({c['depth']})" for m in models
                                  for c in [_find(grid, model=m)]], rows)
    lines += ["", "![midpoint vs depth](midpoint_vs_depth.png)", ""]
    lines += [f"![{m}](curves_{m}.png)" for m in every_model]

    lines += ["", "## The paper's findings", ""]
    lines += _table(["network", "finding", "measured", "numbers"], [list(f) for f in findings(report)])
    lines += _reads_section(cells)

    for section, title, key in (("asymmetric", "Flips in one direction", "direction"),
                                ("nonfinite", "Nonfinite policy", "nonfinite")):
        extra = [c for c in cells if c["section"] == section]
        if not extra:
            continue
        base = _find(grid, model=extra[0]["model"], format=extra[0]["format"], bits="all")
        lines += ["", f"## {title}", ""]
        rows = ([[base["model"], base["format"], base[key], _mid(base), _interval(base)]] if base else [])
        rows += [[c["model"], c["format"], c[key], _mid(c), _interval(c)] for c in extra]
        lines += _table(["model", "format", key, "midpoint", "95% interval"], rows)
    return "\n".join(lines) + "\n"


def _reads_section(cells: list[dict]) -> list[str]:
    """Write noise (a trial's weights written once with their flips) against read noise (every batch reads them
    with flips of its own), per network: the paper's model against a memory that flips at read."""
    reads = [c for c in cells if c.get("randomness", "fixed") == "per_run"]
    if not reads:
        return []
    rows = []
    for read in reads:
        write = next((c for c in cells if c["model"] == read["model"] and c["format"] == read["format"]
                      and c["targets"] == read["targets"] and c["bits"] == read["bits"]
                      and c.get("randomness", "fixed") == "fixed" and c["section"] in ("targets", "reads", "grid")
                      and c.get("direction", "both") == "both" and c.get("nonfinite", "keep") == "keep"
                      and c.get("bias", "int32") == read.get("bias", "int32")), None)
        ratio = _log_ratio(read.get("midpoint"), write.get("midpoint")) if write else None
        rows.append([read["model"], read["format"], "+".join(read["targets"]),
                     f"{_mid(write)} {_interval(write)}, {write['evaluations']} trials" if write else "-",
                     f"{_mid(read)} {_interval(read)}, {read['evaluations']} trials",
                     f"10^{ratio:+.2f}" if ratio is not None else "-"])
    batch = reads[0].get("batch_size")
    return ["", "## Write noise and read noise", "",
            "Write noise (the paper's model): a trial writes the weights once, with their flips, and every batch "
            f"reads them.  Read noise: every batch{f' of {batch} images' if batch else ''} reads them with flips of "
            "its own.", "",
            *_table(["model", "format", "noisy values", "write: midpoint, 95% interval", "read: midpoint, 95% interval",
                     "read / write"], rows)]
