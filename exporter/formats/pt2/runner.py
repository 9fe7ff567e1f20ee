"""The ``.pt2`` runner: a saved ExportedProgram, loaded safely and run by PyTorch on the CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...kit import INPUT_NAME, OUTPUT_NAME, Runner


class TorchProgramRunner(Runner):
    """``model.pt2`` through :func:`models.program.load_program` and ``program.module()``."""

    name = "torch-export"
    kinds = ("pt2",)

    def __init__(self, path: str | Path, provider: str = "cpu", *, threads: int | None = None,
                 spinning: bool = True):
        super().__init__(path, provider=provider, threads=threads, spinning=spinning)
        self.module = None

    def load(self) -> "TorchProgramRunner":
        import torch

        from ...kit import load_program
        program, _ = load_program(self.path)
        spec = program.graph_signature.user_inputs
        if len(spec) != 1 or len(program.graph_signature.user_outputs) != 1:
            raise ValueError(f"the program takes {len(spec)} inputs and returns "
                             f"{len(program.graph_signature.user_outputs)} outputs; expected one of each")
        placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == spec[0])
        shape = tuple(int(d) if isinstance(d, int) or str(d).isdigit() else "batch"
                      for d in placeholder.meta["val"].shape)
        self.input_shape = shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        # a program's inputs and outputs are positional; the bundle's contract names them
        self.input_names, self.output_names = [INPUT_NAME], [OUTPUT_NAME]
        self.module = program.module()
        self._torch = torch
        return self

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.module is None:
            self.load()
        torch = self._torch
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                y = self.module(torch.from_numpy(np.ascontiguousarray(inputs[INPUT_NAME])))
        finally:
            torch.set_num_threads(threads)
        return {OUTPUT_NAME: y.numpy()}

    def close(self) -> None:
        self.module = None
