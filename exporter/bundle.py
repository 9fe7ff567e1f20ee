"""The export pipeline: stages in order, records collected, one manifest, atomic bundle.

The bundle is built in a hidden sibling folder of ``out`` and renamed into place
only when every stage has run, so a crash or Ctrl-C never leaves a half-written
bundle at ``out``. A stage that raises is recorded as failed and the others
still run; bad options are refused before anything is written.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..models.checkpoint import LoadedCheckpoint
from ..models.errors import UserInputError
from ..models.profile import profile_model

from . import __version__
from .context import COREML_INPUTS, COREML_PRECISIONS, FORMAT_NAMES, ExportContext, ExportOptions
from .check import CheckOptions, run_check
from .coreml import export_coreml
from .fp16 import export_coreml_fp16, export_fp16
from .quantize import export_int8
from .onnx_export import export_onnx, resolve_opset
from .ort_format import export_ort
from .prepare import example_input, prepare_for_export
from .records import ArtifactRecord, Status, finished
from .simplify import simplify_onnx

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[ExportContext], ArtifactRecord]
    wanted: Callable[[ExportOptions], bool]


ONNX_CONSUMERS = ("onnx", "ort", "int8", "fp16")

# Order matters: later stages read earlier records (ctx.records).
STAGES: tuple[Stage, ...] = (
    Stage("onnx", export_onnx, lambda o: any(f in o.formats for f in ONNX_CONSUMERS)),
    Stage("onnx-simplified", simplify_onnx, lambda o: o.simplify and any(f in o.formats for f in ONNX_CONSUMERS)),
    Stage("ort", export_ort, lambda o: "ort" in o.formats),
    Stage("coreml", export_coreml, lambda o: "coreml" in o.formats),
    Stage("int8", export_int8, lambda o: "int8" in o.formats),
    Stage("fp16", export_fp16, lambda o: "fp16" in o.formats),
    Stage("coreml-fp16", export_coreml_fp16, lambda o: "coreml-fp16" in o.formats),
)



@dataclass
class BundleResult:
    out: Path
    manifest: dict
    records: list[ArtifactRecord]

    @property
    def ok(self) -> bool:
        return bool(self.manifest["passed"])


def parse_formats(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in names if f not in FORMAT_NAMES]
    if unknown or not names:
        raise UserInputError(f"unknown format {', '.join(unknown) or repr(text)}; choose from {','.join(FORMAT_NAMES)}")
    return names


def validate_options(opts: ExportOptions, loaded: LoadedCheckpoint, out: Path) -> int:
    """Refuse bad options before anything is written; return the input size to use."""
    bad = [f for f in opts.formats if f not in FORMAT_NAMES]
    if bad:
        raise UserInputError(f"unknown format {', '.join(bad)}; choose from {','.join(FORMAT_NAMES)}")
    if opts.coreml_precision not in COREML_PRECISIONS:
        raise UserInputError(f"--coreml-precision must be one of {', '.join(COREML_PRECISIONS)}")
    if opts.coreml_input not in COREML_INPUTS:
        raise UserInputError(f"--coreml-input must be one of {', '.join(COREML_INPUTS)}")
    if opts.batch < 1:
        raise UserInputError(f"--batch must be at least 1, got {opts.batch}")
    if opts.palettize_bits is not None and opts.palettize_bits not in (1, 2, 3, 4, 6, 8):
        raise UserInputError(f"--palettize-bits must be 1, 2, 3, 4, 6 or 8, not {opts.palettize_bits}")
    if opts.calibration not in (None, "random") and not Path(opts.calibration).is_file():
        raise UserInputError(f"--calibration {opts.calibration} does not exist; pass an .npz with an 'input' array or 'random'")
    if "int8" in opts.formats and opts.calibration is None:
        from ..models.data import DIGIT_LABELS
        if tuple(loaded.input_spec.class_labels()) != DIGIT_LABELS:
            raise UserInputError("int8 needs real calibration samples: pass --calibration FILE.npz (an 'input' "
                                 "array of real inputs), or --calibration random for latency work only")
    if opts.dynamic_batch and ("coreml" in opts.formats or "coreml-fp16" in opts.formats):
        raise UserInputError("CoreML takes a fixed batch: drop --dynamic-batch or leave coreml out of --formats")
    size = opts.input_size or loaded.input_spec.size
    stride = getattr(loaded.model, "total_stride", 1)
    if size < stride:
        raise UserInputError(f"--input-size {size} is smaller than {loaded.arch}'s total stride {stride}; "
                             f"use at least {stride} (its native size is {loaded.input_spec.size})")
    if out.exists() and not opts.force:
        raise UserInputError(f"{out} already exists; pass --force to replace it or choose another --out")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} exists and is not a directory; choose another --out")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UserInputError(f"cannot write {out}: {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"cannot write {out}: {parent} is not writable; choose another --out")
    return size


def reproduce_command(loaded: LoadedCheckpoint, opts: ExportOptions, out: Path, size: int) -> str:
    args = ["bsconv-export", "export"]
    if str(loaded.path) not in ("", "."):
        args += ["--checkpoint", str(loaded.path)]
    else:
        args += [loaded.arch]
    args += ["--out", str(out), "--formats", ",".join(opts.formats), "--input-size", str(size)]
    args += ["--dynamic-batch"] if opts.dynamic_batch else ["--batch", str(opts.batch)]
    if opts.opset is not None:
        args += ["--opset", str(opts.opset)]
    args += ["--coreml-precision", opts.coreml_precision, "--coreml-input", opts.coreml_input]
    if not opts.simplify:
        args.append("--no-simplify")
    if "int8" in opts.formats:
        args += ["--calibration", opts.calibration] if opts.calibration else []
        for node in opts.keep_fp32:
            args += ["--keep-fp32", node]
    if opts.palettize_bits:
        args += ["--palettize-bits", str(opts.palettize_bits)]
    return shlex.join(args)


def tool_versions() -> dict[str, str]:
    """Versions of what produced or runs an artifact: the imported modules' own where cheap
    (pip metadata can name another distribution, e.g. onnxruntime beside onnxruntime-gpu)."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version
    out = {"bsconv-export": __version__, "python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime", "numpy"):
        try:
            out[pkg] = importlib.import_module(pkg).__version__
        except ImportError:
            out[pkg] = "not installed"
    for pkg in ("onnxsim", "coremltools"):  # importing coremltools is slow and noisy: read metadata
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        import onnxruntime
        out["onnxruntime_device"] = onnxruntime.get_device()
    except ImportError:
        pass
    return out


