"""Loading and saving checkpoints, safely.

Accepted inputs (all read with ``torch.load(weights_only=True)`` or safetensors,
so a pickle that would run code is refused):

* a raw state_dict;
* ``{"model_state_dict": ...}`` (the reference training script) or ``{"state_dict": ...}``;
* keys prefixed with ``module.`` (DataParallel / DDP);
* ``.safetensors`` files (metadata ``bsconv_export`` may hold the header below);
* this project's format: ``{"format": "bsconv-export", "arch", "num_classes",
  "input_spec", "state_dict"}``, which makes ``arch`` optional.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..kernel.errors import CheckpointError, UserInputError
from .registry import DEFAULT_ARCH, InputSpec, create_model, get_entry
from .source import ModelSource, ZooSource
from ..kernel.safe_io import open_regular

FORMAT = "bsconv-export"
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / f"digits_{DEFAULT_ARCH}.pt"
FORMAT_VERSION = 1
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
_SHOW = 5


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    arch: str
    path: Path
    sha256: str
    input_spec: InputSpec
    #: the checkpoint's own JSON header (training config, accuracy), as the file holds it
    header: dict[str, Any] = field(default_factory=dict)
    source: ModelSource = field(default=None)  # type: ignore[assignment]
    #: no checkpoint: seeded, untrained weights (enough to export a shape, not to ship)
    untrained: bool = False
    #: the input-spec options a model outside the zoo was given (the reproduce command repeats them)
    spec_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = ZooSource(arch=self.arch)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (state_dict-or-wrapper, project header) read from ``path``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
        try:
            header = json.loads(meta["bsconv_export"]) if "bsconv_export" in meta else {}
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: its 'bsconv_export' metadata is not valid JSON; "
                                  "re-save the checkpoint") from None
        return tensors, _checked_header(header, path)
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..) since 1.6, a binary pickle (0x80, protocol >= 2) before;
    # anything else (a text file, an image) is no checkpoint, and calling it a hostile pickle would mislead
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        kind = "text" if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "other data"
        raise CheckpointError(f"{path}: not a torch.save checkpoint (it starts with {kind}, not a zip archive or a "
                              "binary pickle); pass a .pt written by torch.save, or a .safetensors file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol notices on foreign files
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = _first_line(e)
        if "weights_only" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            raise CheckpointError(
                f"{path}: refused, the pickle would run code ({msg[:120]}); re-save it as a plain "
                "state_dict (torch.save(model.state_dict(), ...)) or as .safetensors") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({msg[:160]})") from None
    except Exception as e:  # noqa: BLE001 - torch.load fails on junk with many types (KeyError, EOFError...)
        raise CheckpointError(
            f"{path}: not a readable checkpoint, truncated or not a torch.save file ({_first_line(e)[:160]})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    header = {k: obj[k] for k in ("format", "format_version", "arch", "num_classes", "input_spec")
              if k in obj} if obj.get("format") == FORMAT else {}
    return obj, _checked_header(header, path)


def _checked_header(header: Any, path: Path) -> dict[str, Any]:
    """The project header with every field of the type later code relies on."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: its header is a {type(header).__name__}, not a mapping; re-save the checkpoint")
    expected = {"arch": str, "num_classes": int, "input_spec": dict, "format_version": int}
    for key, kind in expected.items():
        value = header.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise CheckpointError(f"{path}: header field '{key}' is a {type(value).__name__}, not a "
                                  f"{kind.__name__}; re-save the checkpoint")
    n = header.get("num_classes")
    if n is not None and not 1 <= n <= 100_000:
        raise CheckpointError(f"{path}: header num_classes {n} is outside 1..100000")
    if header.get("input_spec"):
        try:
            InputSpec.from_dict(header["input_spec"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: header input_spec is invalid ({e}); re-save the checkpoint") from None
    return header


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def extract_state_dict(obj: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    for key in _WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: no tensors found; expected a state_dict or "
                              f"a dict with one of {', '.join(_WRAPPER_KEYS)}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _infer_num_classes(sd: dict[str, torch.Tensor]) -> int | None:
    w = sd.get("classifier.conv.weight")
    return int(w.shape[0]) if w is not None else None


def _fit(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:_SHOW])}{', ...' if len(missing) > _SHOW else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:_SHOW])}{', ...' if len(unexpected) > _SHOW else ''})")
        raise CheckpointError(f"{path} does not fit {arch}: {'; '.join(parts)}; is the architecture right? (the ARCH argument, see 'bsconv-export models')")
    wrong = [(k, tuple(own[k].shape), tuple(sd[k].shape)) for k in own if own[k].shape != sd[k].shape]
    if wrong:
        k, exp, got = wrong[0]
        raise CheckpointError(f"{path} does not fit {arch}: {len(wrong)} shape mismatches, first "
                              f"{k}: expected {list(exp)}, found {list(got)}; is the architecture or its width right?")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: tensor {bad[0]} holds NaN or Inf values"
                              f"{f' (and {len(bad) - 1} more tensors)' if len(bad) > 1 else ''}; "
                              "the checkpoint is broken: re-save it from a healthy training run")
    model.load_state_dict(sd, strict=True)


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass the file")
    os.close(open_regular(path, "checkpoint"))   # a pipe or device would block every read below
    return _read(path)


