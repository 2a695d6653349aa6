"""The compiled FlipBits library: where it is, and the operator's contract it exports.

The library states the operator's contract once (``custom_ops/contract.h``:
element types, enum attributes, attributes with defaults, inputs, outputs,
ECC words, the C entries' parameters) and
exports it as JSON through ``onnxflip_contract()``; :mod:`onnxflip.runtime.contract`
builds Python's view of it from :func:`operator_contract`.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import pathlib

from onnxflip.errors import OnnxflipError

__all__ = ["LIBRARY_ENV_VAR", "get_library_path", "load_library", "operator_contract"]

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


@functools.cache
def load_library() -> ctypes.CDLL:
    """The library loaded with ctypes, for its C entry points (ONNX Runtime loads it on its own)."""
    path = get_library_path()
    try:
        return ctypes.CDLL(path)
    except OSError as exc:
        raise OnnxflipError(f"cannot load the FlipBits library {path}: {exc}") from None


@functools.cache
def operator_contract() -> dict:
    """The operator's contract as the library states it: a dict with ``domain``, ``op_type``, ``version``,
    ``element_types``, ``enums``, ``attributes`` and ``inputs`` (see ``custom_ops/contract.h``)."""
    library = load_library()
    try:
        query = library.onnxflip_contract
    except AttributeError:
        raise OnnxflipError(
            f"the FlipBits library {get_library_path()} is too old (no onnxflip_contract); rebuild it"
        ) from None
    query.restype = ctypes.c_char_p
    query.argtypes = []
    return json.loads(query().decode())
