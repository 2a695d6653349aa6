"""The ``onnxflip`` command line: each command parses its options, calls the Python API and prints what it
returns; the work is in the API, and the longer listings are rendered in :mod:`onnxflip.report` (evaluate's
summary, inspect's tables, compare's midpoints).

What stays here is the command line's own: option checks that name options
(options that contradict each other or that a mode ignores), the batch size
a model's fixed batch dimension implies when ``--batch-size`` is not given,
the progress shown while a campaign runs (a bar on a terminal, lines in a
log), and the one-line errors and exit status of :func:`main`.  Options
shared by several commands are defined once, as module constants.

Options that together describe one thing are an :class:`OptionGroup`: the
command receives the object they build (a :class:`~onnxflip.graph.sites.Selection`,
the :class:`~onnxflip.faults.FaultModel` of each target class, an
:class:`~onnxflip.graph.config.InjectionConfig`), not the options one by one.

Exit status: 0 on success; 2 for a usage error (an unknown option, an option
value that is wrong on its own, options that contradict each other); 1 for
an input error (a missing or broken file, data folder or output folder, an
option that does not fit the model); 130 when interrupted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import sys
from collections.abc import Callable, Sequence

import click

from onnxflip import __version__
from onnxflip.campaign.design import SearchSettings
from onnxflip.campaign.executors import EXECUTORS
from onnxflip.campaign.experiment import parse_probabilities
from onnxflip.campaign.reproduce import TARGET_SETS, parse_target_sets
from onnxflip.campaign.trials import DIRECTIONS, SWEEPS
from onnxflip.errors import OnnxflipError
from onnxflip.faults import FaultModel, resolve_probabilities
from onnxflip.graph.config import InjectionConfig
from onnxflip.graph.formats import COMPUTES, FORMATS
from onnxflip.graph.sites import DEFAULT_ACTIVATION_OPS, DEFAULT_TARGETS, TARGETS, Selection
from onnxflip.metrics import NONFINITE_METRICS, NONFINITE_SCORES
from onnxflip.protection import Protection, read_plan
from onnxflip.report.summary import count, evaluation_summary
from onnxflip.runtime.contract import ECC_MODES, NONFINITE_POLICIES, ON_DETECTED, RANDOMNESS
from onnxflip.runtime.session import PROVIDERS
from onnxflip.zoo import ARCHITECTURES, LANGUAGE_MODEL, MODELS, PAPER_NAMES, VGG_MODELS
from onnxflip.zoo.noise import NOISE_TARGETS

__all__ = ["OptionGroup", "cli", "main"]

logger = logging.getLogger("onnxflip")


class CommaList(click.ParamType):
    """A comma-separated list, optionally restricted to known choices."""

    name = "list"

    def __init__(self, choices: Sequence[str] | None = None) -> None:
        self.choices = tuple(choices) if choices is not None else None

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        items = tuple(v.strip() for v in str(value).split(",") if v.strip())
        if not items:
            self.fail("the list is empty", param, ctx)
        if self.choices is not None:
            bad = [v for v in items if v not in self.choices]
            if bad:
                self.fail(f"{', '.join(bad)} not in {', '.join(self.choices)}", param, ctx)
        return items


def _option(*decls: str, **attrs) -> Callable:
    """``click.option(*decls, **attrs)`` that remembers the name of the parameter it passes to the command."""
    decorator = click.option(*decls, **attrs)
    decorator.param_name = click.Option(decls, **attrs).name
    return decorator


class OptionGroup:
    """Options that together build one object; the command receives the object as one parameter.

    ``parts`` are options made with :func:`_option` or other groups (whose
    objects ``build`` then receives under their names).  ``build`` takes
    every part by its parameter name and returns the object; an
    :class:`OnnxflipError` it raises is a usage error of these options
    (exit 2), or with ``usage_errors=False`` an input error (exit 1): the
    fault model's own refusal of its parameters.
    """

    def __init__(self, name: str, parts: Sequence[Callable], build: Callable[..., object], *,
                 usage_errors: bool = True) -> None:
        self.param_name = name  # as for an option: the name the command receives
        self.parts = tuple(parts)
        self.build = build
        self.usage_errors = usage_errors

    def __call__(self, command: Callable) -> Callable:
        names = [part.param_name for part in self.parts]

        @functools.wraps(command)
        def with_object(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in names}
            try:
                kwargs[self.param_name] = self.build(**values)
            except OnnxflipError as exc:
                if not self.usage_errors:
                    raise
                raise click.UsageError(str(exc)) from None
            return command(*args, **kwargs)

        for part in reversed(self.parts):
            with_object = part(with_object)
        return with_object


def _checked_by(parse: Callable[[str], object]) -> Callable:
    """A callback that rejects a value ``parse`` cannot read as a usage error, and passes the text on.

    For options whose command still parses the text itself (evaluate, reproduce): a bad value stops the
    command at parse time, exit status 2, before any model or data is read.
    """

    def callback(ctx, param, value):
        if value is not None:
            try:
                parse(value)
            except OnnxflipError as exc:
                raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        return value

    return callback


def _apply(options):
    """Apply a list of option decorators, first on top."""

    def decorator(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorator


DEFAULT = click.core.ParameterSource.DEFAULT  # an option the user did not give
PROBABILITY = click.FloatRange(0.0, 1.0)
MODEL_ARG = click.argument("model", type=click.Path(path_type=pathlib.Path))


def OUTPUT_OPTION(what: str) -> Callable:  # a decorator factory, named like the option constants
    """-o/--output, a file path; ``what`` completes "Where to write ..."."""
    return click.option("-o", "--output", required=True, type=click.Path(path_type=pathlib.Path),
                        help=f"Where to write {what}.")


FORMAT_OPTION = _option(
    "--format", "fmt", type=click.Choice(list(FORMATS)), default=None,
    help="Number format the values are stored in, hence which bits can flip [default: the model's own: int8 "
         "for a quantised model, else the float type it computes in, float32 for most].",
)
COMPUTE_OPTION = _option(
    "--compute", type=click.Choice(list(COMPUTES)), default=None,
    help="How float16, bfloat16 and float64 compute: native (float64 in float64; float16 and bfloat16 with every "
         "op's result rounded to the format, summed in float32 as GPU kernels do) or float32 (the format met only "
         "where a value is stored) [default: native, or what an injected or converted model was made with].",
)
TARGETS_OPTION = _option(
    "--targets", type=CommaList(TARGETS), default=",".join(DEFAULT_TARGETS), show_default=True,
    help="Which stored values flip (comma-separated): activations, weights, biases, and qparams (quantisation "
         "scales and zero points) and kv-cache (the keys and values a decoder writes into its cache), not in the "
         "default.",
)
BITS_OPTION = _option(
    "--bits", default="all", show_default=True,
    help="Bits that may flip: all, sign, a mask like 0x7f80; float formats also exponent, mantissa; int8 also low:K, high:K.",
)
PROTECT_OPTION = _option(
    "--protect", type=click.Path(path_type=pathlib.Path), default=None,
    help="A protection plan (plan.json from `onnxflip sensitivity --plan-budget`): its bits never flip.",
)
FOLD_OPTION = _option("--no-fold-batchnorm", is_flag=True,
                      help="Keep BatchNormalization nodes instead of folding them into Conv.")
SELECTION_OPTIONS = [
    _option("--ops", type=CommaList(), default=",".join(DEFAULT_ACTIVATION_OPS), show_default=False,
            help="Op types whose outputs are activation sites (default: activation functions, Softmax, LayerNormalization, "
                 "pooling, LSTM, GRU, RNN)."),
    _option("--every-intermediate", is_flag=True,
            help="Make every intermediate float tensor after the first Conv/Gemm/MatMul an activation site."),
    _option("--include", metavar="REGEX", help="Only sites whose tensor or node name matches."),
    _option("--exclude", metavar="REGEX", help="Drop sites whose tensor or node name matches."),
]
PROBABILITY_OPTIONS = [
    _option("--p", "p", type=PROBABILITY,
            help="Flip probability of every allowed bit (0->1 and 1->0); default 0: set it at run time."),
    _option("--p01", type=PROBABILITY, help="Probability that a 0 bit becomes 1."),
    _option("--p10", type=PROBABILITY, help="Probability that a 1 bit becomes 0."),
]
class ClassNames(click.ParamType):
    """Class names: a comma list, or a file with one name per line."""

    name = "NAMES"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        path = pathlib.Path(value).expanduser()
        text = path.read_text(encoding="utf-8") if path.is_file() else value
        names = tuple(n.strip() for n in (text.splitlines() if path.is_file() else text.split(",")) if n.strip())
        if not names:
            self.fail(f"{value!r} names no class", param, ctx)
        if len({n.lower() for n in names}) != len(names):
            self.fail(f"{value!r} names a class twice", param, ctx)
        return names


# Stuck-at cells and ECC, for every command that builds fault models (inject; evaluate may reuse them).
MEMORY_FAULT_OPTIONS = [
    _option("--stuck-at0", "s0", type=PROBABILITY, default=0.0, show_default=True,
            help="Probability that a cell is stuck at 0 (the same cells at every run; a new --seed, a new memory)."),
    _option("--stuck-at1", "s1", type=PROBABILITY, default=0.0, show_default=True,
            help="Probability that a cell is stuck at 1 (--stuck-at0 + --stuck-at1 <= 1)."),
    _option("--ecc", type=click.Choice(ECC_MODES), default="none", show_default=True,
            help="secded: each value stored with a Hamming SECDED code; secded64: values packed into "
                 "(72,64) words, like DRAM."),
    _option("--on-detected", type=click.Choice(ON_DETECTED), default="keep", show_default=True,
            help="A word with a detected, uncorrectable error: keep its corrupted value, or zero it."),
]
NONFINITE_OPTION = _option("--nonfinite", type=click.Choice(NONFINITE_POLICIES), default="keep", show_default=True,
                           help="What becomes of values a flip made NaN or infinite.")
FAULT_OPTIONS = [
    *PROBABILITY_OPTIONS,
    BITS_OPTION,
    _option("--seed", type=int, default=0, show_default=True, help="Seed of the flips."),
    NONFINITE_OPTION,
    _option("--activation-randomness", type=click.Choice(RANDOMNESS), default="per_run", show_default=True,
            help="per_run: activations draw new flips at every inference; fixed: the same flips each run."),
    _option("--parameter-randomness", type=click.Choice(RANDOMNESS), default="fixed", show_default=True,
            help="fixed: weights and biases keep their flips across runs (written once); per_run: new each run."),
]


def _selection(ops, every_intermediate, include, exclude) -> Selection:
    """The Selection of --ops, --every-intermediate, --include and --exclude; a bad value is a usage error."""
    try:
        return Selection(activation_ops=tuple(ops), every_intermediate=every_intermediate, include=include,
                         exclude=exclude)
    except OnnxflipError as exc:
        raise click.UsageError(str(exc)) from None


def _fault_models(*, targets, p, p01, p10, bits, seed, nonfinite, activation_randomness, parameter_randomness,
                  memory: FaultModel) -> dict[str, FaultModel | None]:
    """The FaultModel of each target class (None for a class not in --targets)."""
    prob01, prob10 = resolve_probabilities(p, p01, p10)
    fault = dataclasses.replace(memory, p01=prob01, p10=prob10, bits=bits, seed=seed, nonfinite=nonfinite)
    config = InjectionConfig.build(targets=targets, fault=fault, activation_randomness=activation_randomness,
                                   parameter_randomness=parameter_randomness)
    return {target: config.fault_model(target) for target in TARGETS}


def _memory_faults(*, s0, s1, ecc, on_detected) -> FaultModel:
    """The stuck-at rates and ECC (of every command that takes them) as a fault model; its refusal is an input
    error."""
    if ecc == "none" and on_detected != "keep":
        raise click.UsageError("--on-detected needs --ecc: without a code no error is detected")
    return FaultModel(s0=s0, s1=s1, ecc=ecc, on_detected=on_detected)


def _site_fault_models(*, targets, bits) -> dict[str, FaultModel | None]:
    """For inspect: the target classes and their bits; no probabilities."""
    return {target: FaultModel(bits=bits) if target in targets else None for target in TARGETS}


def _given(names) -> list[str]:
    """The options among ``names`` (parameter names) that the user gave, as spelled on the command line."""
    ctx = click.get_current_context()
    params = {p.name: p for p in ctx.command.params}
    return [params[name].opts[0] for name in names if ctx.get_parameter_source(name) != DEFAULT]


def _refuse_together(names) -> None:
    """A usage error where options that contradict each other are all given."""
    given = _given(names)
    if len(given) == len(names):
        raise click.UsageError(f"{' and '.join(given)} contradict each other; give one")


def _refuse_with(mode: str, names, needs: str) -> None:
    """A usage error for options the chosen mode would ignore."""
    given = _given(names)
    if given:
        raise click.UsageError(f"{mode} does not use {', '.join(given)}: {'it is' if len(given) == 1 else 'they are'} "
                               f"for {needs}")


def _protection(path: pathlib.Path | None) -> Protection:
    """The protection of --protect (none without it); a plan that cannot be read is an input error (exit 1), not
    a usage error, wherever the option is read."""
    try:
        return Protection() if path is None else read_plan(path)
    except OnnxflipError as exc:
        raise click.ClickException(str(exc)) from None


def _injection_config(*, fmt, faults, selection, no_fold_batchnorm, protect=None, compute=None) -> InjectionConfig:
    fields = {target.replace("-", "_"): fault for target, fault in faults.items()}  # kv-cache: kv_cache
    return InjectionConfig(format=fmt, compute=compute, selection=selection, fold_batchnorm=not no_fold_batchnorm,
                           protection=_protection(protect), **fields)


# Option groups: each command takes the object, never the options.
SELECTION = OptionGroup("selection", SELECTION_OPTIONS, _selection)
MEMORY_FAULTS = OptionGroup("memory", MEMORY_FAULT_OPTIONS, _memory_faults, usage_errors=False)
FAULTS = OptionGroup("faults", [TARGETS_OPTION, *FAULT_OPTIONS, MEMORY_FAULTS], _fault_models)
SITE_FAULTS = OptionGroup("faults", [TARGETS_OPTION, BITS_OPTION], _site_fault_models)
INJECTION = OptionGroup("config", [FORMAT_OPTION, COMPUTE_OPTION, FAULTS, SELECTION, FOLD_OPTION, PROTECT_OPTION], _injection_config)
SITE_PLAN = OptionGroup("config", [FORMAT_OPTION, COMPUTE_OPTION, SITE_FAULTS, SELECTION, FOLD_OPTION], _injection_config)

DIRECTION_OPTION = click.option(
    "--direction", type=click.Choice(DIRECTIONS), default=DIRECTIONS[0], show_default=True,
    help="Flip 0->1 and 1->0 (both), only 0->1 (01) or only 1->0 (10) with probability p.")
PROVIDER_OPTION = click.option(
    "--provider", type=click.Choice(list(PROVIDERS)), default="cpu", show_default=True,
    help="ONNX Runtime execution provider that runs the model.")
PROBABILITIES_OPTION = click.option(
    "--p", "p_spec", default="1e-7:1e-1:13", show_default=True, callback=_checked_by(parse_probabilities),
    help="Probabilities (stuck-at rates with --sweep stuck-at): START:STOP:COUNT (log-spaced, START > 0) or a "
         "comma list such as 0,1e-6,1e-4.")
P_RANGE_OPTION = click.option(
    "--p-range", default="1e-9:1e-2", show_default=True, callback=_checked_by(SearchSettings.from_range),
    help="LOW:HIGH bracket of the midpoint search (of the stuck-at rate with --sweep stuck-at), 0 < LOW < HIGH <= 1 (HIGH:LOW is read the same).")
SWEEP_OPTION = click.option(
    "--sweep", type=click.Choice(SWEEPS), default=SWEEPS[0], show_default=True,
    help="What --p and --p-range set: the flip probability, or the stuck-at rate r (s0 = s1 = r / 2).")
FLIP_P_OPTION = click.option(
    "--flip-p", type=PROBABILITY, default=0.0, show_default=True,
    help="With --sweep stuck-at: a flip probability (in --direction) added to every faulty point.")

# What a campaign scores, and on which samples: Experiment's fields of the same names (sensitivity shares all but
# --samples and --metric; reproduce, whose cells score top1, --nonfinite-score).
SCORED_OUTPUT_OPTION = _option("--output", "output", default=None,
                               help="The model output the metric reads [default: the first].")
FLOOR_OPTION = _option("--floor", type=float, default=None,
                       help="The score of a ruined model [default: the metric's, e.g. chance = 1/classes for top1].")
PREPROCESS_OPTION = _option("--preprocess", default=None,
                            help="Image preprocessing: a JSON spec, a .json file or a preset (imagenet, cifar10) "
                                 "[default: the model's onnxflip.preprocess metadata].")
NONFINITE_SCORE_OPTION = _option(
    "--nonfinite-score", "nonfinite_score", type=click.Choice(NONFINITE_SCORES), default="wrong", show_default=True,
    help=f"How {NONFINITE_METRICS} score a sample whose output holds NaN or inf: wrong (a ruined output agrees "
         "with nothing), or argmax (NaN counts as the largest value, as in NumPy's argmax, so outputs all NaN "
         "predict class 0).")
CLASSES_OPTION = _option("--classes", "classes", type=ClassNames(), default=None,
                         help="The model's class names in output order: a comma list, or a file with one per line; "
                              "class folders are matched to them by name [default: the model's onnxflip.model "
                              "metadata, else the folders' sorted order].")
SCORING_OPTIONS = [
    _option("--samples", type=click.IntRange(1), default=None,
            help="The first N samples (classes kept balanced) define the measurement [default: all]."),
    _option("--metric", default="top1", show_default=True,
            help="top1, topK (top5...), agreement, rel-error, nonfinite, perplexity, greedy:N, or "
                 "package.module:function."),
    NONFINITE_SCORE_OPTION,
    SCORED_OUTPUT_OPTION,
    FLOOR_OPTION,
    PREPROCESS_OPTION,
    CLASSES_OPTION,
]
SCORING = OptionGroup("scoring", SCORING_OPTIONS, lambda **fields: fields, usage_errors=False)

EXECUTOR_OPTIONS = [
    click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                 help="Where trials run: local (this process) or ray (Ray tasks; pip install 'onnxflip[ray]'). "
                      "The numbers are the same either way."),
    click.option("--ray-address", metavar="HOST:PORT", default=None,
                 help="The head of a running Ray cluster (ray start --head), or auto for the one on this machine "
                      "[default: start a new Ray on this machine]."),
]

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="onnxflip", message="%(prog)s %(version)s",
                      help="Show the version and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Bit-flip fault injection for ONNX models.

    Insert FlipBits operators where a model stores activations, weights and
    biases, in the number format under study, and measure accuracy as flips
    become more likely.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(_LogLines())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


class _LogLines(logging.Formatter):
    """Warnings and errors as the commands' own lines (``onnxflip: warning: ...``); details (-v) with the module
    they come from."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return f"onnxflip: {record.levelname.lower()}: {record.getMessage()}"
        return f"onnxflip: {record.name}: {record.getMessage()}"


