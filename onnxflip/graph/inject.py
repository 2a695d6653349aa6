"""Insert FlipBits where a model stores values, in the chosen storage format: a sequence of passes.

    model -> LiftStoredConstantsPass -> FoldBatchNormPass -> InferShapesPass
          (float64, compute native: -> ComputeInFloat64Pass -> InferShapesPass) -> (find sites)
          -> StoreInFormatPass (float16, bfloat16, compute native: -> RoundToFormatPass)
          -> InsertFlipBitsPass -> LowerFloat64Pass -> injected model
          (int8 QDQ: -> StoreInt8AsUint8Pass -> NhwcIntegerConvPass, the same
          flips on the tensors ONNX Runtime's integer kernels read, see
          :mod:`onnxflip.graph.passes.qlinear`)

``convert_format`` runs the same sequence up to StoreInFormatPass (and
RoundToFormatPass): the clean model in a format, what an injected model
computes at p = 0; its float64 graph keeps its float64 Conv nodes (ONNX
Runtime's CPU provider has no kernel for them: LowerFloat64Pass writes them
in other ops where the model is injected).  Both work on a
copy; the caller's model is not changed.  A model that already carries an
injection record (:mod:`onnxflip.graph.record`) is refused (inject the
original again).  A
model ``convert`` wrote stores its values in its format already: its sites
are the values its casts store and its initializers of that format, flipped
as they are (the same sites, in the same order, as the original injected in
that format); converting it again is refused.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.faults import ecc_word
from onnxflip.graph.config import InjectionConfig
from onnxflip.graph.coverage import EXCLUDED_BY_SELECTION, Coverage, coverage_of
from onnxflip.graph.formats import (
    COMPUTE_METADATA_KEY,
    FORMAT_METADATA_KEY,
    StorageFormat,
    converted_compute,
    converted_format,
    is_qdq,
    is_quantised,
    model_format,
    native_float_type,
    require_format_fits,
    storage_format,
    written_compute,
)
from onnxflip.graph.inputs import check_graph
from onnxflip.graph.passes import (
    ComputeInFloat64Pass,
    FoldBatchNormPass,
    InferShapesPass,
    InsertFlipBitsPass,
    LiftStoredConstantsPass,
    LowerFloat64Pass,
    NhwcIntegerConvPass,
    RoundToFormatPass,
    StoreInFormatPass,
    StoreInt8AsUint8Pass,
)
from onnxflip.graph.passes.fold_batchnorm import FOLDED_KEY
from onnxflip.graph.record import is_recorded
from onnxflip.graph.sites import Selection, Site, all_nodes, find_sites
from onnxflip.graph.stored import stored_tensors
from onnxflip.runtime.contract import DOMAIN, ElementType, element_type

__all__ = ["convert_format", "insert_flipbits", "is_injected", "plan_sites", "resolve_config", "rounding_passes",
           "site_coverage", "why_no_sites"]

logger = logging.getLogger(__name__)


def _run(passes: list[ir.passes.PassBase], model: ir.Model) -> ir.Model:
    """Run passes in sequence; a user error inside one surfaces as itself, not as the pass manager's wrapper."""
    try:
        return ir.passes.Sequential(*passes)(model).model
    except ir.passes.PassError as exc:
        cause = exc.__cause__
        while isinstance(cause, ir.passes.PassError):
            cause = cause.__cause__
        if isinstance(cause, OnnxflipError):
            raise cause from None
        raise


def is_injected(model: ir.Model) -> bool:
    """Whether the model holds FlipBits (or says it was injected)."""
    return is_recorded(model) or any(n.domain == DOMAIN for n in all_nodes(model.graph))


def _prepare(model: ir.Model, config: InjectionConfig) -> ir.Model:
    if is_injected(model):
        raise OnnxflipError("the model is already injected; inject the original model instead")
    check_graph(model)
    passes = [LiftStoredConstantsPass(), *([FoldBatchNormPass()] if config.fold_batchnorm else [])]
    prepared = _run([*passes, InferShapesPass()], model.clone())
    if config.format == "float64" and config.compute == "native" and _computes_in_float32(prepared):
        prepared = _run([ComputeInFloat64Pass(), InferShapesPass()], prepared)
    prepared.graph.meta.update(model.graph.meta)  # e.g. that the model came with external data
    return prepared


