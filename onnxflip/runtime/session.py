"""The one ONNX Runtime session builder: the FlipBits library, options, providers, IR version.

Every session onnxflip creates comes from :func:`make_session`, and every
model handed to ONNX Runtime goes through :func:`runtime_proto` (or
:func:`runtime_bytes`), which lowers the IR version to :data:`IR_VERSION`.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Mapping

import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxflip.errors import OnnxflipError
from onnxflip.runtime.library import get_library_path

__all__ = [
    "BOUND_PER_SESSION",
    "IR_VERSION",
    "PROVIDERS",
    "bound_per_session",
    "external_data_folder",
    "make_session",
    "read_external_data_from",
    "run_session",
    "runtime_bytes",
    "runtime_proto",
    "session_options",
    "session_providers",
]

# The newest IR version the ONNX Runtime releases onnxflip supports all read.
IR_VERSION = 10

# Provider names as onnxflip's options spell them, and the ONNX Runtime providers each asks for.
PROVIDERS: Mapping[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}
# Where a model's initializers bound per session say their data lies: nowhere to read, each session binds its own.
BOUND_PER_SESSION = "onnxflip-bound-per-session"
_ORT_DEFAULT_SEVERITY = 2  # ONNX Runtime's own default for its process-wide logger: warnings


def runtime_proto(model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    """The model as a proto at an IR version ONNX Runtime reads; ``model`` is not changed (a proto already
    readable is returned as it is, any other is copied)."""
    if isinstance(model, ir.Model):
        proto = ir.serde.serialize_model(model)
    elif model.ir_version and model.ir_version <= IR_VERSION:
        return model
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    proto.ir_version = min(proto.ir_version or IR_VERSION, IR_VERSION)
    return proto


def runtime_bytes(model: ir.Model | onnx.ModelProto) -> bytes:
    """The serialised model at an IR version ONNX Runtime reads."""
    return runtime_proto(model).SerializeToString()


def bound_per_session(proto: onnx.ModelProto, names: set[str]) -> bytes:
    """The serialised model with the named main-graph initializers left without data: each session binds its
    own arrays to them (``SessionOptions.add_external_initializers``) before ONNX Runtime optimises the
    graph, so they stay constants it may pre-pack.  ``proto`` is changed."""
    for init in proto.graph.initializer:
        if init.name in names:
            placeholder = onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims,
                                           data_location=onnx.TensorProto.EXTERNAL)
            placeholder.external_data.add(key="location", value=BOUND_PER_SESSION)
            init.CopyFrom(placeholder)
    return proto.SerializeToString()


def external_data_folder(model: ir.Model) -> str | None:
    """The folder a model's external tensors are read from (None when every tensor is in memory).

    A model handed to ONNX Runtime as bytes keeps such tensors as references
    to a file relative to that folder, which the session must be told
    (:func:`read_external_data_from`).
    """
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                return str(value.const_value.base_dir)
    return None


def read_external_data_from(options: ort.SessionOptions, folder: str | None) -> ort.SessionOptions:
    """Options whose session reads the external data files of a model given as bytes from ``folder``."""
    if folder:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    return options


def session_options(*, threads: int | None = None) -> ort.SessionOptions:
    """``onnxruntime.SessionOptions`` with the FlipBits library registered and warnings off.

    Intra-op threads do not spin between runs, and CPU memory comes from one
    arena that all sessions of the process share (see below).  Log severity 3
    (errors only): an injected model's control inputs are initializers that
    are also graph inputs on purpose (overridable defaults), and ONNX Runtime
    warns about each of them otherwise.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Idle intra-op threads spin for a while after each run; a campaign holds several sessions (the clean
    # model, one per trial), and the spinning threads of one steal the cores of the next: with spinning a
    # trial's first run took 5.1x a warm clean pass, without it 1.5x (benchmarks/bench_evaluate.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # A session's own arena starts empty, so a trial's fresh session faulted in its activations' pages
    # (hundreds of MB at batch 500) on its first runs and gave them back when it was dropped; sharing the
    # process's arena lets every trial run in memory an earlier session already touched.
    _register_shared_cpu_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.register_custom_ops_library(get_library_path())
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


@functools.cache
def _register_shared_cpu_arena() -> None:
    """Register a CPU arena with ONNX Runtime's process-wide environment (once per process), for sessions
    whose options set ``session.use_env_allocators``."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, None)


def make_session(
    model: bytes | str | os.PathLike[str] | ir.Model | onnx.ModelProto,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for a model that may contain FlipBits nodes.

    ``provider`` is a key of :data:`PROVIDERS`.  ``options``, when given,
    come from :func:`session_options` (the library registered), adjusted by
    the caller.  Asking for ``cuda`` where ONNX Runtime cannot run it raises
    OnnxflipError instead of falling back to the CPU.
    """
    if provider not in PROVIDERS:
        raise OnnxflipError(f"provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    opts = options if options is not None else session_options(threads=threads)
    if options is not None and threads is not None:
        opts.intra_op_num_threads = threads
    if isinstance(model, ir.Model):
        read_external_data_from(opts, external_data_folder(model))
    if isinstance(model, (ir.Model, onnx.ModelProto)):
        source: bytes | str = runtime_bytes(model)
    else:
        source = model if isinstance(model, bytes) else str(model)
    wanted = PROVIDERS[provider]
    if provider == "cpu":
        return _loaded(source, opts, wanted)
    if wanted[0] not in ort.get_available_providers():
        raise OnnxflipError(
            f"provider {provider}: this onnxruntime build has no {wanted[0]} (install onnxruntime-gpu), "
            "or use provider cpu"
        )
    session = _quiet_session(source, opts, wanted)
    if wanted[0] not in session.get_providers():
        raise OnnxflipError(
            f"provider {provider}: ONNX Runtime cannot start {wanted[0]} here (no usable GPU, driver, "
            "or CUDA/cuDNN libraries); use provider cpu"
        )
    return session


def _loaded(source: bytes | str, options: ort.SessionOptions, providers: tuple[str, ...]) -> ort.InferenceSession:
    """The session, or OnnxflipError with ONNX Runtime's reason in one line where it cannot load the model (a
    model onnx.checker accepts may still be one ONNX Runtime refuses: a type its kernels lack, say)."""
    try:
        return ort.InferenceSession(source, options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors (Fail, InvalidGraph, ...) share no base class
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(exc).strip().splitlines()[0] if str(exc).strip()
                        else type(exc).__name__)
        raise OnnxflipError(f"ONNX Runtime cannot load the model: {reason}") from None


def _quiet_session(source: bytes | str, options: ort.SessionOptions, providers: tuple[str, ...]) -> ort.InferenceSession:
    """A session whose provider probing does not print: ONNX Runtime logs a failed provider in several
    multi-line messages on its process-wide logger, and the caller checks the providers instead."""
    ort.set_default_logger_severity(4)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _loaded(source, options, providers)
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def run_session(run, *args):
    """``run(*args)`` (a session's ``run`` or ``run_with_ort_values``), with ONNX Runtime's refusal of the
    data (an index outside a table, a sequence longer than the model's positions) as OnnxflipError in one line."""
    try:
        return run(*args)
    except Exception as exc:  # ONNX Runtime's errors (InvalidArgument, Fail, ...) share no base class
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        text = str(exc).strip()
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text.splitlines()[0] if text else type(exc).__name__)
        raise OnnxflipError(f"ONNX Runtime cannot run the model on this data: {reason}") from None


def session_providers(session: ort.InferenceSession) -> tuple[str, ...]:
    """The ONNX Runtime providers a session really runs on, in priority order (record these, not the request)."""
    return tuple(session.get_providers())