def _warn(message: str) -> None:
    click.echo(f"onnxflip: warning: {message}", err=True)


@cli.command()
@MODEL_ARG
@OUTPUT_OPTION("the injected model")
@INJECTION
def inject(model: pathlib.Path, output: pathlib.Path, config: InjectionConfig) -> None:
    """Write a copy of MODEL with FlipBits at every selected site.

    The probabilities, stuck-at rates and seeds given here are defaults: each
    target class has graph inputs onnxflip_<target>_p01, _p10, _s0, _s1,
    _seed and _stuck_seed that override them at run time.  Load the model with onnxflip.make_session(), or register
    onnxflip.get_library_path() with ONNX Runtime.
    """
    from onnxflip.graph.inject import insert_flipbits
    from onnxflip.graph.record import InjectionRecord
    from onnxflip.modelio import check_output_path, load_model, save_model
    from onnxflip.runtime.session import make_session

    check_output_path(output, inputs=(model,))
    injected = insert_flipbits(load_model(model), config=config)  # format None: the model's own
    make_session(injected)  # a model ONNX Runtime cannot load is refused, not written
    save_model(injected, output)
    record = InjectionRecord.read(injected)  # int8 sign bits add nodes, not sites
    click.echo(f"wrote {output}: {len(record.sites)} FlipBits sites, format {record.config.format}")
    ctx = click.get_current_context()
    if all(ctx.get_parameter_source(name) == DEFAULT for name in ("p", "p01", "p10")):
        _warn("no --p, --p01 or --p10 given: the model's default flip probabilities are 0 (set its "
              "onnxflip_<target>_p01 and _p10 inputs at run time)")


