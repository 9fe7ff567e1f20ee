"""ORT mobile format stage: ``.ort`` through onnxruntime's own converter.

Besides ``model.ort`` the bundle keeps the converter's required-operators config
(the input to an onnxruntime reduced build) and onnxruntime's mobile-usability
report: which parts of the graph the NNAPI and CoreML execution providers take.
The optimisation style is "Runtime", onnxruntime's advice for models that may
run with the NNAPI or CoreML execution providers: "Fixed" bakes in CPU-only
fused kernels (FusedConv) those providers cannot take.
The source is the simplified ONNX when that succeeded, else the plain one (the
record says which).
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

from ...kit import ArtifactRecord, ExportContext, Status
from .export import onnx_source, opset_of

ORT_NAME = "model.ort"
CONFIG_NAME = "model.required_operators.config"
USABILITY_NAME = "mobile_usability.txt"


def convert_to_ort(src: Path, out_dir: Path) -> tuple[Path, Path]:
    """Run onnxruntime's converter on one file; return (ort file, required-ops config)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.onnx"
        shutil.copyfile(src, staged)
        # The converter prints progress and logs at INFO on a logger it configures at import.
        log = logging.getLogger("ort_format_model.utils")
        level = log.level
        log.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                convert_onnx_models_to_ort(staged, output_dir=Path(tmp) / "out",
                                           optimization_styles=[OptimizationStyle.Runtime])
        finally:
            log.setLevel(level)
        produced = list((Path(tmp) / "out").glob("*.ort"))
        configs = list((Path(tmp) / "out").glob("*.config"))
        if len(produced) != 1 or len(configs) != 1:
            raise RuntimeError(f"the converter wrote {len(produced)} .ort and {len(configs)} .config files")
        ort_path, cfg_path = out_dir / ORT_NAME, out_dir / CONFIG_NAME
        shutil.move(str(produced[0]), ort_path)
        # the converter lists the files it read by their temporary paths: this machine's, not the model's
        cfg_path.write_text("".join(f"# - {Path(line[4:].strip()).name}\n" if line.startswith("# - ") else line
                                    for line in configs[0].read_text().splitlines(keepends=True)))
    return ort_path, cfg_path


def mobile_usability(src: Path) -> tuple[str, dict[str, str]]:
    """onnxruntime's usability analysis as text, plus each EP's verdict (YES/MAYBE/NO)."""
    from onnxruntime.tools.mobile_helpers.usability_checker import analyze_model

    stream = io.StringIO()
    logger = logging.getLogger(f"bsconv_export.usability.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        analyze_model(src, skip_optimize=False, logger=logger)
    finally:
        logger.removeHandler(handler)
    # the report names the file it read by its path in the build folder: name it as the bundle does,
    # so no path of the exporting machine ships (and the report is the same from one export to the next)
    text = stream.getvalue()
    for path in {str(src.resolve()), str(src)}:
        text = text.replace(path, src.name)
    verdicts = dict(re.findall(r"Model should perform well with (.+?) as is: (\w+)", text))
    return text, verdicts


def export_ort(ctx: ExportContext) -> ArtifactRecord:
    t0 = time.perf_counter()
    source_name, src = onnx_source(ctx)
    ort_path, cfg_path = convert_to_ort(src, ctx.workdir)
    text, verdicts = mobile_usability(src)
    (ctx.workdir / USABILITY_NAME).write_text(text)
    return ArtifactRecord(
        format="ort", status=Status.OK, path=ort_path.name, seconds=time.perf_counter() - t0,
        opset=opset_of(ctx), side_files=[cfg_path.name, USABILITY_NAME],
        details={"source": source_name, "required_operators_config": cfg_path.name,
                 "required_operators": parse_required_ops(cfg_path),
                 "mobile_usability_report": USABILITY_NAME, "mobile_usability": verdicts})


def parse_required_ops(cfg_path: Path) -> dict[str, list[str]]:
    """``ai.onnx;17;Conv,Relu`` lines → {"ai.onnx:17": ["Conv", "Relu"]}."""
    ops: dict[str, list[str]] = {}
    for line in cfg_path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, names = line.split(";", 2)
        ops[f"{domain}:{opset}"] = sorted(names.split(","))
    return ops
