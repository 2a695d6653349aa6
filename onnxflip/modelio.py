"""Reading and writing ONNX models: clear errors on bad files, atomic writes."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxflip.errors import OnnxflipError
from onnxflip.runtime.session import runtime_bytes

__all__ = ["check_output_path", "load_model", "save_model", "write_atomically"]


def load_model(path: str | os.PathLike[str]) -> ir.Model:
    """Load an ONNX file as an ``onnx_ir`` model, with one-line errors for bad files."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise OnnxflipError(f"model file {path} does not exist")
    try:
        proto = onnx.load(str(path))
    except (DecodeError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise OnnxflipError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    except OSError as exc:
        raise OnnxflipError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise OnnxflipError(f"{path} is not an ONNX model (no graph with nodes; the file may be truncated)")
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a broken file
        raise OnnxflipError(f"{path} is not a valid ONNX model: {exc}") from None


def check_output_path(path: str | os.PathLike[str], *, inputs: tuple[pathlib.Path, ...] = ()) -> pathlib.Path:
    """Refuse an output path in a missing or unwritable folder, or one that is an input, before any work is done."""
    out = pathlib.Path(path)
    folder = out.parent if str(out.parent) else pathlib.Path(".")
    if not folder.is_dir():
        blocker = next((a for a in (folder, *folder.parents) if a.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise OnnxflipError(f"output folder {folder}: {blocker} is a file, not a folder")
        raise OnnxflipError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OnnxflipError(f"output folder {folder} is not writable")
    if out.is_dir():
        raise OnnxflipError(f"output path {out} is a folder")
    for source in inputs:
        if out.exists() and source.exists() and out.samefile(source):
            raise OnnxflipError(f"output {out} is the input model; write to another path")
    return out


def save_model(model: ir.Model | onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write a model atomically (temporary file, then rename), at an IR version ONNX Runtime reads."""
    out = check_output_path(path)
    write_atomically(out, runtime_bytes(model))


def _mode_for(out: pathlib.Path) -> int:
    """The mode of the file being replaced, or what a plain open() would give a new one."""
    try:
        return out.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomically(out: pathlib.Path, data: bytes) -> None:
    """Write bytes to a temporary file beside ``out``, then rename it over ``out``."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise OnnxflipError(f"cannot write to {out.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _mode_for(out))
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OnnxflipError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