@cli.command()
@MODEL_ARG
@SITE_PLAN
@click.option("--json", "as_json", is_flag=True,
              help="Print the sites and the coverage as one JSON object ({\"sites\": [...], \"coverage\": {...}}).")
def inspect(model: pathlib.Path, config: InjectionConfig, as_json: bool) -> None:
    """List the FlipBits sites of MODEL and the coverage of its stored parameters.

    For an injected model, the sites it has; for a clean model, the sites
    inject would create with the same options.  Each row: tensor, target
    class, stored element type, elements (per sample for activations; per
    batch where the model's inputs fix the batch size), bits
    per element and the mask of the bits that may flip.  Then the share of
    the stored parameters' elements and bits that are sites, per target, and
    every stored parameter that is not a site, with the reason.
    """
    from onnxflip.graph.inputs import batch_dimension
    from onnxflip.modelio import load_model
    from onnxflip.report.sites_table import describe_sites, format_coverage, format_site_table

    loaded = load_model(model)
    rows, coverage = describe_sites(loaded, config=config)
    if as_json:
        click.echo(json.dumps({"sites": rows, "coverage": coverage.to_json() if coverage else None}, indent=2))
        return
    click.echo(format_site_table(rows, coverage, batch=batch_dimension(loaded), selection=config.selection))
    if coverage is not None:
        click.echo("")
        click.echo(format_coverage(coverage))


