"""coremltools, imported quietly: the one place the CoreML plugin's stages and runners get it."""
from __future__ import annotations

import contextlib
import io
import sys
import warnings


def import_coremltools():
    """Import coremltools quietly (on Linux it logs that its native runtime is missing).

    coremltools imports ExecuTorch's ``exir`` (2.3 s here) only to turn an Edge-dialect program into
    its own input; this tool hands it ATen programs, never Edge ones, so ExecuTorch is hidden from that
    first import and a process that converts or interprets CoreML does not pay for it (a process that
    also lowers a ``.pte`` imports it there).
    """
    from ...kit import quiet_logs
    first = "coremltools" not in sys.modules
    hidden = sys.modules.get("executorch")
    if first:
        sys.modules["executorch"] = None     # an ImportError for coremltools' probe
    try:
        with quiet_logs(), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools as ct
    finally:
        if first:
            if hidden is None:
                sys.modules.pop("executorch", None)
            else:
                sys.modules["executorch"] = hidden
    return ct