def _computes_in_float32(model: ir.Model) -> bool:
    return (converted_format(model) is None and not is_quantised(model)
            and native_float_type(model) == ir.DataType.FLOAT)


def resolve_config(config: InjectionConfig, model: ir.Model) -> InjectionConfig:
    """``config`` with the model's own format and compute where they are None: the format of
    :func:`in_model_format`, the compute a converted model was written in (the only one it computes), else
    native."""
    config = in_model_format(config, model)
    if config.compute is None:
        config = dataclasses.replace(config, compute=written_compute(model, config.format) or "native")
    return config


def plan_sites(model: ir.Model, config: InjectionConfig) -> tuple[ir.Model, StorageFormat, list[Site]]:
    """A prepared copy of the model (BN folded, shapes inferred, float64 retyped where it computes natively),
    the format as it applies, and the sites."""
    config = resolve_config(config, model)
    _check_compute(model, config)
    prepared = _prepare(model, config)
    fmt = require_format_fits(prepared, storage_format(config.format))
    converted = converted_format(prepared) is not None  # its stored values are the outputs of convert's casts
    sites = find_sites(prepared, targets=config.targets, selection=config.selection,
                       compute_dtype=fmt.dtype if converted else native_float_type(prepared), stored_casts=converted)
    for site in sites:
        if fmt.emulated:
            site.stored_dtype = fmt.dtype
        try:
            etype = element_type(int(site.stored_dtype))
        except OnnxflipError:
            raise OnnxflipError(f"site {site.name} holds {site.stored_dtype.name}, which FlipBits does not flip") from None
        _check_ecc_site(prepared, site, config.fault_model(site.target).ecc, etype)
    return prepared, fmt, sites


def site_coverage(prepared: ir.Model, sites: list[Site], config: InjectionConfig) -> Coverage:
    """Which stored parameters of a prepared model (:func:`plan_sites`) the sites expose, before any pass runs."""
    return coverage_of(stored_tensors(prepared.graph), sites, config.targets,
                       folded_batchnorms=prepared.graph.meta.get(FOLDED_KEY, 0))


def why_no_sites(coverage: Coverage, selection: Selection | None = None) -> str:
    """Why a selection found no site: its --include pattern matched none (or its --exclude pattern dropped
    every one), naming a few of the parameter sites there are without it; else no activation of a compute op,
    and what keeps each parameter out."""
    selection = selection or Selection()
    patterns = [f"--{name} {pattern!r}" for name, pattern in (("include", selection.include),
                                                              ("exclude", selection.exclude)) if pattern is not None]
    left_out = [row.tensor for row in coverage.not_sites() if row.reason == EXCLUDED_BY_SELECTION]
    if selection.include is not None or (patterns and left_out):
        it = "it" if len(patterns) == 1 else "them"
        what = (f"the {' and '.join(patterns)} patterns leave no site" if len(patterns) == 2 else
                f"the {patterns[0]} pattern matches no site's tensor or node name" if selection.include is not None
                else f"the {patterns[0]} pattern drops every site")
        named = f"sites without {it} include {', '.join(left_out[:4])}{', ...' if len(left_out) > 4 else ''}; " \
            if left_out else ""
        return f"{what} ({named}onnxflip inspect without {it} lists them)"
    reasons = list(dict.fromkeys(row.reason for row in coverage.not_sites()))
    parameters = (f"its {len(coverage.parameters)} stored parameter tensor(s) are not sites: {'; '.join(reasons[:3])}"
                  if coverage.parameters else "it stores no parameter tensor")
    return f"no stored activation follows a Conv, Gemm, MatMul or embedding, and {parameters}"


def _check_compute(model: ir.Model, config: InjectionConfig) -> None:
    """Refuse a compute the model cannot be run in: float32 for a model that computes in another float type
    itself, another compute than the one ``convert`` wrote a model in, float32 for int8."""
    if config.compute == "native":
        written = converted_compute(model)
        if written == "float32" and converted_format(model) == config.format:
            raise OnnxflipError(f"the model was converted to {config.format} with --compute float32; use "
                                "--compute float32, or convert the original model again")
        return
    if config.format == "int8":
        raise OnnxflipError("--compute float32 emulates a float format in float32; int8 computes as ONNX Runtime's "
                            "quantised kernels do")
    if converted_compute(model) == "native" and converted_format(model) is not None:
        raise OnnxflipError(f"the model was converted to {config.format} with --compute native; use --compute "
                            "native, or convert the original model again")
    native = native_float_type(model)
    if not is_quantised(model) and native != ir.DataType.FLOAT and converted_format(model) is None:
        raise OnnxflipError(f"the model computes in {native.name.lower()} itself; --compute float32 emulates a "
                            "format on a float32 model: give the float32 original")