@cli.command()
@MODEL_ARG
@OUTPUT_OPTION("the converted model")
@click.option("--format", "fmt", type=click.Choice([f for f in FORMATS if f != "int8"]), required=True,
              help="Storage format to round every stored value through.")
@COMPUTE_OPTION
def convert(model: pathlib.Path, output: pathlib.Path, fmt: str, compute: str | None) -> None:
    """Write MODEL with its stored values in another format, without flips.

    This is what inject computes at p = 0: the clean baseline of a format.
    """
    from onnxflip.graph.formats import describe_compute
    from onnxflip.graph.inject import convert_format
    from onnxflip.modelio import check_output_path, load_model, save_model

    check_output_path(output, inputs=(model,))
    compute = compute or "native"
    save_model(convert_format(load_model(model), format=fmt, compute=compute), output)
    click.echo(f"wrote {output}: format {fmt}, computed in {describe_compute(fmt, compute)}")


def _data_folder(ctx, param, value):
    """--data, after --download has fetched the official release into it when asked."""
    if ctx.params.get("download") or (ctx.obj or {}).get("download"):
        from onnxflip.data import download
        from onnxflip.zoo import require_extra

        require_extra("--download", modules=("torch", "torchvision"))
        return download(value)
    return value


def _data_option(what: str):
    """--data and --download, shared by every command that reads data; ``what`` says which data it takes."""

    def decorate(fn):
        fn = click.option("--data", type=click.Path(path_type=pathlib.Path), default=None, callback=_data_folder,
                          help=f"{what}; default $ONNXFLIP_DATA, then ~/.cache/onnxflip/cifar10.")(fn)
        return click.option("--download", is_flag=True, is_eager=True, expose_value=False,
                            callback=lambda ctx, param, value: ctx.ensure_object(dict).update(download=value),
                            help="Download the official CIFAR-10 release into the data folder first (needs "
                                 "internet).")(fn)

    return decorate


DATA_OPTION = _data_option("An ImageFolder tree, a CIFAR-10 folder (ImageFolder or cifar-10-batches-py) or an .npz "
                           "of the model's inputs")
CIFAR10_OPTION = _data_option("The CIFAR-10 folder the zoo trains on: its ImageFolder copy (train/, test/) or "
                              "cifar-10-batches-py")


@cli.command()
@MODEL_ARG
@DATA_OPTION
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default=None,
              help="Number format the values are stored in [default: the injected model's, else int8 for a "
                   "quantised model, else the float type it computes in].")
@COMPUTE_OPTION
@TARGETS_OPTION
@BITS_OPTION
@DIRECTION_OPTION
@NONFINITE_OPTION
@SWEEP_OPTION
@FLIP_P_OPTION
@MEMORY_FAULTS
@PROTECT_OPTION
@click.option("--midpoint", is_flag=True,
              help="Find the midpoint by the sequential design to --precision, instead of measuring the --p grid.")
@P_RANGE_OPTION
@click.option("--precision", type=float, default=0.2, show_default=True,
              help="Stop when the midpoint's 95% interval is at most this many decades of p wide (total width).")
@click.option("--budget", default="30m", show_default=True,
              help="Stop the search after this time (300s, 5m, 2h) or number of trials (400), if sooner.")
@PROBABILITIES_OPTION
@click.option("--trials", type=click.IntRange(1), default=3, show_default=True,
              help="Trials per probability of a --p grid (the search chooses its own).")
@SCORING
@click.option("--batch-size", type=click.IntRange(1), default=500, show_default=True,
              help="Samples per ONNX Runtime run (a model with a fixed batch size: that size).")
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed; every trial and batch seed derives from it.")
@click.option("--parameter-randomness", type=click.Choice(RANDOMNESS), default="fixed", show_default=True,
              help="fixed: a trial writes the weights and biases once, with their flips, and every batch reads "
                   "them (write noise); per_run: every batch of --batch-size reads them with flips of its own "
                   "(read noise).")
