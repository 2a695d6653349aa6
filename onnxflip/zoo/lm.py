"""A small byte-level language model: a GPT-style decoder trained on the Python standard library's source.

Every machine with Python has the text: the ``*.py`` files under the running
interpreter's ``sysconfig.get_paths()["stdlib"]`` (``site-packages`` left
out), sorted by path.  Every ``holdout_every``-th file (by sorted index) is
held out and never trained on; the held-out bytes give the clean perplexity
and the evaluation sequences shipped with the model.

The ONNX export follows the layout Hugging Face optimum gives decoder models
with past key values: inputs ``input_ids`` (int64, (batch, seq)),
``attention_mask`` (int64, (batch, past + seq)) and, per layer ``i``,
``past_key_values.{i}.key`` / ``.value`` (float32, (batch, heads, past,
head_dim)); outputs ``logits`` (float32, (batch, seq, 256)) and
``present.{i}.key`` / ``.value`` (batch, heads, past + seq, head_dim).  A
full-sequence pass feeds past tensors of length 0; a decode step feeds the
previous step's ``present.*`` back.  Positions come from the attention mask
(its cumulative sum minus one), so right padding leaves the real tokens'
logits unchanged.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import pathlib
import platform
import sysconfig
import time
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from onnxflip.data.sources import MODEL_METADATA_KEY
from onnxflip.modelio import save_model

__all__ = [
    "VOCAB_SIZE",
    "ByteGPT",
    "LMConfig",
    "LMTrainConfig",
    "LMTrainResult",
    "StdlibText",
    "eval_sequences",
    "export_lm",
    "input_names",
    "name_linear_weights",
    "output_names",
    "parameter_count",
    "perplexity",
    "stdlib_text",
    "train_and_export",
    "train_lm",
]

logger = logging.getLogger(__name__)

VOCAB_SIZE = 256  # one token per byte
OPSET = 17


@dataclass(frozen=True)
class LMConfig:
    """The architecture: sizes of a pre-LayerNorm GPT over bytes."""

    d_model: int = 128
    layers: int = 4
    heads: int = 4
    context: int = 128

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")


@dataclass(frozen=True)
class LMTrainConfig:
    """Training settings: AdamW, linear warm-up then cosine decay to a tenth of ``lr``, random windows."""

    model: LMConfig = LMConfig()
    steps: int = 700
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    holdout_every: int = 20
    eval_windows: int = 1024


@dataclass(frozen=True)
class LMTrainResult:
    model: ByteGPT
    heldout_perplexity: float
    wall_seconds: float
    losses: list[float]
    text: StdlibText


# --- the model ----------------------------------------------------------------------------------


class Block(nn.Module):
    """One pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.d_model // config.heads
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.fc_out = nn.Linear(4 * config.d_model, config.d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq, d_model) -> (batch, heads, seq, head_dim)."""
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, bias, past_key, past_value):
        q, k, v = self.qkv(self.ln_1(x)).chunk(3, dim=-1)
        key = torch.cat([past_key, self._split(k)], dim=2)
        value = torch.cat([past_value, self._split(v)], dim=2)
        scores = self._split(q) @ key.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
        attended = (scores.softmax(dim=-1) @ value).transpose(1, 2)
        x = x + self.proj(attended.reshape(x.shape[0], x.shape[1], -1))
        x = x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))
        return x, key, value


class ByteGPT(nn.Module):
    """Token and learned position embeddings, ``layers`` blocks, a final LayerNorm and the LM head.

    ``forward(input_ids, attention_mask, *past)`` takes the past keys and
    values flat (layer 0 key, layer 0 value, layer 1 key, ...) and returns
    the logits and the present keys and values in the same order.
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(VOCAB_SIZE, config.d_model)
        self.pos_emb = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB_SIZE)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def empty_past(self, batch: int) -> list[torch.Tensor]:
        """Past keys and values of length 0, for a full-sequence pass."""
        shape = (batch, self.config.heads, 0, self.config.d_model // self.config.heads)
        return [torch.zeros(shape) for _ in range(2 * self.config.layers)]

    def forward(self, input_ids, attention_mask, *past):
        seq = input_ids.shape[1]
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (batch, past + seq)
        # Query i sees key j when j is a real token (mask 1) at a position no later than i's.
        allowed = (positions[:, None, :] <= positions[:, -seq:, None]) & (attention_mask[:, None, :] > 0)
        bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None, :, :]
        x = self.tok_emb(input_ids) + self.pos_emb(positions[:, -seq:])
        presents = []
        for i, block in enumerate(self.blocks):
            x, key, value = block(x, bias, past[2 * i], past[2 * i + 1])
            presents += [key, value]
        return (self.head(self.ln_f(x)), *presents)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross entropy (nats) of a (batch, context + 1) window batch."""
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = self(inputs, torch.ones_like(inputs), *self.empty_past(inputs.shape[0]))[0]
        return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the text -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StdlibText:
    """The standard library's source as bytes, split by file into training and held-out text."""

    train: np.ndarray  # uint8
    heldout: np.ndarray  # uint8
    files: int
    heldout_files: int
    root: str

    def describe(self) -> dict:
        return {"text": "the *.py files of the Python standard library (site-packages excluded), sorted by path, "
                        "concatenated as bytes", "stdlib": self.root, "python": platform.python_version(),
                "files": self.files, "heldout_files": self.heldout_files,
                "train_bytes": int(self.train.size), "heldout_bytes": int(self.heldout.size)}


