"""Seeded, reproducible training on the bundled digits (see :mod:`models.data`).

Reproducible means: the same seed, torch version and thread count give the
same weights; the training loop uses deterministic algorithms only.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import DIGIT_LABELS, digits_to_input, load_holdout, split_digits
from .registry import DEFAULT_ARCH, create_model


@dataclass(frozen=True)
class TrainConfig:
    arch: str = DEFAULT_ARCH
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 4e-5
    reg_alpha: float = 0.1
    max_shift: int = 2
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        from . import get_entry
        from ..kernel.limits import check_finite
        get_entry(self.arch)            # an unknown name: one line naming the zoo command
        check_finite(self.lr, "--lr", 0.0)


@dataclass
class TrainResult:
    config: TrainConfig
    holdout_accuracy: float
    train_seconds: float
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (pad with zeros, crop back)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[i:i + batch_size]))
        correct += int((logits.argmax(1).numpy() == y[i:i + batch_size]).sum())
    return correct / len(x)


def train_digits(config: TrainConfig = TrainConfig(),
                 progress: Callable[[int, dict], None] | None = None) -> tuple[nn.Module, TrainResult]:
    """Train ``config.arch`` on the digits' training split; report held-out accuracy."""
    torch.manual_seed(config.seed)
    threads_before = torch.get_num_threads()   # restored after: the caller's setting is not ours to keep
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(config.seed)
    model = create_model(config.arch, num_classes=10, labels=DIGIT_LABELS)
    xtr_img, ytr, _, _ = split_digits()
    size = model.input_spec.size
    xtr = torch.from_numpy(digits_to_input(xtr_img, size))
    ytr_t = torch.from_numpy(ytr)
    xh, yh = load_holdout(size)
    steps_per_epoch = (len(xtr) + config.batch_size - 1) // config.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                          weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, epochs=config.epochs,
                                                steps_per_epoch=steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    result = TrainResult(config=config, holdout_accuracy=0.0, train_seconds=0.0)
    t0 = time.perf_counter()
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(len(xtr), generator=gen)
            total = 0.0
            for i in range(0, len(xtr), config.batch_size):
                idx = order[i:i + config.batch_size]
                xb = _shift(xtr[idx], config.max_shift, gen)
                loss = loss_fn(model(xb), ytr_t[idx]) + model.reg_loss(config.reg_alpha)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach().item() * len(idx)
            row = {"epoch": epoch, "loss": total / len(xtr), "holdout_accuracy": accuracy(model, xh, yh)}
            result.history.append(row)
            if progress:
                progress(epoch, row)
        result.train_seconds = time.perf_counter() - t0
        result.holdout_accuracy = accuracy(model, xh, yh)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads_before)
    return model.eval(), result


def evaluation_data(loaded, data=None):
    """What ``evaluate`` measures on: ``--data`` (it must have labels), else the shipped held-out
    digits for a model that takes them (the one digits rule), else a one-line error.
    Returns (inputs, labels, where they came from)."""
    from .data import is_digits_model, load_holdout, load_inputs
    from ..kernel.errors import UserInputError
    if data is None:
        if not is_digits_model(loaded.input_spec):
            raise UserInputError(f"{loaded.arch} does not take the shipped digits ({loaded.input_spec.num_classes} "
                                 "classes); pass labelled data with --data FILE.npz")
        x, y = load_holdout(loaded.input_spec.size)
        return x, y, "shipped held-out digits"
    x, y = load_inputs(data, loaded.input_spec)
    if y is None:
        raise UserInputError(f"{data} has no labels (an .npz's 'label' array, or a folder's class subfolders named "
                             "by the model's labels); accuracy needs them")
    return x, y, str(data)
