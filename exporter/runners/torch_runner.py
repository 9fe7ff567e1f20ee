"""The eager PyTorch original, as a runner."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...kernel.contract import OUTPUT_NAME
from . import Runner


class TorchRunner(Runner):
    name = "torch-cpu"
    max_batch = 8  # bound peak memory on large inputs

    def __init__(self, model: nn.Module, output_name: str = OUTPUT_NAME):
        self.model = model.eval()
        self.output_name = output_name

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (x,) = inputs.values()
        with torch.no_grad():
            return {self.output_name: self.model(torch.from_numpy(np.ascontiguousarray(x))).numpy()}
