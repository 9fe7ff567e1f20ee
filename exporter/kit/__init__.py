"""The plugin kit: everything a format plugin may import from this tool, in one place (docs/plugins.md,
*What a plugin imports*, lists the same names, section by section; a test holds the two equal).

A plugin imports ``Format``, ``Plugin`` and ``preferred`` from :mod:`bsconv_export.exporter.formats` and
everything else from here::

    from bsconv_export.exporter.formats import Format, Plugin
    from bsconv_export.exporter.kit import ArtifactRecord, ExportContext, Option, Runner, Status

The built-in plugins (``exporter/formats/*``) hold to the same rule.
"""
from __future__ import annotations

# options: what a plugin declares and its stages read (``ctx.options.<name>``)
from .options import ExportOptions, Option
# context: what a stage is given
from .context import ExportContext
# capture: the program a stage converts, and what it holds
from .capture import op_counts
# prepare: the model as every format sees it
from .prepare import prepare_for_export
# calibration: the data every int8 format calibrates on, and the gate's own samples
from .calibration import calibration_data, gate_data, validate_calibration
# equalise: a pointwise → depthwise intermediate given one range per channel before int8 (exact in float)
from .equalise import channel_factors, equalise, range_spread
# records: what a stage returns
from .records import ArtifactRecord, Status
# tolerances: a precision and its gate (a plugin may declare its own)
from .tolerances import DEFAULT_TOLERANCES, FP32_ATOL, FP32_RTOL_MAX, Precision, Tolerance, scale_metrics
# stats: confidence intervals for a plugin that measures
from .stats import bootstrap_ci
# runners: the base a plugin's runner subclasses, and the two ways it says it cannot run
from ..runners import Runner, RunnerUnavailable, UnsupportedOp
# arm64: the base of a runner that runs on the ARM64 kit under emulation, and the kit itself
from ..arm64 import EmulatedRunner
from ..arm64.kit import WHEEL_PLATFORMS, find_kit, missing_reason
# the model side: the input spec a stage exports for, and the safe .pt2 loader
from ...models.program import load_program
from ...models.registry import InputSpec
# the shared kernel: errors, bounded I/O, limits, the app contract's names, caches, log quieting
from ...kernel import __version__
from ...kernel.backends import onnxruntime
from ...kernel.cache_dirs import built_aside, cache_root
from ...kernel.contract import INPUT_NAME, LABEL_OUTPUT, OUTPUT_NAME, pixel_normalization
from ...kernel.errors import UserInputError
from ...kernel.kit_files import record_files, verify_files
from ...kernel.limits import MAX_BATCH
from ...kernel.machine import usable_cores
from ...kernel.quiet import quiet_logs, quiet_native_stderr
from ...kernel.safe_io import loads_json, read_regular

__all__ = [
    "ExportOptions", "Option",
    "ExportContext",
    "op_counts",
    "prepare_for_export",
    "calibration_data", "gate_data", "validate_calibration",
    "equalise", "channel_factors", "range_spread",
    "ArtifactRecord", "Status",
    "DEFAULT_TOLERANCES", "FP32_ATOL", "FP32_RTOL_MAX", "Precision", "Tolerance", "scale_metrics",
    "bootstrap_ci",
    "Runner", "RunnerUnavailable", "UnsupportedOp",
    "EmulatedRunner", "WHEEL_PLATFORMS", "find_kit", "missing_reason",
    "load_program", "InputSpec",
    "__version__", "built_aside", "cache_root", "onnxruntime", "INPUT_NAME", "LABEL_OUTPUT", "OUTPUT_NAME",
    "pixel_normalization", "UserInputError", "record_files", "verify_files", "MAX_BATCH", "usable_cores",
    "quiet_logs", "quiet_native_stderr", "loads_json", "read_regular",
]
