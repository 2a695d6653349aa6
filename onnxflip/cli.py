"""The ``onnxflip`` command line: argument parsing only; the work is in the Python API."""

from __future__ import annotations

import logging
import pathlib
import sys

import click

from onnxflip.errors import OnnxflipError
from onnxflip.flip import NONFINITE_POLICIES, RANDOMNESS
from onnxflip.formats import FORMATS
from onnxflip.sites import DEFAULT_ACTIVATION_OPS, TARGETS, Selection

__all__ = ["main"]

logger = logging.getLogger("onnxflip")


class CommaList(click.ParamType):
    """A comma-separated list, optionally restricted to known choices."""

    name = "list"

    def __init__(self, choices: tuple[str, ...] | None = None) -> None:
        self.choices = choices

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


PROBABILITY = click.FloatRange(0.0, 1.0)
MODEL_ARG = click.argument("model", type=click.Path(dir_okay=False, path_type=pathlib.Path))
FORMAT_OPTION = click.option(
    "--format", "fmt", type=click.Choice(list(FORMATS)), default="float32", show_default=True,
    help="Number format the values are stored in, hence which bits can flip.",
)
TARGETS_OPTION = click.option(
    "--targets", type=CommaList(TARGETS), default=",".join(TARGETS), show_default=True,
    help="Which stored values flip: activations, weights, biases (comma-separated).",
)
SELECTION_OPTIONS = [
    click.option("--ops", type=CommaList(), default=",".join(DEFAULT_ACTIVATION_OPS), show_default=False,
                 help="Op types whose outputs are activation sites (default: activation functions and pooling)."),
    click.option("--every-intermediate", is_flag=True,
                 help="Make every intermediate float tensor after the first Conv/Gemm/MatMul an activation site."),
    click.option("--include", metavar="REGEX", help="Only sites whose tensor or node name matches."),
    click.option("--exclude", metavar="REGEX", help="Drop sites whose tensor or node name matches."),
    click.option("--no-fold-batchnorm", is_flag=True, help="Keep BatchNormalization nodes instead of folding them into Conv."),
]
FAULT_OPTIONS = [
    click.option("--p", "p", type=PROBABILITY, help="Flip probability of every allowed bit (0->1 and 1->0)."),
    click.option("--p01", type=PROBABILITY, help="Probability that a 0 bit becomes 1."),
    click.option("--p10", type=PROBABILITY, help="Probability that a 1 bit becomes 0."),
    click.option("--bits", default="all", show_default=True,
                 help="Bits that may flip: all, sign, exponent, mantissa, low:K, high:K, or a mask like 0x7f80."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the flips."),
    click.option("--nonfinite", type=click.Choice(NONFINITE_POLICIES), default="keep", show_default=True,
                 help="What becomes of values a flip made NaN or infinite."),
    click.option("--activation-randomness", type=click.Choice(RANDOMNESS), default="per_run", show_default=True,
                 help="per_run: activations draw new flips at every inference; fixed: the same flips each run."),
    click.option("--parameter-randomness", type=click.Choice(RANDOMNESS), default="fixed", show_default=True,
                 help="fixed: weights and biases keep their flips across runs (written once); per_run: new each run."),
]


def _apply(options):
    def decorator(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorator


def _selection(ops, every_intermediate, include, exclude) -> Selection:
    return Selection(activation_ops=tuple(ops), every_intermediate=every_intermediate, include=include, exclude=exclude)


def _config(fmt, targets, selection, no_fold_batchnorm, p, p01, p10, bits, seed, nonfinite, activation_randomness,
            parameter_randomness):
    from onnxflip.flip import resolve_probabilities
    from onnxflip.inject import FaultModel, InjectionConfig

    prob01, prob10 = resolve_probabilities(p, p01, p10)

    def fault(target: str) -> FaultModel | None:
        if target not in targets:
            return None
        randomness = activation_randomness if target == "activations" else parameter_randomness
        return FaultModel(p01=prob01, p10=prob10, bits=bits, seed=seed, nonfinite=nonfinite, randomness=randomness)

    return InjectionConfig(
        format=fmt, activations=fault("activations"), weights=fault("weights"), biases=fault("biases"),
        selection=selection, fold_batchnorm=not no_fold_batchnorm,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Bit-flip fault injection for ONNX models.

    Insert FlipBits operators where a model stores activations, weights and
    biases, in the number format under study, and measure accuracy as flips
    become more likely.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@MODEL_ARG
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="Where to write the injected model.")
@FORMAT_OPTION
@TARGETS_OPTION
@_apply(FAULT_OPTIONS)
@_apply(SELECTION_OPTIONS)
def inject(model, output, fmt, targets, p, p01, p10, bits, seed, nonfinite, activation_randomness,
           parameter_randomness, ops, every_intermediate, include, exclude, no_fold_batchnorm):
    """Write a copy of MODEL with FlipBits at every selected site.

    The probabilities and seed given here are defaults: each target class has
    graph inputs onnxflip_<target>_p01, _p10 and _seed that override them at
    run time.  Load the model with onnxflip.make_session(), or register
    onnxflip.get_library_path() with ONNX Runtime.
    """
    from onnxflip.inject import insert_flipbits
    from onnxflip.modelio import check_output_path, load_model, save_model

    check_output_path(output)
    config = _config(fmt, targets, _selection(ops, every_intermediate, include, exclude), no_fold_batchnorm, p, p01,
                     p10, bits, seed, nonfinite, activation_randomness, parameter_randomness)
    injected = insert_flipbits(load_model(model), config=config)
    save_model(injected, output)
    sites = [n for n in injected.graph if n.op_type == "FlipBits"]
    click.echo(f"wrote {output}: {len(sites)} FlipBits sites, format {fmt}")


@cli.command()
@MODEL_ARG
@FORMAT_OPTION
@TARGETS_OPTION
@click.option("--bits", default="all", show_default=True, help="Bit field, as for inject.")
@_apply(SELECTION_OPTIONS)
def inspect(model, fmt, targets, bits, ops, every_intermediate, include, exclude, no_fold_batchnorm):
    """List the FlipBits sites of MODEL.

    For an injected model, the sites it has; for a clean model, the sites
    inject would create with the same options.
    """
    from onnxflip.report import describe_sites, format_site_table

    rows = describe_sites(model, fmt=fmt, targets=targets, bits=bits, no_fold_batchnorm=no_fold_batchnorm,
                          selection=_selection(ops, every_intermediate, include, exclude))
    click.echo(format_site_table(rows))


@cli.command()
@MODEL_ARG
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="Where to write the converted model.")
@click.option("--format", "fmt", type=click.Choice([f for f in FORMATS if f != "int8"]), required=True,
              help="Storage format to round every stored value through.")
def convert(model, output, fmt):
    """Write MODEL with its stored values in another format, without flips.

    This is what inject computes at p = 0: the clean baseline of a format.
    """
    from onnxflip.inject import convert_format
    from onnxflip.modelio import check_output_path, load_model, save_model

    check_output_path(output)
    save_model(convert_format(load_model(model), format=fmt), output)
    click.echo(f"wrote {output}: format {fmt}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line of error and a non-zero exit status for any problem with the input."""
    try:
        cli.main(args=argv, prog_name="onnxflip", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("onnxflip: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"onnxflip: error: {exc.format_message()}", err=True)
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