def _run_stage(stage: Stage, ctx: ExportContext) -> ArtifactRecord:
    t0 = time.perf_counter()
    try:
        record = stage.run(ctx)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - a stage failure is recorded, the others still run
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        record = ArtifactRecord(format=stage.name, status=Status.FAILED, seconds=time.perf_counter() - t0,
                                error=f"{type(e).__name__}: {msg[:500]}")
    return finished(record, ctx.workdir)


def export_bundle(loaded: LoadedCheckpoint, out: str | os.PathLike, opts: ExportOptions = ExportOptions(),
                  progress: Callable[[str, ArtifactRecord | None], None] | None = None,
                  check: CheckOptions | None = None,
                  check_progress: Callable | None = None) -> BundleResult:
    """Export ``loaded`` to a bundle at ``out``; with ``check``, prove it equivalent before it lands."""
    out = Path(out)
    size = validate_options(opts, loaded, out)
    opset = resolve_opset(opts.opset)
    spec = loaded.input_spec
    if size != spec.size:
        spec = type(spec).from_dict({**spec.to_dict(), "size": size})
    prepared = prepare_for_export(loaded.model)
    profile = profile_model(loaded.model, size)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.resolve().parent))
    try:
        ctx = ExportContext(model=prepared, arch=loaded.arch, spec=spec,
                            example=example_input(spec.channels, size, opts.batch), options=opts,
                            opset=opset, workdir=tmp, checkpoint_sha256=loaded.sha256,
                            params=profile.params, macs=profile.macs)
        with torch.no_grad():
            for stage in STAGES:
                if not stage.wanted(opts):
                    continue
                if progress:
                    progress(stage.name, None)
                ctx.records[stage.name] = _run_stage(stage, ctx)
                if progress:
                    progress(stage.name, ctx.records[stage.name])
        records = list(ctx.records.values())
        manifest = build_manifest(ctx, loaded, records, reproduce_command(loaded, opts, out, size))
        if check is not None:
            if progress:
                progress("check", None)
            report = run_check(tmp, manifest, loaded.model, check, check_progress)
            attach_check(manifest, report)
        write_manifest(tmp, manifest)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BundleResult(out=out, manifest=manifest, records=records)


def build_manifest(ctx: ExportContext, loaded: LoadedCheckpoint, records: list[ArtifactRecord],
                   command: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"arch": ctx.arch, "num_classes": ctx.spec.num_classes, "params": ctx.params,
                  "macs": ctx.macs, "input_spec": ctx.spec.to_dict(), "labels": ctx.spec.class_labels(),
                  "checkpoint": str(loaded.path) if str(loaded.path) not in ("", ".") else None,
                  "checkpoint_sha256": loaded.sha256 or None,
                  "trained": not loaded.metadata.get("untrained", False)},
        "export": {"input_shape": list(ctx.example.shape), "dynamic_batch": ctx.options.dynamic_batch,
                   "opset": ctx.opset, "coreml_precision": ctx.options.coreml_precision,
                   "coreml_input": ctx.options.coreml_input, "simplify": ctx.options.simplify},
        "artifacts": [r.to_dict() for r in records],
        "passed": all(r.ok for r in records),
        "tools": tool_versions(),
        "command": command,
    }


def attach_check(manifest: dict, report) -> None:
    """Record a check report in the manifest; ``passed`` needs every stage and every check."""
    manifest["check"] = report.to_dict()
    manifest["passed"] = all(a["status"] == "ok" for a in manifest["artifacts"]) and report.passed


def write_manifest(bundle: Path, manifest: dict) -> None:
    """Write (or replace) ``manifest.json`` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=bundle)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, bundle / MANIFEST)


def read_manifest(bundle: str | os.PathLike) -> dict:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise UserInputError(f"{bundle} is not a bundle: no {MANIFEST}; create one with 'bsconv-export export'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path} is not valid JSON ({e}); re-export the bundle") from None


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.resolve().parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
