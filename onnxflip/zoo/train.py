"""Train a zoo network (a VGG, ResNet-20 or the small MobileNetV2) on CIFAR-10: SGD, one-cycle schedule, crop+flip augmentation, optionally with bit flips in
the forward pass (:mod:`onnxflip.zoo.noise`).

Checkpoints are written after every epoch and a run resumes from its
checkpoint, so an interrupted training loses at most one epoch.  A checkpoint
holds the settings, the noise's included, and a run resumes only with the
same ones.  A run may start from another run's checkpoint (``init``): its
weights and BatchNorm statistics, with a fresh optimiser and schedule (a
fine-tune, as when a trained network is retrained with noise); a fine-tune
keeps the BatchNorm statistics as they were (BatchNorm in eval mode, its
scale and shift trained), so that flipped activations cannot skew them.
Under flips the gradient norm is clipped (``NOISY_GRADIENT_NORM``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onnxflip.data import Split, load_split
from onnxflip.errors import OnnxflipError
from onnxflip.zoo.configs import default_width
from onnxflip.zoo.models import build_model
from onnxflip.zoo.noise import NoiseSettings, noisy_forward

__all__ = ["TrainConfig", "TrainResult", "evaluate_torch", "train"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    model: str = "vgg11"  # any of onnxflip.zoo.configs.MODELS
    width: float | None = None  # None: the model's default width (configs.default_width)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    max_steps: int | None = None
    noise: NoiseSettings = field(default_factory=NoiseSettings)  # p = 0: no flips
    init: str | None = None  # a checkpoint whose model weights the run starts from (a fine-tune), else random

    def __post_init__(self) -> None:
        if self.width is None:
            object.__setattr__(self, "width", default_width(self.model))

    def to_json(self) -> dict:
        """The settings as a checkpoint holds them (the noise as a dict)."""
        return {**dataclasses.asdict(self), "noise": self.noise.to_json()}


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module
    test_accuracy: float
    wall_seconds: float
    losses: list[float]
    skipped_steps: int = 0  # steps whose loss, gradient or BatchNorm statistics the flips made non-finite


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of a 4-pixel zero-padded image, then random horizontal flip."""
    n = batch.shape[0]
    padded = F.pad(batch, (4, 4, 4, 4))
    oy = torch.randint(0, 9, (n,), generator=generator, device="cpu").to(batch.device)
    ox = torch.randint(0, 9, (n,), generator=generator, device="cpu").to(batch.device)
    ar = torch.arange(32, device=batch.device)
    rows = (oy[:, None] + ar)[:, :, None]
    cols = (ox[:, None] + ar)[:, None, :]
    cropped = padded[torch.arange(n, device=batch.device)[:, None, None], :, rows, cols]
    cropped = cropped.permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(batch.device)
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped).contiguous()


