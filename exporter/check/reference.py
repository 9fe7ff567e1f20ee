"""The exact answer the check holds artifacts to: the PyTorch original run in float64; PyTorch fp32's
own error against it (with every weight moved by an ulp) sets the scale of the fp32 rule, and for
fp16 artifacts the original run wholly in fp16 sets the scale of theirs (:mod:`exporter.kit.tolerances`)."""
from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .replay import array_digest


@dataclass
class Reference:
    """The exact answer and the scale of PyTorch's own rounding on each input."""
    r64: np.ndarray               # PyTorch in float64: the exact answer
    r32: np.ndarray               # PyTorch in float32
    e32: np.ndarray               # per sample: PyTorch fp32's own noise against r64 (see torch_reference)
    e16: np.ndarray | None = None  # per sample: PyTorch fp16's own error against r64, when fp16 artifacts are judged

    def rows(self, rows) -> "Reference":
        """The reference on a subset of the inputs."""
        return Reference(r64=self.r64[rows], r32=self.r32[rows], e32=self.e32[rows],
                         e16=self.e16[rows] if self.e16 is not None else None)


#: references this process computed, by what they are a function of (:func:`_reference_key`): a
#: re-check, a sweep worker or a test session running the same model on the same inputs again
#: reads them instead of running the network three or four times more (~2–5 s a check on the
#: shipped model; the fp16 run on a CPU is the slowest). A few entries: each is logits-sized.
_COMPUTED: "OrderedDict[str, Reference]" = OrderedDict()
_COMPUTED_MAX = 4
_COMPUTED_LOCK = threading.Lock()


def torch_reference(model: nn.Module, x: np.ndarray, batch: int = 8, seed: int = 0, half: bool = False) -> Reference:
    """The original in float64 (the exact answer) and in float32, twice: as it is, and with every
    weight moved by up to one float32 ulp (what folding a BatchNorm into a convolution, or any
    exporter's rewrite, does to weights). The larger of the two fp32 errors per sample is the
    network's own fp32 noise on that input: how much rounding-level changes move its logits.
    Computed once per process for the same model (structure and every weight), inputs and settings."""
    key = _reference_key(model, x, batch, seed, half)
    with _COMPUTED_LOCK:
        known = _COMPUTED.get(key)
        if known is not None:
            _COMPUTED.move_to_end(key)
    if known is not None:
        return _copied(known)
    ref = _compute_reference(model, x, batch, seed, half)
    with _COMPUTED_LOCK:
        _COMPUTED[key] = _copied(ref)
        while len(_COMPUTED) > _COMPUTED_MAX:
            _COMPUTED.popitem(last=False)
    return ref


def _reference_key(model: nn.Module, x: np.ndarray, batch: int, seed: int, half: bool) -> str:
    """A digest of everything the reference depends on: every submodule's class (by identity too, so
    two classes of one name differ) and the printed structure; every parameter, buffer and plain
    tensor attribute (name, dtype, shape, bytes); the inputs (dtype, shape, bytes); the batch, the
    perturbation seed, whether the fp16 run is wanted, and torch's thread count (it can move fp32
    rounding)."""
    h = hashlib.sha256()
    h.update(f"{model!r}\n{batch} {seed} {half} {torch.get_num_threads()} {torch.__version__}".encode())
    tensors = dict(model.state_dict())
    for path, module in model.named_modules():
        kind = type(module)
        h.update(f"{path} {kind.__module__}.{kind.__qualname__} {id(kind)}".encode())
        tensors.update({f"{path}:{k}": v for k, v in vars(module).items() if isinstance(v, torch.Tensor)})
    for name, t in tensors.items():
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(array_digest(x).encode())
    return h.hexdigest()


def _copied(ref: Reference) -> Reference:
    return Reference(r64=ref.r64.copy(), r32=ref.r32.copy(), e32=ref.e32.copy(),
                     e16=ref.e16.copy() if ref.e16 is not None else None)


def _compute_reference(model: nn.Module, x: np.ndarray, batch: int, seed: int, half: bool) -> Reference:
    m64 = copy.deepcopy(model).double().eval()
    m32p = _ulp_perturbed(model, seed)
    outs64, outs32, outs32p = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))
            outs32.append(model.eval()(xb).numpy())
            outs32p.append(m32p(xb).numpy())
            outs64.append(m64(xb.double()).numpy())
    r64, r32, r32p = np.concatenate(outs64), np.concatenate(outs32), np.concatenate(outs32p)
    e32 = np.maximum(np.abs(r32.astype(np.float64) - r64).max(axis=1), np.abs(r32p.astype(np.float64) - r64).max(axis=1))
    return Reference(r64=r64, r32=r32, e32=e32, e16=_fp16_error(model, x, r64, batch) if half else None)


def _fp16_error(model: nn.Module, x: np.ndarray, r64: np.ndarray, batch: int) -> np.ndarray:
    """Per sample, how far the original run wholly in fp16 (weights, activations, every op rounded)
    lands from float64: the scale of error fp16 arithmetic itself makes on that input. Inf where
    fp16 overflows (no bound can be drawn from it there)."""
    m16 = copy.deepcopy(model).half().eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(m16(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).half()).double().numpy())
    err = np.abs(np.concatenate(outs) - r64).max(axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def _ulp_perturbed(model: nn.Module, seed: int) -> nn.Module:
    m = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    eps = float(np.finfo(np.float32).eps)
    with torch.no_grad():
        for t in [*m.parameters(), *(b for b in m.buffers() if b.is_floating_point())]:
            t.mul_(1 + eps * (2 * torch.rand(t.shape, generator=g) - 1))
    return m