def stdlib_text(*, holdout_every: int = 20, root: str | os.PathLike[str] | None = None) -> StdlibText:
    """The ``*.py`` files under ``root`` (default: this Python's stdlib), outside site-packages, sorted by path;
    the file whose sorted index is a multiple of ``holdout_every`` goes to the held-out text."""
    base = pathlib.Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in base.rglob("*.py")
                   if p.is_file() and not {"site-packages", "dist-packages"} & set(p.relative_to(base).parts))
    if len(files) < holdout_every:
        raise ValueError(f"{base} holds {len(files)} .py files; the split needs at least {holdout_every}")
    train, heldout = [], []
    for i, path in enumerate(files):
        (heldout if i % holdout_every == 0 else train).append(path.read_bytes())
    return StdlibText(train=_bytes(train), heldout=_bytes(heldout), files=len(files), heldout_files=len(heldout),
                      root=str(base))


def _bytes(parts: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(parts), dtype=np.uint8).copy()


def _windows(text: np.ndarray, length: int, count: int) -> np.ndarray:
    """Up to ``count`` non-overlapping windows of ``length`` bytes, evenly spaced over the text, as int64."""
    whole = text[: text.size // length * length].reshape(-1, length)
    if whole.shape[0] == 0:
        raise ValueError(f"the text ({text.size} bytes) is shorter than one window of {length}")
    picks = np.linspace(0, whole.shape[0] - 1, min(count, whole.shape[0])).round().astype(np.int64)
    return whole[np.unique(picks)].astype(np.int64)


def eval_sequences(text: StdlibText, *, samples: int = 256, length: int = 64) -> np.ndarray:
    """Held-out token sequences, (samples, length) int64: non-overlapping windows spread over the held-out text."""
    return _windows(text.heldout, length, samples)


# --- training -----------------------------------------------------------------------------------


@torch.no_grad()
def perplexity(model: ByteGPT, sequences: np.ndarray, *, batch_size: int = 64, device: str = "cpu") -> float:
    """Per-byte perplexity, exp(mean next-byte cross entropy), over every predicted byte of the sequences."""
    model.eval()
    total, count = 0.0, 0
    data = torch.from_numpy(np.asarray(sequences, dtype=np.int64))
    for start in range(0, data.shape[0], batch_size):
        batch = data[start : start + batch_size].to(device)
        total += float(model.loss(batch)) * batch[:, 1:].numel()
        count += batch[:, 1:].numel()
    return math.exp(total / count)


def _lr_at(step: int, config: LMTrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimizer(model: ByteGPT, config: LMTrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices (Linear weights), none on embeddings, biases and LayerNorms."""
    decay = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))


def train_lm(config: LMTrainConfig, *, text: StdlibText | None = None, progress: bool = True) -> LMTrainResult:
    """Train on random windows of the training text; returns the model with its held-out perplexity."""
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    text = text if text is not None else stdlib_text(holdout_every=config.holdout_every)
    window = config.model.context + 1
    if text.train.size <= window:
        raise ValueError(f"the training text ({text.train.size} bytes) is shorter than one window of {window}")
    torch.manual_seed(config.seed)
    model = ByteGPT(config.model).to(config.device)
    optimizer = _optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    train_text = torch.from_numpy(text.train.astype(np.int64))
    offsets = torch.arange(window)
    losses: list[float] = []
    began = time.perf_counter()
    model.train()
    bar = tqdm(range(config.steps), desc="lm", disable=not progress, leave=False)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        starts = torch.randint(0, train_text.numel() - window + 1, (config.batch_size,), generator=generator)
        loss = model.loss(train_text[starts[:, None] + offsets].to(config.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if (step + 1) % 100 == 0:
            logger.info("lm step %d/%d: mean loss %.4f", step + 1, config.steps, np.mean(losses[-100:]))
    wall = time.perf_counter() - began
    heldout = _windows(text.heldout, window, config.eval_windows)
    ppl = perplexity(model, heldout, device=config.device)
    return LMTrainResult(model=model.cpu().eval(), heldout_perplexity=ppl, wall_seconds=wall, losses=losses,
                         text=text)


# --- export -------------------------------------------------------------------------------------


def input_names(layers: int) -> list[str]:
    return ["input_ids", "attention_mask",
            *(f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value"))]


def output_names(layers: int) -> list[str]:
    return ["logits", *(f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value"))]


def _dynamic_axes(layers: int) -> dict[str, dict[int, str]]:
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "past_sequence_length + sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    for i in range(layers):
        for kind in ("key", "value"):
            axes[f"past_key_values.{i}.{kind}"] = {0: "batch_size", 2: "past_sequence_length"}
            axes[f"present.{i}.{kind}"] = {0: "batch_size", 2: "past_sequence_length + sequence_length"}
    return axes


def name_linear_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Give each Linear's weight, which the TorchScript exporter stores transposed (in x out, as MatMul takes it)
    under a generated ``onnx::MatMul_N`` name, its module's name: ``blocks.0.qkv.weight``.  ``proto`` is changed."""
    initializers = {init.name: init for init in proto.graph.initializer}
    renames = {}
    for node in proto.graph.node:
        path = node.name.strip("/").rsplit("/", 1)
        if node.op_type == "MatMul" and len(path) == 2 and node.input[1].startswith("onnx::") and \
                node.input[1] in initializers:
            renames[node.input[1]] = path[0].replace("/", ".") + ".weight"
    if len(set(renames.values())) != len(renames) or set(renames.values()) & set(initializers):
        return proto  # names that would clash: keep the exporter's
    for old, new in renames.items():
        initializers[old].name = new
    for node in proto.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
    return proto


def export_lm(model: ByteGPT, path: str | os.PathLike[str], *, info: dict | None = None) -> onnx.ModelProto:
    """Export with torch's TorchScript exporter (opset 17), the axes dynamic and named as optimum names them, and
    write the model atomically; returns the proto."""
    model = model.cpu().eval()
    config = model.config
    batch, past, seq = 2, 3, 5
    head_dim = config.d_model // config.heads
    example = (torch.randint(0, VOCAB_SIZE, (batch, seq)), torch.ones(batch, past + seq, dtype=torch.int64),
               *(torch.randn(batch, config.heads, past, head_dim) for _ in range(2 * config.layers)))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter, as optimum exports decoders with past: its dynamic_axes name each axis as
        # optimum's exports do, and torch warns that it is no longer the default.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                DeprecationWarning)
        torch.onnx.export(model, example, buffer, dynamo=False, opset_version=OPSET,
                          input_names=input_names(config.layers), output_names=output_names(config.layers),
                          dynamic_axes=_dynamic_axes(config.layers), do_constant_folding=True)
    proto = name_linear_weights(onnx.load_from_string(buffer.getvalue()))
    meta = {
        "task": "causal language model",
        "vocabulary": "bytes",
        "vocab_size": VOCAB_SIZE,
        "architecture": {"type": "decoder-only transformer, pre-LayerNorm, GELU MLP, learned positions",
                         **dataclasses.asdict(config)},
        "layout": "optimum decoder with past: input_ids, attention_mask, past_key_values.{i}.key/value in; "
                  "logits, present.{i}.key/value out; keys and values (batch, heads, length, head_dim)",
        "parameters": parameter_count(model),
        **(info or {}),
    }
    del proto.metadata_props[:]
    proto.metadata_props.add(key=MODEL_METADATA_KEY, value=json.dumps(meta))
    save_model(proto, path)
    return proto


def train_and_export(config: LMTrainConfig, output: str | os.PathLike[str], *, progress: bool = True,
                     samples: int = 256, length: int = 64) -> tuple[LMTrainResult, pathlib.Path]:
    """Train, export to ``output`` and write the held-out evaluation sequences to ``<output stem>_eval.npz``;
    returns the training result and the path of the sequences."""
    output = pathlib.Path(output)
    result = train_lm(config, progress=progress)
    info = {"training": {**dataclasses.asdict(config), "optimizer": "AdamW (0.9, 0.95), gradient clipping 1.0",
                         "schedule": f"linear warm-up {config.warmup} steps, cosine to lr/10"},
            **result.text.describe(),
            "heldout_perplexity": round(result.heldout_perplexity, 4),
            "heldout_perplexity_on": f"{config.eval_windows} windows of {config.model.context + 1} bytes spread "
                                     "over the held-out text, per byte",
            "train_seconds": round(result.wall_seconds)}
    export_lm(result.model, output, info=info)
    eval_path = output.with_name(f"{output.stem}_eval.npz")
    np.savez(eval_path, input_ids=eval_sequences(result.text, samples=samples, length=length))
    return result, eval_path
