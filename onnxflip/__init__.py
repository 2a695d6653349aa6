"""onnxflip: bit-flip fault injection for ONNX models, run by ONNX Runtime."""

from __future__ import annotations

from onnxflip.bits import field_mask
from onnxflip.errors import OnnxflipError
from onnxflip.runtime.contract import DOMAIN, element_type
from onnxflip.runtime.flip import flip_bits
from onnxflip.runtime.library import get_library_path
from onnxflip.runtime.session import make_session, session_options, session_providers

__all__ = [
    "DOMAIN",
    "OnnxflipError",
    "element_type",
    "field_mask",
    "flip_bits",
    "get_library_path",
    "make_session",
    "session_options",
    "session_providers",
]
__version__ = "0.1.0"