def _to_tensor(split: Split, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(split.as_float_nchw()).to(device)
    labels = torch.from_numpy(np.array(split.labels)).to(device)
    return images, labels


@torch.no_grad()
def evaluate_torch(model: nn.Module, split: Split, *, device: str = "cpu", batch_size: int = 500) -> float:
    """Top-1 accuracy of a torch model on a split."""
    model.eval()
    images, labels = _to_tensor(split, device)
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def _load_checkpoint(path: pathlib.Path, device: str) -> dict:
    """A checkpoint this module wrote; one line of error for any other file."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike: not a checkpoint
        raise OnnxflipError(f"{path} is not a training checkpoint ({type(exc).__name__}); remove it or give "
                            "another --checkpoint") from None
    if not isinstance(state, dict) or not {"config", "model", "optimizer", "epoch"} <= set(state):
        raise OnnxflipError(f"{path} is not a training checkpoint of onnxflip zoo train; remove it or give another "
                            "--checkpoint")
    return state


# Under flips, the gradient norm is clipped to this: about three times what a trained VGG-A's gradients reach on
# clean batches (5 to 8), so that clean steps keep theirs and a step a flip made wild stays a step.
NOISY_GRADIENT_NORM = 20.0


def _finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _start_from(model: nn.Module, path: pathlib.Path, config: TrainConfig) -> None:
    """Load the model weights of checkpoint ``path`` into ``model``; its network and width must be ``config``'s."""
    if not path.is_file():
        raise OnnxflipError(f"{path}: no such checkpoint to start from")
    state = _load_checkpoint(path, config.device)
    saved = state["config"]
    if (saved.get("model"), saved.get("width")) != (config.model, config.width):
        raise OnnxflipError(f"{path} holds {saved.get('model')} at width {saved.get('width')}, not {config.model} "
                            f"at width {config.width}")
    model.load_state_dict(state["model"])


def train(
    config: TrainConfig,
    *,
    data_dir: str | os.PathLike[str] | None,
    checkpoint: pathlib.Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) a zoo model; returns it with its test accuracy."""
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build_model(config.model, width=config.width).to(config.device)
    if config.init is not None:
        _start_from(model, pathlib.Path(config.init), config)
    train_split = load_split(data_dir, "train")
    images, labels = _to_tensor(train_split, config.device)
    steps_per_epoch = len(labels) // config.batch_size
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch
    )
    generator = torch.Generator().manual_seed(config.seed)
    start_epoch, losses, elapsed, skipped = 0, [], 0.0, 0
    forward = noisy_forward(model, config.noise, seed=config.seed)
    if checkpoint is not None and checkpoint.is_file():
        state = _load_checkpoint(checkpoint, config.device)
        # checkpoints from before the noise and init settings had none
        saved = {"noise": NoiseSettings().to_json(), "init": None, **state["config"]}
        if saved != config.to_json():
            raise OnnxflipError(f"checkpoint {checkpoint} was made with other settings: {saved}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, losses, elapsed = state["epoch"], state["losses"], state["elapsed"]
        skipped = state.get("skipped_steps", 0)
        logger.info("resuming %s from epoch %d", checkpoint, start_epoch)

    began = time.perf_counter() - elapsed
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        model.train()
        if config.init is not None:  # a fine-tune keeps the trained BatchNorm statistics (scale and shift train)
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        order = torch.randperm(len(labels), generator=generator).to(config.device)
        bar = tqdm(range(steps_per_epoch), desc=f"{config.model} epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False)
        running = 0.0
        for i in bar:
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            x = _augment(images[idx], generator)
            # Under flips, a step whose loss, gradient or BatchNorm statistics the flips made inf or NaN makes no
            # update and leaves the statistics as they were (the loss can stay finite where a gradient is not).
            kept = [b.clone() for b in model.buffers()] if config.noise.enabled else None
            loss = F.cross_entropy(forward(x, step), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            finite = kept is None or (math.isfinite(value) and _finite(model.buffers()))
            if finite:
                loss.backward()
                if kept is not None:  # a flipped weight can make the gradients it feeds huge: clipped
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), NOISY_GRADIENT_NORM)
                    finite = bool(torch.isfinite(norm))
            if finite:
                optimizer.step()
            else:
                skipped += 1
                with torch.no_grad():
                    for buffer, before in zip(model.buffers(), kept):
                        buffer.copy_(before)
            with warnings.catch_warnings():  # the schedule goes on where the flips skipped the first update
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                scheduler.step()
            running += value
            losses.append(value)
            bar.set_postfix(loss=f"{running / (i + 1):.3f}")
            step += 1
            if config.max_steps is not None and step >= config.max_steps:
                break
        logger.info("%s epoch %d: mean loss %.4f", config.model, epoch + 1, running / max(1, i + 1))
        if skipped:
            logger.warning("%d steps so far had a non-finite loss, gradient or BatchNorm statistic under the flips and made no "
                           "update", skipped)
        if checkpoint is not None:
            tmp = checkpoint.with_suffix(".tmp")
            torch.save(
                {
                    "config": config.to_json(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch + 1,
                    "losses": losses,
                    "elapsed": time.perf_counter() - began,
                    "skipped_steps": skipped,
                },
                tmp,
            )
            os.replace(tmp, checkpoint)
        if config.max_steps is not None and step >= config.max_steps:
            break
    wall = time.perf_counter() - began
    accuracy = evaluate_torch(model, load_split(data_dir, "test"), device=config.device)
    return TrainResult(model=model.cpu().eval(), test_accuracy=accuracy, wall_seconds=wall, losses=losses,
                       skipped_steps=skipped)
