"""The ExecuTorch plugin: ``.pte`` programs lowered to XNNPACK (fp32, and int8 through the pt2e
quantizer), run by ExecuTorch's own runtime. executorch and torchao are imported in this folder
and nowhere else."""
from __future__ import annotations

from .. import Format, Plugin
from ...kit import validate_calibration
from .export import PTE_INT8_NAME, PTE_NAME, export_pte, export_pte_int8, import_lowering
from .arm64 import PteArm64Runner
from .runner import ExecuTorchRunner


def _note(r) -> str:
    d = r.details
    outside = ", ".join(f"{op.split('.')[-2] if op.count('.') >= 2 else op} ×{n}"
                        for op, n in d.get("outside_ops", {}).items())
    return f"XNNPACK runs {d.get('delegated_nodes')} nodes; outside: {outside or 'none'}"


def _fallback(r) -> dict[str, int]:
    """The operators the program leaves to ExecuTorch's portable kernels (outside XNNPACK)."""
    return dict(r.details.get("outside_ops", {}))


PLUGIN = Plugin(
    name="executorch",
    order=30,
    tools=("executorch", "torchao"),
    warm=import_lowering,
    formats=(
        Format("pte", export_pte, PTE_NAME, "pte", "ExecuTorch program, XNNPACK-delegated", default=True,
               note=_note, fallback=_fallback, platforms=("android", "ios")),
        Format("pte-int8", export_pte_int8, PTE_INT8_NAME, "pte", "ExecuTorch program, XNNPACK int8 (pt2e quantizer)",
               precision="int8", options=("calibration",), validate=validate_calibration,
               note=lambda r: f"{_note(r)}; calibration: {r.details.get('calibration')}", fallback=_fallback,
               platforms=("android", "ios")),
    ),
    runners=(ExecuTorchRunner, PteArm64Runner),
)
