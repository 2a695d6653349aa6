"""onnxflip: bit-flip fault injection for ONNX models, run by ONNX Runtime."""

from __future__ import annotations

from onnxflip._library import DOMAIN, get_library_path, make_session, session_options
from onnxflip.bits import element_type, field_mask
from onnxflip.errors import OnnxflipError
from onnxflip.flip import flip_bits

__all__ = [
    "DOMAIN",
    "OnnxflipError",
    "element_type",
    "field_mask",
    "flip_bits",
    "get_library_path",
    "make_session",
    "session_options",
]
__version__ = "0.1.0"
