"""Lazy imports of the runtimes generic code shares, and the versions of installed packages: a leaf.

A format's own converters and runtimes are imported inside its plugin folder only
(:mod:`exporter.formats`); onnxruntime is here because ``bench`` pairs every artifact
with it and ``info`` reports its device.
"""
from __future__ import annotations

import functools
import platform


@functools.lru_cache(maxsize=1)
def onnxruntime():
    """onnxruntime, imported once with its telemetry turned off (this tool makes no network calls)."""
    import onnxruntime as ort
    if hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()
    return ort


def package_versions(packages: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Each distribution's installed version from its metadata (nothing imported), or "not installed"."""
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def core_versions() -> dict[str, str]:
    """What every bundle depends on whichever formats it holds: the imported modules' own versions
    (pip metadata can name another distribution, e.g. onnxruntime beside onnxruntime-gpu)."""
    import importlib
    from . import __version__
    out = {"bsconv-export": __version__, "python": platform.python_version()}
    for pkg in ("torch", "numpy", "onnxruntime"):
        try:
            out[pkg] = importlib.import_module(pkg).__version__
        except ImportError:
            out[pkg] = "not installed"
    out["onnxruntime_device"] = onnxruntime().get_device() if out["onnxruntime"] != "not installed" else "none"
    return out