def load_state_into(model: nn.Module, path: str | os.PathLike, label: str) -> tuple[str, dict[str, Any]]:
    """Load a checkpoint's weights into a model built elsewhere (a --model factory), strictly;
    returns the file's sha256 and its project header (which may hold an input spec)."""
    path = Path(path)
    obj, header = _read_file(path)
    _fit(model, extract_state_dict(obj, path), path, label)
    return file_sha256(path), header


def load_checkpoint(path: str | os.PathLike, arch: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint into a fresh model in eval mode; ``arch`` may come from the file."""
    path = Path(path)
    obj, header = _read_file(path)
    sd = extract_state_dict(obj, path)
    arch_name = arch or header.get("arch")
    if not arch_name:
        raise UserInputError(f"{path} does not record its architecture; name it: bsconv-export COMMAND ARCH --checkpoint FILE")
    if arch and header.get("arch") and arch.lower() != header["arch"]:
        raise CheckpointError(f"{path} was saved for {header['arch']}, not {arch}; drop the ARCH argument or fix it")
    get_entry(arch_name)
    num_classes = header.get("num_classes") or _infer_num_classes(sd)
    spec_dict = header.get("input_spec") or {}
    labels = tuple(spec_dict.get("labels") or ())
    model = create_model(arch_name, num_classes=num_classes, labels=labels)
    _fit(model, sd, path, model.arch)
    if spec_dict:
        model.input_spec = InputSpec.from_dict(spec_dict)
    model.eval()
    return LoadedCheckpoint(model=model, arch=model.arch, path=path, sha256=file_sha256(path),
                            input_spec=model.input_spec,
                            header={k: v for k, v in header.items() if k != "input_spec"})


def save_checkpoint(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write the project's format (``.pt``) or ``.safetensors``, atomically."""
    path = Path(path)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": model.arch,
              "num_classes": model.input_spec.num_classes, "input_spec": model.input_spec.to_dict()}
    header.update(extra or {})
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file(sd, tmp, metadata={"bsconv_export": json.dumps(header)})
        else:
            torch.save({**header, "state_dict": sd}, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def resolve_model(arch: str | None = None, checkpoint: str | os.PathLike | None = None) -> LoadedCheckpoint:
    """What the CLI means by a model: a checkpoint, else the shipped model when no arch is named.

    An ``arch`` with no checkpoint gives freshly initialised weights (``sha256`` is
    then empty): enough to export and benchmark a shape, not to ship.
    """
    if checkpoint is not None:
        return load_checkpoint(checkpoint, arch)
    if arch is None:
        return load_checkpoint(DEFAULT_CHECKPOINT)
    torch.manual_seed(0)
    model = create_model(arch)
    return LoadedCheckpoint(model=model, arch=model.arch, path=Path(""), sha256="",
                            input_spec=model.input_spec, untrained=True)


def check_destination(output: Path, force: bool) -> None:
    """Before training: a checkpoint file name, a folder that exists, nothing replaced unless asked."""
    output = Path(output)
    if output.suffix not in (".pt", ".pth", ".safetensors"):
        raise UserInputError(f"--out {output} must end in .pt, .pth or .safetensors")
    if output.exists() and not force:
        raise UserInputError(f"{output} already exists; pass --force to replace it or choose another --out")
    if not output.parent.is_dir():
        raise UserInputError(f"cannot write {output}: {output.parent} does not exist; create it first")
