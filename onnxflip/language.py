"""Decoder language models: their inputs and cache layout, perplexity, and greedy generation.

A decoder export with past key values (as Hugging Face optimum lays them
out) takes ``input_ids`` (batch, sequence), ``attention_mask`` (batch, past
+ sequence), and per layer ``past_key_values.<i>.key`` / ``.value`` (batch,
heads, past, head_dim); it returns ``logits`` (batch, sequence, vocabulary)
and ``present.<i>.key`` / ``.value``, the cache with the new entries.

- **Feeds**: data that holds only ``input_ids`` is completed for such a model
  with an attention mask of ones and an empty past (past length 0: one
  full-sequence pass), and ``position_ids`` 0..sequence-1 where the model
  takes them (:mod:`onnxflip.data.decoder`).
- **perplexity**: a sample's score is ``(log V - nll) / (log V - nll_clean)``,
  clipped to [0, 1], where ``nll`` is the mean negative log-likelihood of
  the sample's next tokens (positions 1..L-1 predicted from those before
  them, as a full-sequence pass gives them), ``nll_clean`` the clean model's
  on the same sample, and ``log V`` the negative log-likelihood of the
  uniform distribution over the vocabulary (V: the logits' last axis).  The
  clean model scores 1 and chance 0 (the floor); a logit row that is not
  finite counts as chance for its positions; per-byte perplexity is
  ``exp(nll)``.
- **greedy:N**: N tokens generated greedily after each sample's prompt (its
  ``input_ids``), in a decode loop that feeds ``present.*`` back as
  ``past_key_values.*``, one token per step; a sample's score is the share
  of its N tokens equal to the clean model's; a token chosen from logits
  that hold NaN or inf agrees with none (the decode goes on with their
  argmax).  Floor: 1 / V.  Every step is
  one run of the model, so activation flips are drawn anew at each step
  (each step its own seed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from onnxflip.data.decoder import ATTENTION_MASK, INPUT_IDS, POSITION_IDS
from onnxflip.errors import OnnxflipError

__all__ = ["Greedy", "Perplexity"]

logger = logging.getLogger(__name__)

RUINED_TOKEN = -1  # what greedy:N records for a step whose logits are not all finite: equal to no clean token



def _nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per sample: the mean negative log-likelihood of tokens 1..L-1 (log V where a logit row is not finite)."""
    if logits.ndim != 3 or logits.shape[:2] != ids.shape:
        raise OnnxflipError(f"perplexity needs (batch, length, vocabulary) logits for (batch, length) input_ids, not "
                            f"{logits.shape} for {ids.shape}; choose the logits with --output NAME")
    if ids.shape[1] < 2:
        raise OnnxflipError("perplexity needs sequences of at least 2 tokens")
    vocabulary = logits.shape[-1]
    rows = logits[:, :-1, :]
    finite = np.isfinite(rows).all(axis=-1)
    rows = np.where(finite[..., None], rows, 0).astype(np.float64)  # a row that is not finite: chance below
    top = rows.max(axis=-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(rows - top).sum(axis=-1))
    picked = np.take_along_axis(rows, ids[:, 1:, None], axis=-1)[..., 0]
    nll = np.where(finite, log_z - picked, math.log(vocabulary))
    return nll.mean(axis=1)


@dataclass(frozen=True)
class Perplexity:
    """Next-token likelihood as a score: 1 for the clean model, 0 for the uniform distribution."""

    name: str = "perplexity"
    needs_labels: bool = False
    needs_clean: bool = True
    reads_input: str = INPUT_IDS

    def scores(self, outputs: np.ndarray, clean: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
        if labels is None or clean is None:
            raise OnnxflipError("perplexity needs the samples' input_ids and the clean model's logits")
        chance = math.log(outputs.shape[-1])
        nll, reference = _nll(outputs, labels), _nll(clean, labels)
        span = chance - reference
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(span > 0, (chance - nll) / span, np.where(nll <= reference, 1.0, 0.0))
        return np.clip(score, 0.0, 1.0)

    def floor(self, output_shape) -> float:
        return 0.0


@dataclass(frozen=True)
class Greedy:
    """The share of N greedily generated tokens equal to the clean model's (see the module docstring)."""

    tokens: int = 8
    name: str = "greedy"
    needs_labels: bool = False
    needs_clean: bool = True

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise OnnxflipError("greedy:N needs N >= 1 tokens")
        object.__setattr__(self, "name", f"greedy:{self.tokens}")

    def generate(self, run: Callable[[dict[str, np.ndarray], int], Mapping[str, np.ndarray]],
                 feeds: dict[str, np.ndarray], *, output: str, pairs: list[tuple[str, str]]) -> np.ndarray:
        """(batch, N) tokens: ``run(feeds, step)`` runs the model once and returns its outputs by name."""
        if not pairs:
            raise OnnxflipError(f"{self.name} needs a decoder export with past key values (past_key_values.* inputs, "
                                "present.* outputs)")
        if INPUT_IDS not in feeds or ATTENTION_MASK not in feeds:
            raise OnnxflipError(f"{self.name} needs input_ids and attention_mask inputs")
        feeds = dict(feeds)
        generated = []
        for step in range(self.tokens):
            outputs = run(feeds, step)
            logits = outputs[output]
            last = logits[:, -1, :]
            following = np.argmax(last, axis=-1).astype(np.int64)  # the decode goes on (NaN counts as the largest)
            generated.append(np.where(np.isfinite(last).all(axis=-1), following, RUINED_TOKEN))  # but agrees with none
            feeds[INPUT_IDS] = following[:, None]
            feeds[ATTENTION_MASK] = np.concatenate([feeds[ATTENTION_MASK], np.ones((len(following), 1), np.int64)],
                                                   axis=1)
            if POSITION_IDS in feeds:
                feeds[POSITION_IDS] = feeds[POSITION_IDS][:, -1:] + 1
            for past, present in pairs:
                feeds[past] = outputs[present]
        return np.stack(generated, axis=1)

    def scores(self, outputs: np.ndarray, clean: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
        if clean is None:
            raise OnnxflipError(f"{self.name} needs the clean model's tokens")
        return (outputs == clean).mean(axis=1, dtype=np.float64)

    def floor(self, output_shape) -> float:
        vocabulary = output_shape[-1] if output_shape else None
        if not isinstance(vocabulary, int):
            raise OnnxflipError(f"{self.name} needs logits whose last axis (the vocabulary) is fixed")
        return 1.0 / vocabulary