@PROVIDER_OPTION
@click.option("--out", type=click.Path(path_type=pathlib.Path), default=None,
              help="Results folder (default results/<model>-<format>).")
@click.option("--resume", is_flag=True, help="Continue the campaign in --out, keeping the trials measured.")
@click.option("--overwrite", is_flag=True, help="Replace an existing results folder.")
@_apply(EXECUTOR_OPTIONS)
@SELECTION
@FOLD_OPTION
def evaluate(model, data, fmt, compute, targets, bits, direction, nonfinite, sweep, flip_p, memory, protect, midpoint, p_range,
             precision, budget, p_spec, trials, scoring, batch_size, seed, parameter_randomness, provider, out, resume,
             overwrite, executor, ray_address, selection, no_fold_batchnorm):
    """Measure how MODEL's score falls as the bit-flip probability rises.

    MODEL may be clean (it is injected with these options) or injected: it
    flips what it holds, and an option that fixes the injection (--format,
    --targets, --bits, --nonfinite, --ecc, --on-detected, --protect, the
    site selection, --no-fold-batchnorm) is refused unless it is the
    model's.  With --midpoint, a sequential design finds the
    probability at which the score has fallen halfway from clean to the
    floor, to the interval width --precision; else each --p gets --trials
    trials.  Writes results.json, results.csv and accuracy.png to the results
    folder as trials finish, so an interrupted campaign keeps what it measured.

    Memory faults: --stuck-at0/--stuck-at1 add stuck cells to every faulty
    point (each trial a new memory); --sweep stuck-at sweeps the stuck-at
    rate instead of p.  p = 0 is always the fault-free model.  With --ecc,
    each point also reports the fractions of words read corrected, detected
    (not corrected) and silently wrong.
    """
    from onnxflip.campaign.design import Budget, SearchSettings
    from onnxflip.campaign.experiment import Experiment, parse_probabilities, run, settings_for_model
    from onnxflip.campaign.results import default_folder
    from onnxflip.campaign.trials import TrialSettings
    from onnxflip.modelio import load_model

    _refuse_together(("resume", "overwrite"))
    if sweep == "stuck-at" and not flip_p:
        _refuse_with("a stuck-at sweep without --flip-p", ("direction",), "flips")
    if midpoint:
        _refuse_with("--midpoint", ("p_spec", "trials"), "a grid")
    else:
        _refuse_with("a grid (no --midpoint)", ("p_range", "precision", "budget"), "--midpoint")
    clean_or_injected = load_model(model)
    try:  # options that contradict each other (a fixed stuck-at rate in a stuck-at sweep): a usage error
        settings = TrialSettings(targets=targets, fault=dataclasses.replace(memory, bits=bits, nonfinite=nonfinite),
                                 direction=direction, batch_size=batch_size, seed=seed, provider=provider,
                                 selection=selection, fold_batchnorm=not no_fold_batchnorm, sweep=sweep,
                                 flip_p=flip_p, protection=_protection(protect),
                                 parameter_randomness=parameter_randomness)
    except OnnxflipError as exc:
        raise click.UsageError(str(exc)) from None
    given = frozenset(_given(param.name for param in click.get_current_context().command.params))
    settings = settings_for_model(clean_or_injected, settings, fmt=fmt, given=given, compute=compute)
    search = SearchSettings.from_range(p_range, precision=precision, budget=Budget.parse(budget)) if midpoint else None
    experiment = Experiment(
        trials=settings,
        search=search, probabilities=None if midpoint else tuple(parse_probabilities(p_spec)),
        trials_per_point=trials, **scoring)
    out = out or default_folder(model, settings.format)
    progress = _Progress(executor)
    try:
        with _open_executor(executor, ray_address, provider, progress) as runs_trials:
            result = run(experiment, model_path=model, model=clean_or_injected, data=data, out=out, resume=resume,
                         overwrite=overwrite, on_batch=progress.on_batch, on_step=progress.on_step,
                         executor=runs_trials)
    finally:
        progress.close()
    click.echo(evaluation_summary(result, out))


def _open_executor(name: str, address: str | None, provider: str, progress: _Progress | _TaskLines):
    from onnxflip.campaign.executors import open_executor

    if address is not None and name != "ray":
        raise click.UsageError("--ray-address needs --executor ray")
    return open_executor(name, address=address, provider=provider, on_progress=progress.on_tasks)


class _TaskLines:
    """Ray's task counts as a line on stderr at most every 30 s, and at once when a task has failed."""

    def __init__(self, every: float = 30.0) -> None:
        self.every, self.last, self.failed = every, 0.0, 0

    def on_tasks(self, counts) -> None:
        import time

        now = time.monotonic()
        if now - self.last >= self.every or counts.failed != self.failed:
            self.last, self.failed = now, counts.failed
            click.echo(f"onnxflip: tasks {counts.describe()}", err=True)


class _Progress:
    """A bar on a terminal (batches run here, or trials done by Ray's workers); in a log, one line per step of
    the search, with Ray's task counts."""

    def __init__(self, executor: str) -> None:
        self.tasks = ""
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc="evaluating", unit=" batches" if executor == "local" else " trials", file=sys.stderr,
                            dynamic_ncols=True)
        self.on_batch = self.bar.update if self.bar is not None and executor == "local" else None

    def on_step(self, entry: dict) -> None:
        width = f", Wald width {entry['width']:.2f} decades" if entry.get("width") else ""  # the result's is the profile's
        where = f" at log10 p = {entry['x']:.2f}" if entry.get("x") is not None else ""
        if self.bar is not None:  # the same estimate and width the lines of a log show
            self.bar.set_description(f"{entry['event']}{where}: {entry['trials']} trials{width}")
            return
        tasks = f"; tasks {self.tasks}" if self.tasks else ""
        click.echo(f"onnxflip: {entry['event']}{where}: {entry['trials']} trials, {entry['seconds']:.0f} s{width}"
                   f"{tasks}", err=True)

    def on_tasks(self, counts) -> None:
        self.tasks = counts.describe()
        if self.bar is not None:
            self.bar.update(counts.done - self.bar.n)
            self.bar.set_postfix_str(f"tasks {self.tasks}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=pathlib.Path))
@OUTPUT_OPTION("the overlaid plot (PNG)")
def compare(results: tuple[pathlib.Path, ...], output: pathlib.Path) -> None:
    """Overlay the accuracy curves of several results and tabulate their midpoints."""
    from onnxflip.report.compare import compare_results

    click.echo(compare_results(list(results), output))


def _time_budget(text: str) -> float:
    """Seconds of a --budget given as a time (300s, 5m); anything else is an input error, as evaluate's is."""
    from onnxflip.campaign.design import Budget

    try:
        parsed = Budget.parse(text)
    except OnnxflipError:
        parsed = Budget()
    if parsed.seconds is None:
        raise OnnxflipError(f"cannot read the budget {text!r} as a time; give seconds (300s) or minutes (5m)")
    return parsed.seconds


@cli.command()
@MODEL_ARG
@DATA_OPTION
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default=None,
              help="Number format the values are stored in [default: int8 for a quantised model, else the float "
                   "type it computes in].")
