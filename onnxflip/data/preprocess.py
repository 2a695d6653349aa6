"""Image preprocessing: resize, centre crop, scale, mean/std, layout and channel order.

A ``Preprocess`` is given as JSON (text or a ``.json`` file), as a preset
name, or stored in a model's metadata under ``onnxflip.preprocess``::

    {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
     "std": [0.229, 0.224, 0.225], "layout": "NCHW", "channels": "RGB"}

The steps are those of torchvision's ``Resize(resize)``, ``CenterCrop(crop)``,
``ToTensor()`` and ``Normalize(mean, std)`` on a PIL image, in that order:

* ``resize``: an integer resizes the shorter side to it (aspect ratio kept),
  ``[height, width]`` resizes to exactly that; bilinear, as PIL does it.
* ``crop``: an integer or ``[height, width]``, taken from the centre.
* ``scale`` (default true): divide the 0..255 pixels by 255.
* ``mean``, ``std`` (default 0 and 1): ``(x - mean) / std`` per channel,
  given in the order of the channels the model takes.
* ``channels``: ``RGB`` (default) or ``BGR``.
* ``layout``: ``NCHW`` or ``NHWC``; left out, it is read from the model's
  input shape (the axis of size 3), else NCHW.

With neither ``resize`` nor ``crop``, images are resized to the model's
input size when that size is fixed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxflip.errors import OnnxflipError

__all__ = ["LAYOUTS", "PREPROCESS_METADATA_KEY", "PRESETS", "Preprocess"]

logger = logging.getLogger(__name__)

PREPROCESS_METADATA_KEY = "onnxflip.preprocess"
LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": {"resize": [32, 32], "layout": "NCHW", "channels": "RGB"},
    "imagenet": {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}


def _size(value: Any, key: str) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return (value[0], value[1])
    raise OnnxflipError(f"preprocessing {key} must be a positive integer or [height, width], not {value!r}")


def _triple(value: Any, key: str, *, positive: bool = False) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)):
        raise OnnxflipError(f"preprocessing {key} must be 3 numbers (one per channel), not {value!r}")
    if positive and min(value) <= 0:
        raise OnnxflipError(f"preprocessing {key} must be positive, not {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input; see the module docstring."""

    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    scale: bool = True
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str | None = None
    channels: str = "RGB"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields once here
        set_(self, "resize", _size(self.resize, "resize"))
        set_(self, "crop", _size(self.crop, "crop"))
        set_(self, "mean", _triple(self.mean, "mean"))
        set_(self, "std", _triple(self.std, "std", positive=True))
        if not isinstance(self.scale, bool):
            raise OnnxflipError(f"preprocessing scale must be true or false, not {self.scale!r}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise OnnxflipError(f"preprocessing layout must be NCHW or NHWC, not {self.layout!r}")
        if self.channels not in CHANNEL_ORDERS:
            raise OnnxflipError(f"preprocessing channels must be RGB or BGR, not {self.channels!r}")

    # --- parsing ---------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Any, *, where: str = "preprocessing spec") -> Preprocess:
        if not isinstance(values, dict):
            raise OnnxflipError(f"{where} must be a JSON object like {{\"resize\": 256, \"crop\": 224}}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise OnnxflipError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**values)

    @classmethod
    def parse(cls, spec: str) -> Preprocess:
        """A spec given as JSON text, a path to a .json file, or a preset name (cifar10, imagenet)."""
        text = spec.strip()
        if text in PRESETS:
            return cls.from_dict(PRESETS[text], where=f"preset {text}")
        if not text.startswith(("{", "[")):
            path = pathlib.Path(text).expanduser()
            if not path.is_file():
                raise OnnxflipError(
                    f"preprocessing spec {spec!r} is not JSON, an existing .json file or a preset "
                    f"({', '.join(PRESETS)})"
                )
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise OnnxflipError(f"cannot read preprocessing spec {path}: {exc}") from None
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OnnxflipError(f"preprocessing spec is not valid JSON ({exc})") from None
        return cls.from_dict(values)

    def as_dict(self) -> dict[str, Any]:
        """The spec as a JSON object (the keys that are set)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    # --- applying --------------------------------------------------------------------------------

    def for_input(self, shape: tuple | None) -> Preprocess:
        """This spec completed from a model input's shape: the layout, and a resize when none is given."""
        spec = self
        if shape is None or len(shape) != 4:
            return spec if spec.layout else dataclasses.replace(spec, layout="NCHW")
        if spec.layout is None:
            layout = "NHWC" if shape[3] == 3 and shape[1] != 3 else "NCHW"
            spec = dataclasses.replace(spec, layout=layout)
        height, width = (shape[2], shape[3]) if spec.layout == "NCHW" else (shape[1], shape[2])
        if spec.resize is None and spec.crop is None and isinstance(height, int) and isinstance(width, int):
            spec = dataclasses.replace(spec, resize=(height, width))
        return spec

    def image(self, image) -> np.ndarray:
        """Resize and crop a PIL image: uint8 RGB pixels (H, W, 3)."""
        from PIL import Image

        image = image.convert("RGB")
        if self.resize is not None:
            width, height = image.size
            if isinstance(self.resize, int):
                short, long = sorted((width, height))
                new_short, new_long = self.resize, int(self.resize * long / short)
                size = (new_short, new_long) if width <= height else (new_long, new_short)
            else:
                size = (self.resize[1], self.resize[0])
            if size != image.size:
                image = image.resize(size, Image.Resampling.BILINEAR)
        if self.crop is not None:
            crop_h, crop_w = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
            width, height = image.size
            if crop_h > height or crop_w > width:
                raise OnnxflipError(f"image of {width}x{height} is smaller than the crop {crop_w}x{crop_h}")
            top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)
            image = image.crop((left, top, left + crop_w, top + crop_h))
        return np.asarray(image, dtype=np.uint8)

    def array(self, pixels: np.ndarray, *, dtype: np.dtype | str = np.float32) -> np.ndarray:
        """uint8 RGB pixels (N, H, W, 3) -> the model's input: scaled, normalised, channel order and layout.

        One float array is allocated (layout and channel order are views of the uint8 pixels) and
        normalised in place, so a batch costs its own size once."""
        view = pixels[..., ::-1] if self.channels == "BGR" else pixels
        shape = (1, 3, 1, 1)
        if self.layout != "NHWC":
            view = view.transpose(0, 3, 1, 2)
        else:
            shape = (1, 1, 1, 3)
        x = np.ascontiguousarray(view, dtype=np.float32)
        if self.scale:
            x /= np.float32(255.0)
        x -= np.asarray(self.mean, np.float32).reshape(shape)
        x /= np.asarray(self.std, np.float32).reshape(shape)
        return x if x.dtype == np.dtype(dtype) else x.astype(dtype)


def from_metadata(metadata: dict[str, str]) -> Preprocess | None:
    """The spec stored under ``onnxflip.preprocess`` in a model's metadata, if any."""
    text = metadata.get(PREPROCESS_METADATA_KEY)
    if text is None:
        return None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OnnxflipError(f"the model's {PREPROCESS_METADATA_KEY} metadata is not valid JSON ({exc})") from None
    return Preprocess.from_dict(values, where=f"the model's {PREPROCESS_METADATA_KEY} metadata")
