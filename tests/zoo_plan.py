"""Write the whole-zoo sweep plan `make test-zoo` runs (not a test).

For every zoo name matching ``--pattern``: the seeded architecture with realistic BatchNorm
statistics (tests/e2e/test_zoo_check.py: running it in training mode over inputs drawn with another
seed than the check's), saved as a checkpoint under ``OUT/checkpoints`` (kept when it exists, so
``sweep --resume`` recognises the bundles that passed), and one job exporting it to every fp32
format with the check. Then: ``bsconv-export sweep OUT/sweep.toml --resume``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_zoo_check import FP32_FORMATS, realistic_statistics  # noqa: E402

from bsconv_export.models import list_models  # noqa: E402
from bsconv_export.models.checkpoint import resolve_model, save_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--pattern", default="*")
    ap.add_argument("--formats", default=",".join(FP32_FORMATS))
    args = ap.parse_args()
    ckpts = args.out / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    names = list_models(args.pattern)
    lines = ["# the whole-zoo sweep (tests/zoo_plan.py)", "[defaults]",
             "formats = [" + ", ".join(f'"{f}"' for f in args.formats.split(",")) + "]", ""]
    for name in names:
        ckpt = ckpts / f"{name}.pt"
        if not ckpt.is_file():
            torch.manual_seed(0)
            loaded = resolve_model(name)
            realistic_statistics(loaded.model, loaded.input_spec)
            save_checkpoint(loaded.model, ckpt)
        lines += ["[[job]]", f'checkpoint = "checkpoints/{name}.pt"', f'out = "bundles/{name}"', ""]
    (args.out / "sweep.toml").write_text("\n".join(lines))
    print(f"{args.out / 'sweep.toml'}: {len(names)} jobs", file=sys.stderr)


if __name__ == "__main__":
    main()