@COMPUTE_OPTION
@TARGETS_OPTION
@BITS_OPTION
@click.option("--samples", type=click.IntRange(1), default=100, show_default=True,
              help="The first N samples (classes kept balanced) every flip is scored on.")
@click.option("--metric", default="top1", show_default=True,
              help="top1, topK (top5...), agreement, rel-error, nonfinite, perplexity, or "
                   "package.module:function.")
@NONFINITE_SCORE_OPTION
@SCORED_OUTPUT_OPTION
@FLOOR_OPTION
@PREPROCESS_OPTION
@CLASSES_OPTION
@click.option("--batch-size", type=click.IntRange(1), default=500, show_default=True,
              help="Samples per ONNX Runtime run.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the elements and bits drawn.")
@click.option("--budget", default="240s", show_default=True, help="Stop giving trials after this time (300s, 5m).")
@click.option("--width", type=click.FloatRange(0, 2, min_open=True), default=0.2, show_default=True,
              help="A (site, bit) needs no more trials once its 95% interval is this narrow.")
@click.option("--plan-budget", "plan_budgets", type=CommaList(), default=None,
              help="Also write a protection plan per share of the stored bits (0.05, or 0.01,0.02,0.05).")
@click.option("--measure", "measure_plans", is_flag=True,
              help="Measure each plan's midpoint (evaluate --midpoint --protect) and the unprotected one.")
@click.option("--out", type=click.Path(path_type=pathlib.Path), default=None,
              help="Results folder (default results/<model>-<format>-sensitivity).")
@click.option("--overwrite", is_flag=True, help="Replace an existing results folder.")
@SELECTION
@FOLD_OPTION
def sensitivity(model, data, fmt, compute, targets, bits, samples, metric, nonfinite_score, output, floor,
                preprocess, classes, batch_size, seed, budget, width, plan_budgets, measure_plans, out, overwrite,
                selection, no_fold_batchnorm):
    """Map how much one flip of each bit of each site costs, and where to protect.

    For every site and bit position: the vulnerability (the expected loss of
    score, as a share of clean - floor, from one flip of that bit in one
    element drawn at random) with its 95% interval.  Writes sensitivity.csv,
    sensitivity.json, sensitivity.png (sites x bits) and sites.png (sites
    ranked by damage) to the results folder; with --plan-budget, plan.json
    files for `evaluate --protect`.
    """
    from onnxflip.campaign.experiment import resolve_compute, resolve_format
    from onnxflip.campaign.sensitivity import SensitivitySettings, run
    from onnxflip.modelio import load_model
    from onnxflip.report.sensitivity import summary_lines

    if measure_plans and not plan_budgets:
        raise click.UsageError("--measure needs --plan-budget: it measures the plans")
    try:
        budgets = [float(b) for b in plan_budgets or ()]
    except ValueError:
        raise click.UsageError(f"--plan-budget: {','.join(plan_budgets)} is not a list of shares") from None
    if any(not 0 < b <= 1 for b in budgets):
        raise click.UsageError("--plan-budget: a share of the stored bits is in (0, 1]")
    loaded = load_model(model)
    fmt = resolve_format(loaded, fmt)
    settings = SensitivitySettings(format=fmt, compute=resolve_compute(loaded, fmt, compute), targets=tuple(targets), bits=bits, seed=seed, batch_size=batch_size,
                                   width=width, budget=_time_budget(budget), selection=selection,
                                   fold_batchnorm=not no_fold_batchnorm)
    out = out or pathlib.Path("results") / f"{model.stem}-{fmt}-sensitivity"

    shown = [0.0]

    def on_round(entry: dict) -> None:  # a line every 15 s at most
        if entry["seconds"] - shown[0] < 15:
            return
        shown[0] = entry["seconds"]
        click.echo(f"onnxflip: round {entry['round']}: {entry['seconds']:.0f} s, {entry['wide']} of {entry['cells']} "
                   "cells wider than --width", err=True)

    def on_plan(row: dict) -> None:
        mid = f"{row['midpoint']:.3g}" if row["midpoint"] else "not found"
        click.echo(f"onnxflip: {row['plan']}: midpoint {mid}", err=True)

    result = run(model, data=data, out=out, settings=settings, metric=metric, nonfinite_score=nonfinite_score,
                 samples=samples, output=output,
                 floor=floor, preprocess=preprocess, classes=classes, overwrite=overwrite, plan_budgets=budgets,
                 measure_plans=measure_plans, on_round=on_round, on_plan=on_plan)
    lines = summary_lines(result)
    for name in result.get("plans", []):
        lines.append(f"wrote {out / name}")
    for row in result.get("measured_plans", []):
        span = f" [{row['low']:.3g}, {row['high']:.3g}]" if row.get("low") and row.get("high") else ""
        mid = f"{row['midpoint']:.3g}{span}" if row["midpoint"] else "not found"
        lines.append(f"{row['plan']:<20} budget {row['budget']:>5.1%}  midpoint {mid}")
    lines.append(f"wrote {out}/sensitivity.csv, sensitivity.json, sensitivity.png, sites.png")
    click.echo("\n".join(lines))


@cli.command()
@MODEL_ARG
@OUTPUT_OPTION("the int8 QDQ model")
@DATA_OPTION
@click.option("--samples", type=click.IntRange(1), default=1000, show_default=True,
              help="Calibration samples (classes kept balanced), taken from the training split.")
@click.option("--bias", type=click.Choice(["int32", "float"]), default="int32", show_default=True,
              help="Store biases as int32 (ONNX Runtime's quantiser) or keep them float32.")
