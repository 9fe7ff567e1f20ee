"""coremltools, imported quietly: the one place the CoreML plugin's stages and runners get it."""
from __future__ import annotations

import contextlib
import io
import warnings


def import_coremltools():
    """Import coremltools quietly (on Linux it logs that its native runtime is missing)."""
    from ...quiet import quiet_logs
    with quiet_logs(), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import coremltools as ct
    return ct