def _check_ecc_site(model: ir.Model, site: Site, ecc: str, etype: ElementType) -> None:
    """Raise OnnxflipError where ``ecc`` cannot protect the site: a width it has no code for, or a
    site inside an If/Loop/Scan body, whose word counts cannot reach the main graph's counts output."""
    if ecc_word(ecc, etype) is None:
        return
    if site.value.graph is not model.graph:
        raise OnnxflipError(f"site {site.name} lies inside an If/Loop/Scan body, where ecc {ecc} cannot count "
                            "its words; exclude it from the selection (--exclude)")


def in_model_format(config: InjectionConfig, model: ir.Model) -> InjectionConfig:
    """``config``, whose format None means the model's own (:func:`~onnxflip.graph.formats.model_format`: int8
    for a quantised model, else the float type it computes in), with that format."""
    return config if config.format is not None else dataclasses.replace(config, format=model_format(model))


def insert_flipbits(model: ir.Model, *, config: InjectionConfig | None = None) -> ir.Model:
    """A copy of ``model`` with FlipBits at every selected site; ``model`` is not changed.

    ``config`` defaults to ``InjectionConfig()`` (float32, every target, p = 0); a format of None is the
    model's own (:func:`in_model_format`).  Raises OnnxflipError when no site matches the selection.
    """
    config = resolve_config(config or InjectionConfig(), model)
    prepared, fmt, sites = plan_sites(model, config)
    coverage = site_coverage(prepared, sites, config)
    if not sites:
        raise OnnxflipError(f"no site matches the selection (targets {', '.join(config.targets) or 'none'}, format "
                            f"{config.format}): {why_no_sites(coverage, config.selection)}")
    passes = [StoreInFormatPass(fmt, sites), *rounding_passes(fmt, config), InsertFlipBitsPass(config, sites, coverage),
              LowerFloat64Pass(refuse=_computes_in_float32(model))]
    if config.format == "int8" and is_qdq(prepared):  # the same flips, on the tensors ONNX Runtime's integer kernels read
        passes += [StoreInt8AsUint8Pass(), NhwcIntegerConvPass()]
    result = _run(passes, prepared)
    logger.info("inserted FlipBits at %d sites", len(sites))
    return result


def rounding_passes(fmt: StorageFormat, config: InjectionConfig) -> list[ir.passes.PassBase]:
    """float16 and bfloat16 computed natively: every op's result rounded to the format."""
    return [RoundToFormatPass(fmt)] if fmt.emulated and config.compute == "native" else []


def convert_format(model: ir.Model, *, format: str, compute: str = "native",
                   selection: Selection | None = None) -> ir.Model:
    """The clean model in a storage format: what an injected model computes at p = 0.

    float16, bfloat16 and float64 round every stored value (the sites of all
    three target classes) through the format, and compute as ``compute``
    says (see :mod:`onnxflip.graph.formats`); float32 only folds BatchNorm.
    The same site logic as :func:`insert_flipbits`.  A float64 model
    computed natively is a float64 graph: it needs no format recorded.
    """
    if format == "int8":
        raise OnnxflipError("int8 models come from `onnxflip quantize`, not from convert")
    converted = converted_format(model)
    if converted is not None:
        raise OnnxflipError(f"the model is already converted to {converted}; convert the original model")
    if is_quantised(model):
        raise OnnxflipError("the model is quantised: convert writes float formats of a float model; inject or "
                            "evaluate the int8 model as it is")
    config = InjectionConfig(format=format, compute=compute, selection=selection or Selection())
    prepared, fmt, sites = plan_sites(model, config)
    result = _run([StoreInFormatPass(fmt, sites), *rounding_passes(fmt, config)], prepared)
    if fmt.emulated:
        result.metadata_props[FORMAT_METADATA_KEY] = format
        result.metadata_props[COMPUTE_METADATA_KEY] = compute
    return result