def quantize(model: pathlib.Path, output: pathlib.Path, data: pathlib.Path | None, samples: int, bias: str) -> None:
    """Quantise MODEL to int8 QDQ (per-channel weights, MinMax calibration on the data's training split)."""
    from onnxflip.data.sources import open_source, resolve_data
    from onnxflip.modelio import check_output_path, load_model
    from onnxflip.quantize import quantize_model

    check_output_path(output, inputs=(model,))
    calibration = open_source(resolve_data(data), model=load_model(model), split="train")
    quantize_model(model, output, calibration=calibration, samples=samples, bias=bias)
    click.echo(f"wrote {output}: int8 QDQ, {bias} biases, calibrated on {min(samples, len(calibration))} samples")


@cli.group()
def zoo() -> None:
    """Train and export the zoo's CIFAR-10 networks (VGGs, ResNet-20, a small MobileNetV2) and its small language
    model (needs the zoo extra: pip install 'onnxflip[zoo]')."""


def _train_lm(*, batch_size, lr, steps, seed, device, threads, output) -> None:
    """``zoo train --model lm``: the CIFAR-10 networks' options refused, the rest with the language model's
    defaults."""
    _refuse_with(f"--model {LANGUAGE_MODEL}", ["width", "epochs", "data", "checkpoint", "init", "noise_p",
                                               "noise_targets", "noise_bits"],
                 "the CIFAR-10 networks; lm reads this Python's standard library source and trains for --steps")
    import torch

    from onnxflip.modelio import check_output_path
    from onnxflip.zoo.lm import LMTrainConfig, parameter_count, train_and_export

    check_output_path(output)
    if device == "cuda" and not torch.cuda.is_available():
        raise OnnxflipError("--device cuda: torch finds no usable CUDA GPU here; use --device cpu")
    defaults = LMTrainConfig()
    given = set(_given(["batch_size", "lr"]))
    config = dataclasses.replace(defaults, steps=steps or defaults.steps, seed=seed, device=device, threads=threads,
                                 batch_size=batch_size if "--batch-size" in given else defaults.batch_size,
                                 lr=lr if "--lr" in given else defaults.lr)
    result, eval_path = train_and_export(config, output, progress=sys.stderr.isatty())
    click.echo(f"wrote {output} and {eval_path}: {parameter_count(result.model):,} parameters, "
               f"held-out perplexity {result.heldout_perplexity:.3f} per byte, {result.wall_seconds / 60:.1f} min")


@zoo.command()
@click.option("--model", "name", type=click.Choice((*MODELS, LANGUAGE_MODEL)), default=MODELS[0], show_default=True,
              help=f"Which network: a VGG, {', '.join(f'{m} ({PAPER_NAMES[m]})' for m in VGG_MODELS)}; "
                   f"{'; '.join(f'{m} ({text})' for m, text in ARCHITECTURES.items())}; or {LANGUAGE_MODEL}, the "
                   "byte-level language model, which trains on this Python's standard library source (no --data).")
@click.option("--width", type=click.FloatRange(0.01, 4), default=None,
              help="Channel width multiplier (default: 0.25 for the VGGs, 1 for the other networks).")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True, help="Passes over the training set.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True,
              help="Images per training step (lm: windows per step, default 16).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True,
              help="Peak learning rate (lm: default 3e-3).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Training steps of the lm model (default 700).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initialisation and data order.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where torch trains.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for torch.")
@CIFAR10_OPTION
@OUTPUT_OPTION("the ONNX model")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="Checkpoint file, written every epoch; an existing one is resumed (default: OUTPUT.ckpt).")
@click.option("--init", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="Start from the weights of another run's checkpoint (same --model and --width) with a fresh "
                   "optimiser and schedule, its BatchNorm statistics kept as they are: a fine-tune, e.g. retraining "
                   "a trained network with --noise-p.")
@click.option("--noise-p", type=PROBABILITY, default=0.0, show_default=True,
              help="Train with bit flips: at every step each allowed float32 bit of the --noise-targets flips with "
                   "this probability in the forward pass (FlipBits' own flips, new ones each step, keyed by --seed); "
                   "the gradient passes straight through.  0: no flips.")
@click.option("--noise-targets", type=click.Choice(NOISE_TARGETS), default="all", show_default=True,
              help="What flips in training: weights (Conv and Linear weights and biases), activations (ReLU and "
                   "max-pool outputs and the logits, the activation sites of the exported model) or all.")
@click.option("--noise-bits", default="all", show_default=True,
              help="Bits that may flip in training: all, sign, exponent, mantissa or a float32 mask like 0x7fffff.")
def train(name, width, epochs, batch_size, lr, steps, seed, device, threads, data, output, checkpoint, init, noise_p,
          noise_targets, noise_bits):
    """Train a CIFAR-10 network, or the language model on the standard library's source, and export it to ONNX."""
    from onnxflip.zoo import require_extra

    require_extra("onnxflip zoo train")
    if name == LANGUAGE_MODEL:
        _train_lm(batch_size=batch_size, lr=lr, steps=steps, seed=seed, device=device, threads=threads,
                  output=output)
        return
    _refuse_with(f"--model {name}", ["steps"], f"--model {LANGUAGE_MODEL}")
    if init is not None and init.resolve() == (checkpoint or output.with_suffix(".ckpt")).resolve():
        raise click.UsageError("--init names this run's own checkpoint: give the trained run's checkpoint")
    if noise_p == 0:
        _refuse_with("training without --noise-p", ["noise_targets", "noise_bits"], "--noise-p above 0")
    from onnxflip.modelio import check_output_path
    from onnxflip.zoo.export import export_onnx
    from onnxflip.zoo.noise import NoiseSettings
    from onnxflip.zoo.train import TrainConfig
    from onnxflip.zoo.train import train as train_model

    try:
        noise = NoiseSettings(p=noise_p, targets=noise_targets, bits=noise_bits)
    except OnnxflipError as exc:
        raise click.UsageError(str(exc)) from None

    check_output_path(output)
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise OnnxflipError("--device cuda: torch finds no usable CUDA GPU here; use --device cpu")
    config = TrainConfig(model=name, width=width, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         device=device, threads=threads, noise=noise, init=None if init is None else str(init))
    result = train_model(config, data_dir=data, checkpoint=checkpoint or output.with_suffix(".ckpt"),
                         progress=sys.stderr.isatty())  # a bar on a terminal; a log gets no bar lines
    params = sum(p.numel() for p in result.model.parameters())
    noisy = {"noise_skipped_steps": result.skipped_steps} if noise.enabled else {}
    export_onnx(result.model, output, info={"model": name, "width": config.width, "epochs": epochs, "seed": seed,
                                            "parameters": params, "test_accuracy": result.test_accuracy,
                                            "train_seconds": round(result.wall_seconds), "noise": noise.to_json(),
                                            **noisy, **({"init": init.name} if init is not None else {})})
    trained_with = (f", trained with flips (p {noise.p:g}, {noise.targets}, bits {noise.bits}; "
                    f"{count(result.skipped_steps, 'step')} skipped)") if noise.enabled else ""
    click.echo(f"wrote {output}: {name} width {config.width}, {params:,} parameters, test accuracy "
               f"{result.test_accuracy:.4f}{trained_with}, {result.wall_seconds / 60:.1f} min")


