"""bsconv-export: a trained BSConv network out of PyTorch and into mobile apps, checked and measured.

The package is this folder: ``models/`` (the BSConv layers, the zoo, checkpoints, sources, training),
``exporter/`` (one folder per step a bundle goes through), ``kernel/`` (what both share: errors,
bounded I/O, limits, the app contract's names) and ``cli.py`` (the ``bsconv-export`` command).
See README.md, *Layout*.
"""
if __package__:   # imported as bsconv_export
    from .kernel import __version__  # noqa: F401 - the package version, defined in the kernel
# else: pytest running from a checkout whose folder name is no Python identifier (``git clone`` makes
# ``bsconv-export/``, ``mktemp -d`` makes ``tmp.XXXX``) imports this file alone, as ``__init__``, to set
# up the folder's package: there is no parent to import from, and nothing here is needed then.
