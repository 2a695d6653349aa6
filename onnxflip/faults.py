"""The fault model: how the stored bits of a target class flip, stick and are protected.

:class:`FaultModel` is the one description of it, and this module holds all
of its validation: a trial's or a grid's settings hold a ``FaultModel``, the
injection configuration holds one per target class, and the command line
builds one.  The kernel holds the arithmetic (``custom_ops/flipbits.h``,
``custom_ops/secded.h``) and its contract names the vocabulary
(``RANDOMNESS``, ``NONFINITE_POLICIES``, ``ECC_MODES``, ``ON_DETECTED``,
``COUNT_NAMES``, ``ECC_CODES`` in :mod:`onnxflip.runtime.contract`); this
module checks settings against it and turns the kernel's word counts into
fractions.

- **flips**: each allowed bit flips 0->1 with probability ``p01`` and 1->0
  with probability ``p10`` (:func:`resolve_probabilities` reads a symmetric
  ``p`` or the two directions).
- **stuck-at**: each cell (a bit allowed by the mask, or a check bit) is stuck
  at 0 with probability ``s0`` or at 1 with probability ``s1``, one or the
  other (``s0 + s1 <= 1``); the map depends on the seed and the tensor's site,
  never on the run.
- **ECC**: ``secded`` stores each value as one extended Hamming word,
  (13,8), (22,16), (39,32) or (72,64); ``secded64`` packs 64 / width
  consecutive values into one (72,64) word (the last word of a tensor is
  padded with zero bits, stored and exposed like the others).  One wrong bit
  is corrected, two are detected and follow ``on_detected``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from onnxflip.errors import OnnxflipError
from onnxflip.runtime.contract import (
    COUNT_NAMES,
    ECC_CODES,
    ECC_MODES,
    NONFINITE_POLICIES,
    ON_DETECTED,
    RANDOMNESS,
    ElementType,
    element_type,
)

__all__ = [
    "FaultModel",
    "WordCounts",
    "check_ecc",
    "check_stuck",
    "ecc_word",
    "resolve_probabilities",
    "stored_words",
    "words_per_run",
]

logger = logging.getLogger(__name__)

_STUCK_SLACK = 1e-6  # s0 + s1 may exceed 1 by the rounding of two float32 values, as the kernel allows


def resolve_probabilities(p: float | None, p01: float | None, p10: float | None) -> tuple[float, float]:
    """(p01, p10) from either a symmetric ``p`` or the two directions (a missing one is 0)."""
    if p is not None and (p01 is not None or p10 is not None):
        raise OnnxflipError("give either p, or p01 and/or p10, not both")
    pair = (p, p) if p is not None else (p01 or 0.0, p10 or 0.0)
    for name, value in zip(("p01", "p10"), pair):
        if not (isinstance(value, (int, float, np.floating)) and 0.0 <= float(value) <= 1.0) or math.isnan(value):
            raise OnnxflipError(f"{name if p is None else 'p'} = {value} is not a probability in [0, 1]")
    return float(pair[0]), float(pair[1])


def check_stuck(s0: float, s1: float) -> None:
    """Raise OnnxflipError unless s0 and s1 are probabilities with s0 + s1 <= 1."""
    for name, value in (("s0", s0), ("s1", s1)):
        if not isinstance(value, (int, float, np.floating)) or math.isnan(value) or not 0.0 <= float(value) <= 1.0:
            raise OnnxflipError(f"{name} = {value} is not a probability in [0, 1]")
    if s0 + s1 > 1.0 + _STUCK_SLACK:
        raise OnnxflipError(f"s0 + s1 = {s0 + s1:g} exceeds 1: a cell is stuck at 0 or at 1, not both")


def check_ecc(ecc: str, on_detected: str) -> None:
    """Raise OnnxflipError unless ``ecc`` and ``on_detected`` are values the kernel knows."""
    if ecc not in ECC_MODES:
        raise OnnxflipError(f"ecc must be one of {', '.join(ECC_MODES)}, not {ecc!r}")
    if on_detected not in ON_DETECTED:
        raise OnnxflipError(f"on_detected must be one of {', '.join(ON_DETECTED)}, not {on_detected!r}")


@dataclass(frozen=True)
class FaultModel:
    """How the bits of one target class flip, stick and are protected; it checks itself when made.

    ``p01``/``p10``: flip probabilities (0->1, 1->0); ``bits``: the bits that
    may flip (a field name or a mask, see :mod:`onnxflip.bits`); ``seed`` and
    ``randomness`` (``fixed``: the same flips at every run; ``per_run``: new
    ones); ``nonfinite``: what becomes of a value a flip made NaN or
    infinite; ``s0``/``s1``: probability that a cell is stuck at 0/1;
    ``ecc``: ``none``, ``secded`` or ``secded64``; ``on_detected``: ``keep``
    or ``zero`` for a word with a detected, uncorrectable error.
    """

    p01: float = 0.0
    p10: float = 0.0
    bits: str | int = "all"
    seed: int = 0
    randomness: str = "fixed"
    nonfinite: str = "keep"
    s0: float = 0.0
    s1: float = 0.0
    ecc: str = "none"
    on_detected: str = "keep"

    @classmethod
    def symmetric(cls, p: float, **kwargs) -> FaultModel:
        return cls(p01=p, p10=p, **kwargs)

    def __post_init__(self) -> None:
        resolve_probabilities(None, self.p01, self.p10)
        if self.randomness not in RANDOMNESS:
            raise OnnxflipError(f"randomness must be one of {', '.join(RANDOMNESS)}, not {self.randomness!r}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise OnnxflipError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, not {self.nonfinite!r}")
        check_stuck(self.s0, self.s1)
        check_ecc(self.ecc, self.on_detected)

    @property
    def stuck(self) -> bool:
        """Whether any cell is stuck."""
        return bool(self.s0 or self.s1)


def ecc_word(ecc: str, etype: ElementType) -> tuple[int, int, int] | None:
    """(values per word, data bits, check bits) of the word ``ecc`` stores ``etype`` in; None without ECC.

    Raises OnnxflipError where the mode cannot protect values of that width.
    """
    if ecc == "none":
        return None
    if ecc not in ECC_CODES:  # checked where a fault model is made; this names a mode given here directly
        check_ecc(ecc, ON_DETECTED[0])
    code = ECC_CODES[ecc].get(etype.width)
    if code is None:
        raise OnnxflipError(f"ecc {ecc} cannot protect {etype.width}-bit {etype.name} values")
    data_bits, check_bits = code
    return data_bits // etype.width, data_bits, check_bits


def stored_words(ecc: str, etype: ElementType, elements: int) -> int:
    """How many words hold ``elements`` values: one per value, or per 64-bit word with ``secded64``."""
    word = ecc_word(ecc, etype)
    per_word = 1 if word is None else word[0]
    return -(-elements // per_word)


def words_per_run(sites: list[dict], target: str, *, batch: int = 1) -> int:
    """Words one run reads at a target class's ECC sites, from the site rows of an injected model's record
    (:attr:`onnxflip.graph.record.InjectionRecord.sites`): the denominator of the fractions
    of ``onnxflip_<target>_counts``.  Sites written per sample (activations, the cache) hold one sample's
    elements: the caller gives ``batch``, the samples a run stores (1 for the parameters, stored once)."""
    total = 0
    for site in sites:
        if site["target"] != target or "ecc" not in site:
            continue
        if site["elements"] is None:
            raise OnnxflipError(f"site {site['tensor']} has no static size; count its words from its tensor")
        elements = site["elements"] * batch
        total += stored_words(site["ecc"], element_type(site["dtype"]), elements)
    return total


@dataclass(frozen=True)
class WordCounts:
    """Words of one or more runs read corrected, detected (not corrected) and silently wrong, out of ``words``.

    Without ECC every word (value) that reads a changed value is silent.
    """

    corrected: int = 0
    detected: int = 0
    silent: int = 0
    words: int = 0

    @classmethod
    def from_output(cls, counts: np.ndarray, *, words: int) -> WordCounts:
        """From the kernel's counts output (int64[3], in ``COUNT_NAMES`` order)."""
        values = dict(zip(COUNT_NAMES, (int(c) for c in np.asarray(counts).reshape(-1))))
        return cls(words=words, **values)

    def as_array(self) -> np.ndarray:
        """The counts as the kernel's counts output holds them (int64[3], in ``COUNT_NAMES`` order)."""
        return np.array([getattr(self, name) for name in COUNT_NAMES], dtype=np.int64)

    def __add__(self, other: WordCounts) -> WordCounts:
        return WordCounts(self.corrected + other.corrected, self.detected + other.detected,
                          self.silent + other.silent, self.words + other.words)

    def fractions(self) -> dict[str, float]:
        """Each count over ``words`` (NaN when no word was read)."""
        return {name: getattr(self, name) / self.words if self.words else math.nan for name in COUNT_NAMES}
