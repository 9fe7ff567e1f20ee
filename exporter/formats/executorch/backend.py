"""What the ExecuTorch plugin says when its native code does not load beside this torch."""
from __future__ import annotations


def abi_hint(e: BaseException) -> str:
    import torch
    return (f"ExecuTorch does not load beside torch {torch.__version__} ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); install the pinned pair: "
            "pip install -c constraints.txt -e .")
