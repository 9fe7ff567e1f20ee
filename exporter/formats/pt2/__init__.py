"""The ``pt2`` plugin: the bundle's ``torch.export`` program, saved, and run back by PyTorch."""
from __future__ import annotations

from .. import Format, Plugin
from .runner import TorchProgramRunner
from .stage import PT2_NAME, export_pt2

PLUGIN = Plugin(
    name="pt2",
    order=0,
    formats=(Format("pt2", export_pt2, PT2_NAME, "pt2", "the torch.export program every format comes from",
                    default=True, benchmark=False, captures=True,
                    note=lambda r: f"{r.nodes} ATen nodes, captured in {r.details.get('capture_seconds')} s"),),
    runners=(TorchProgramRunner,),
)
