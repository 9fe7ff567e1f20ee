"""The ``.pte`` runner: ExecuTorch's own runtime (``executorch.runtime``), XNNPACK on the CPU.

The program is loaded with ``Verification.InternalConsistency`` (its flatbuffer
offsets are checked before use: a ``.pte`` in a bundle someone sent is
untrusted input). A ``.pte`` has positional inputs and outputs; the bundle's
contract names them ``input`` and ``logits``. A dynamic-batch ``.pte`` is
memory-planned for batches up to the size its metadata reports (ExecuTorch
caps it; 15 for our models), so larger batches run in chunks of that size.
ExecuTorch sizes XNNPACK's thread pool once per process (to the machine's
performance cores); ``--threads`` is recorded, not applied.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ...kit import INPUT_NAME, OUTPUT_NAME, Runner, RunnerUnavailable


@functools.lru_cache(maxsize=1)
def _runtime():
    """``(Runtime.get(), Verification)``, or the reason ExecuTorch cannot run here."""
    from ...kit import quiet_logs
    try:
        with quiet_logs():
            from executorch.runtime import Runtime, Verification
        return Runtime.get(), Verification
    except Exception as e:  # noqa: BLE001 - a missing package or a native ABI mismatch
        from .backend import abi_hint
        return abi_hint(e), None


class ExecuTorchRunner(Runner):
    name = "executorch-xnnpack"
    kinds = ("pte",)

    def __init__(self, path: str | Path, provider: str = "cpu", *, threads: int | None = None,
                 spinning: bool = True):
        super().__init__(path, provider=provider, threads=threads, spinning=spinning)
        self.method = None

    def unavailable_reason(self) -> str | None:
        runtime, verification = _runtime()
        return runtime if verification is None else None

    def load(self) -> "ExecuTorchRunner":
        reason = self.unavailable_reason()
        if reason:
            raise RunnerUnavailable(reason)
        runtime, verification = _runtime()
        program = runtime.load_program(str(self.path), verification=verification.InternalConsistency)
        if "forward" not in program.method_names:
            raise ValueError(f"the .pte has no 'forward' method (methods: {sorted(program.method_names)})")
        from ...kit import quiet_native_stderr
        with quiet_native_stderr():  # XNNPACK's thread pool logs CPU probing on its first start
            self.method = program.load_method("forward")
        meta = self.method.metadata
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise ValueError(f"the .pte takes {meta.num_inputs()} inputs and returns {meta.num_outputs()} "
                             "outputs; expected one of each")
        planned = tuple(meta.input_tensor_meta(0).sizes())
        if len(planned) != 4:
            raise ValueError(f"the .pte's input has shape {list(planned)}, expected [batch, channels, h, w]")
        self._program = program
        self.input_names, self.output_names = [INPUT_NAME], [OUTPUT_NAME]
        if planned[0] > 1 and self._takes_batch_one(planned):
            self.input_shape = ("batch", *planned[1:])
            self.fixed_batch, self.max_batch = None, planned[0]
        else:
            self.input_shape = planned
            self.fixed_batch = planned[0]
        return self

    def _takes_batch_one(self, planned: tuple) -> bool:
        """Whether the planned batch is an upper bound (a dynamic batch) rather than the only one."""
        import torch
        try:
            self.method.execute([torch.zeros((1, *planned[1:]))])
            return True
        except RuntimeError:
            return False

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        if self.method is None:
            self.load()
        x = torch.from_numpy(np.ascontiguousarray(inputs[INPUT_NAME], dtype=np.float32))
        (y,) = self.method.execute([x])
        return {OUTPUT_NAME: y.numpy().copy()}

    def close(self) -> None:
        self.method = None
        self._program = None
