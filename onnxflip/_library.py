"""Where the compiled FlipBits library is, and ONNX Runtime sessions that load it."""

from __future__ import annotations

import functools
import logging
import os
import pathlib
from collections.abc import Sequence

import onnxruntime as ort

from onnxflip.errors import OnnxflipError

__all__ = ["DOMAIN", "LIBRARY_ENV_VAR", "get_library_path", "make_session", "session_options"]

logger = logging.getLogger(__name__)

DOMAIN = "onnxflip"
LIBRARY_ENV_VAR = "ONNXFLIP_LIBRARY"
_LIBRARY_NAME = "libonnxflip_ops.so"


@functools.cache
def get_library_path() -> str:
    """Path of the FlipBits custom-op library installed with the package, as
    ``SessionOptions.register_custom_ops_library`` takes it.

    ``$ONNXFLIP_LIBRARY`` overrides it, for a library built elsewhere.
    """
    override = os.environ.get(LIBRARY_ENV_VAR)
    if override:
        path = pathlib.Path(override)
        if not path.is_file():
            raise OnnxflipError(f"${LIBRARY_ENV_VAR} names {path}, which does not exist")
        return str(path)
    for folder in _package_lib_dirs():
        candidate = folder / _LIBRARY_NAME
        if candidate.is_file():
            return str(candidate)
    raise OnnxflipError(
        f"the FlipBits library {_LIBRARY_NAME} is not installed with onnxflip; "
        "reinstall the package with `pip install .` (it compiles custom_ops/), "
        f"or point ${LIBRARY_ENV_VAR} at a library you built"
    )


def _package_lib_dirs() -> list[pathlib.Path]:
    import onnxflip

    # An editable install may spread the package over several folders.
    return [pathlib.Path(p) / "lib" for p in onnxflip.__path__]


def session_options(*, threads: int | None = None) -> ort.SessionOptions:
    """``onnxruntime.SessionOptions`` with the FlipBits library registered."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the control inputs are initializers on purpose
    options.register_custom_ops_library(get_library_path())
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def make_session(
    model: bytes | str | os.PathLike[str],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for a model that may contain FlipBits nodes."""
    opts = options or session_options(threads=threads)
    if options is not None:
        opts.register_custom_ops_library(get_library_path())
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=list(providers))
