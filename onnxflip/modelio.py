"""Reading and writing ONNX models: clear errors on bad files, atomic writes, external data kept external.

A model whose tensors live in an external data file is loaded without
reading that file into memory (onnx_ir maps it when a tensor is used); it and every model derived from it
(inject, convert, quantize) is written with its tensors in a data file next to the output, named after
it (``out.onnx`` -> ``out.onnx.data``).  A model whose tensors together
exceed ``EXTERNAL_DATA_BYTES`` is written the same way, so models beyond
protobuf's 2 GB limit load and save.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import tempfile

import onnx
import onnx_ir as ir
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from onnxflip.errors import OnnxflipError
from onnxflip.graph.inputs import check_graph
from onnxflip.runtime.session import IR_VERSION, runtime_bytes

__all__ = [
    "EXTERNAL_DATA_BYTES",
    "check_output_path",
    "external_data_path",
    "has_external_data",
    "load_model",
    "save_model",
    "write_atomically",
]

logger = logging.getLogger(__name__)

# Above this many bytes of tensors, a model is written with external data (protobuf refuses 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30
_EXTERNAL_KEY = "onnxflip.external_data"
# In a model written with external data, tensors of more bytes than this go to the data file.
EXTERNAL_TENSOR_BYTES = 64


def _tensors(graph: onnx.GraphProto):
    """Initializers of a graph proto and of its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _tensors(sub)


def _check_external_files(proto: onnx.ModelProto, path: pathlib.Path) -> bool:
    """Whether the model keeps tensors in external data files; refuses one whose file is missing."""
    external = False
    for tensor in _tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        external = True
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not (path.parent / location).is_file():
            raise OnnxflipError(f"{path} keeps tensor {tensor.name} in external data file {location}, "
                                f"which does not exist next to it")
    return external


def _check_proto(proto: onnx.ModelProto, path: pathlib.Path, *, external: bool) -> None:
    """Warn about a model onnx.checker rejects (ONNX Runtime may still run it)."""
    try:
        onnx.checker.check_model(str(path) if external else proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        logger.warning("%s does not pass onnx.checker: %s", path, first)


def _refuse_sparse(graph: onnx.GraphProto, path: pathlib.Path) -> None:
    """Refuse a sparse tensor (a sparse initializer, a Constant's sparse_value) in one line: onnx_ir reads none."""
    sparse = [t.values.name or "a sparse initializer" for t in graph.sparse_initializer]
    sparse += [node.name or node.output[0] for node in graph.node if node.op_type == "Constant"
               and any(a.name == "sparse_value" for a in node.attribute)]
    if sparse:
        raise OnnxflipError(f"{path} holds a sparse tensor ({sparse[0]}), which onnxflip cannot read; store it as "
                            "a dense tensor")


def _holds_maps(type_proto: onnx.TypeProto) -> bool:
    if type_proto.HasField("map_type"):
        return True
    return type_proto.HasField("sequence_type") and _holds_maps(type_proto.sequence_type.elem_type)


def _untype_maps(graph: onnx.GraphProto) -> None:
    """Drop the declared type of outputs and intermediate values that are maps or sequences of maps (a
    scikit-learn classifier's ZipMap output): onnx_ir reads no map type, and ONNX Runtime infers it again."""
    for value in (*graph.output, *graph.value_info):
        if _holds_maps(value.type):
            value.ClearField("type")


def load_model(path: str | os.PathLike[str]) -> ir.Model:
    """Load an ONNX file as an ``onnx_ir`` model, with one-line errors for bad files."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise OnnxflipError(f"{path} is a folder, not a model file")
    if not path.is_file():
        raise OnnxflipError(f"model file {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, json_format.ParseError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError,
            RuntimeError, UnicodeDecodeError) as exc:
        raise OnnxflipError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    except OSError as exc:
        raise OnnxflipError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not proto.HasField("graph"):
        raise OnnxflipError(f"{path} is not an ONNX model (no graph; the file may be truncated)")
    if len(proto.graph.node) == 0:
        raise OnnxflipError(f"{path} has an empty graph (no nodes): there is nothing to run")
    external = _check_external_files(proto, path)
    _check_proto(proto, path, external=external)
    _refuse_sparse(proto.graph, path)
    _untype_maps(proto.graph)
    serde_logger = logging.getLogger("onnx_ir.serde")
    level = serde_logger.level
    serde_logger.setLevel(logging.ERROR)  # an undefined input is reported below, in one line
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a broken file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxflipError(f"{path} is not a valid ONNX model: {first}") from None
    finally:
        serde_logger.setLevel(level)
    ir.external_data.set_base_dir(model.graph, path.parent)
    check_graph(model)
    if external:
        model.graph.meta[_EXTERNAL_KEY] = True  # kept by clones and passes: the output is written external too
    return model


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


def external_data_path(out: pathlib.Path) -> pathlib.Path:
    """Where the external data of a model written to ``out`` goes."""
    return out.with_name(f"{out.name}.data")


def has_external_data(model: ir.Model) -> bool:
    """Whether the model was loaded from a file with external data (or derives from one)."""
    return bool(model.graph.meta.get(_EXTERNAL_KEY))


def _needs_external_data(model: ir.Model) -> bool:
    if has_external_data(model):
        return True
    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                return True
            total += tensor.nbytes if tensor is not None else 0
    return total > EXTERNAL_DATA_BYTES


def save_model(
    model: ir.Model | onnx.ModelProto, path: str | os.PathLike[str], *, external_data: bool | None = None
) -> None:
    """Write a model atomically (temporary file, then rename), at an IR version ONNX Runtime reads.

    External data stays external: a model loaded with external tensors (see
    :func:`has_external_data`), or larger than ``EXTERNAL_DATA_BYTES``, or
    any model when ``external_data`` is True, is written with its tensors in
    :func:`external_data_path`.  ``model`` is not changed.
    """
    out = check_output_path(path)
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    if not (external_data if external_data is not None else _needs_external_data(model)):
        write_atomically(out, runtime_bytes(model))
        return
    ir_version = model.ir_version
    model.ir_version = min(ir_version or IR_VERSION, IR_VERSION)  # as runtime_proto does, on the model saved here
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        ir.save(model, tmp, external_data=external_data_path(out).name, size_threshold_bytes=EXTERNAL_TENSOR_BYTES)
        os.chmod(tmp, _mode_for(out))
        os.replace(tmp, out)
    except OSError as exc:
        raise OnnxflipError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        model.ir_version = ir_version
        with contextlib.suppress(OSError):
            os.unlink(tmp)


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
