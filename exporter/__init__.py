"""The steps a bundle goes through, one folder each: kit (what a plugin imports), formats (the plugins),
export (the run, scheduling, workers, stage cache), bundle (the manifest and the claim on --out), check,
bench, report, sweep, runners and arm64. See README.md, *Layout*."""
from ..kernel import __version__  # noqa: F401 - the package version, defined in the kernel