@cli.command()
@click.option("--models", type=CommaList(MODELS), default=",".join(MODELS), show_default=True,
              help="Zoo models (MODELS-DIR/<name>.onnx and <name>_int8.onnx); the VGGs form the depth series, the "
                   "other networks are judged each on its own.")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=pathlib.Path), default=pathlib.Path("models"),
              show_default=True, help="Folder holding the zoo models.")
@click.option("--formats", type=CommaList(tuple(FORMATS)), default="float16,bfloat16,float32,float64,int8",
              show_default=True, help="Storage formats, one cell per model each.")
@click.option("--targets", type=CommaList(TARGETS), default="activations", show_default=True,
              help="Which stored values flip in every cell.")
@click.option("--bits", type=CommaList(("all", "exponent", "mantissa")), default="all,exponent,mantissa",
              show_default=True, help="Bit fields, one cell each (exponent and mantissa skip int8).")
@click.option("--field-formats", type=CommaList(tuple(f for f in FORMATS if f != "int8")), default=None,
              help="Formats that get the exponent and mantissa cells (default: every float format in --formats for "
                   "the VGGs, float32 for the other networks).")
@click.option("--field-models", type=CommaList(MODELS), default=None,
              help="Models that get the exponent and mantissa cells (default: the shallowest and the deepest VGG "
                   "of --models and every other network).")
@click.option("--samples", type=click.IntRange(1), default=None, help="First N test images (default all).")
@click.option("--p-range", default="1e-9:0.5", show_default=True, callback=_checked_by(SearchSettings.from_range),
              help="LOW:HIGH bracket of each cell's midpoint search, 0 < LOW < HIGH <= 1 (int8 weights and "
                   "biases reach their midpoints above 1e-2).")
@click.option("--precision", type=float, default=0.2, show_default=True,
              help="Each cell's midpoint search stops when its 95% interval is this many decades wide.")
@click.option("--budget", default="10m", show_default=True,
              help="Each cell's search stops after this time (300s, 5m) or number of trials (400), if sooner.")
@click.option("--target-sets", default=";".join("+".join(t) for t in TARGET_SETS), show_default=True,
              callback=_checked_by(parse_target_sets),
              help="Combinations of noisy values whose int8/float32 ratio is measured (needs float32 and int8 in "
                   "--formats), ';'-separated, each '+'-joined; 'none' for no such cells.")
@click.option("--no-float-bias", is_flag=True,
              help="Skip the int8 cells with float32 biases (MODELS-DIR/<name>_int8_floatbias.onnx).")
@click.option("--no-extras", is_flag=True,
              help="Skip the one-direction, nonfinite-policy and write-vs-read-noise sections.")
@NONFINITE_SCORE_OPTION
@MEMORY_FAULTS
@DATA_OPTION
@click.option("--out", type=click.Path(path_type=pathlib.Path), default=pathlib.Path("results/reproduce"),
              show_default=True, help="Results folder: one folder per cell under cells/, report.json, report.md.")
@click.option("--resume", is_flag=True, help="Keep the finished cells in --out and run the rest.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@_apply(EXECUTOR_OPTIONS)
def reproduce(models, models_dir, formats, targets, bits, field_formats, field_models, samples, p_range, precision,
              budget, target_sets, no_float_bias, no_extras, nonfinite_score, memory, data, out, resume, overwrite,
              executor, ray_address):
    """Run the paper's grid of midpoint searches and write report.md.

    One midpoint search per model x format x bit field, then tables of
    midpoints, int8/float32 ratios, exponent vs mantissa, midpoint vs depth,
    write vs read noise, figures, and for each of the paper's findings and
    each network (the VGGs together, each other architecture alone) whether
    the measurement agrees.  Stuck-at cells and ECC (--stuck-at0,
    --stuck-at1, --ecc, --on-detected) apply to every cell and are part of
    its folder name (the write-vs-read-noise cells, which need a memory
    without them, are then left out).
    """
    from onnxflip.campaign.design import Budget
    from onnxflip.campaign.reproduce import GridSpec, run_grid

    _refuse_together(("resume", "overwrite"))
    target_sets = parse_target_sets(target_sets)
    if _given(("target_sets",)) and target_sets and not {"float32", "int8"} <= set(formats):
        raise click.UsageError("--target-sets compares float32 with int8 cells: give --formats with both")
    if field_models is not None and not set(field_models) <= set(models):
        raise click.UsageError("--field-models names models that --models leaves out")
    spec = GridSpec(models=models, formats=formats, targets=targets, bits=bits, field_formats=field_formats,
                    field_models=field_models, samples=samples, extras=not no_extras, target_sets=target_sets,
                    float_bias=not no_float_bias, fault=memory, nonfinite_score=nonfinite_score,
                    search=SearchSettings.from_range(p_range, precision=precision, budget=Budget.parse(budget)))
    command = "onnxflip " + " ".join(click.get_current_context().find_root().obj["argv"])
    with _open_executor(executor, ray_address, "cpu", _TaskLines()) as runs_trials:
        report = run_grid(spec, models_dir=models_dir, data_dir=data, out=out, command=command, resume=resume,
                          overwrite=overwrite, executor=runs_trials)
    click.echo(f"{count(len(report['cells']), 'cell')} in {report['wall_seconds'] / 60:.1f} min; report in "
               f"{out / 'report.md'}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line of error and a non-zero exit status for any problem with the input."""
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        cli.main(args=argv, prog_name="onnxflip", standalone_mode=False, obj={"argv": argv})
    except click.exceptions.Abort:
        click.echo("onnxflip: interrupted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:  # `onnxflip` or `onnxflip zoo` alone: the help, a usage error
        click.echo(exc.format_message(), err=True)
        return exc.exit_code
    except click.ClickException as exc:
        message = " ".join(line.strip() for line in exc.format_message().splitlines())  # click's lists, one line
        click.echo(f"onnxflip: error: {message}", err=True)
        return exc.exit_code
    except OnnxflipError as exc:
        click.echo(f"onnxflip: error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("onnxflip: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
