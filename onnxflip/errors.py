"""The one exception type onnxflip raises for problems a user can fix."""

from __future__ import annotations

__all__ = ["OnnxflipError"]


class OnnxflipError(Exception):
    """A problem with the user's input: a model, a data folder, an option.

    The command-line interface prints the message on one line and exits
    with a non-zero status, without a traceback.
    """
