"""bsconv-export: a trained BSConv network out of PyTorch and into mobile apps, checked and measured.

The package is this folder: ``models/`` (the BSConv layers, the zoo, checkpoints, sources, training),
``exporter/`` (one folder per step a bundle goes through), ``kernel/`` (what both share: errors,
bounded I/O, limits, the app contract's names) and ``cli.py`` (the ``bsconv-export`` command).
See README.md, *Layout*.
"""
from .kernel import __version__  # noqa: F401 - the package version, defined in the kernel
