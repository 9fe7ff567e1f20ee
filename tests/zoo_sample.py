"""The representative sample of the zoo that `make test` runs where `make test-zoo` runs every name."""
import re

from bsconv_export.models import list_models


def family(name: str) -> str:
    """The name without its width (MobileNets) or depth and widening factor (ResNets, WRNs)."""
    if "mobilenet" in name:
        return re.sub(r"_w[0-9d]+", "_W", name)
    return re.sub(r"(resnet|wrn)[0-9]+(_[0-9]+)?", r"\1N", name)


def cost(name: str) -> float:
    """How big a model is within its family: width rank, or depth times widening factor."""
    if "mobilenet" in name:
        return {"w1d4": 0, "w7d20": 0, "w1d2": 1, "w3d4": 2, "w1": 3}[re.search(r"_(w[0-9d]+)", name).group(1)]
    m = re.search(r"(?:resnet|wrn)([0-9]+)(?:_([0-9]+))?", name)
    return int(m.group(1)) * int(m.group(2) or 1)


def representative() -> list[str]:
    """One model of each flavour × family × variant: the smallest, which is the fastest."""
    chosen: dict[str, str] = {}
    for name in list_models():
        key = family(name)
        if key not in chosen or cost(name) < cost(chosen[key]):
            chosen[key] = name
    return sorted(chosen.values())
