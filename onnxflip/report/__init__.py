"""What a person reads: listings and reports built from models and results."""

from __future__ import annotations

__all__: list[str] = []
