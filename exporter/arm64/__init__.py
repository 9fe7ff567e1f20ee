"""The ARM64 target of the check: artifacts run on the aarch64 builds of their runtimes under QEMU.

``check BUNDLE --on arm64`` (or ``--on arm64:cortex-a53,arm64:cortex-a76``) adds, for every
artifact a plugin has an emulated runner for, one record per CPU model, held to the same rules as
on the host; a failure on any CPU fails the check. A plugin's emulated runner subclasses
:class:`EmulatedRunner` and names a worker script that runs on the kit's aarch64 Python
(:mod:`exporter.arm64.bsconv_arm64_serve` is its side of the protocol). The kit is
:mod:`exporter.arm64.kit`. Timings under emulation mean nothing, so these runners verify only.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ...kernel.errors import UserInputError
from ...kernel.contract import INPUT_NAME, OUTPUT_NAME
from ..runners import Runner, RunnerUnavailable
from .kit import find_kit, missing_reason

HERE = Path(__file__).resolve().parent
TARGET = "arm64"
#: ``--on arm64`` alone: a core without fp16 arithmetic (Cortex-A53, every budget phone) and one with
#: it (Cortex-A76, Armv8.2: recent phones), whose kernels differ for fp16 files
DEFAULT_CPUS = ("cortex-a53", "cortex-a76")
LOAD_TIMEOUT_S = 600     # starting an emulated Python and loading a large model
INFER_TIMEOUT_S = 3600   # every check input through a ResNet under emulation


def parse_targets(text: str | None) -> tuple[str, ...]:
    """``--on``'s value as targets (``arm64:CPU``), checked against the kit's CPU models; () for none."""
    if not text:
        return ()
    targets: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        name, _, cpu = item.partition(":")
        if name != TARGET:
            raise UserInputError(f"--on {item!r}: the targets are {TARGET} and {TARGET}:CPU (e.g. "
                                 f"{TARGET}:{DEFAULT_CPUS[1]})")
        targets += [f"{TARGET}:{c}" for c in ((cpu,) if cpu else DEFAULT_CPUS)]
    kit = find_kit()
    if kit is None:
        raise UserInputError(missing_reason())
    known = kit.cpus()
    for t in targets:
        if t.split(":", 1)[1] not in known:
            raise UserInputError(f"--on {t}: QEMU emulates no CPU of that name; it knows {', '.join(known)}")
    return tuple(dict.fromkeys(targets))


class EmulatedRunner(Runner):
    """Runs an artifact on an aarch64 runtime under QEMU, in a worker process that lives from ``load``
    to ``close``: inputs go over and ``logits`` come back as raw float32 files (bsconv_arm64_serve)."""

    target = TARGET
    timeable = False
    #: the plugin's worker script, run on the kit's aarch64 Python
    worker: Path
    #: the runtime the worker loads, for the record's label
    runtime: str = "runtime"

    def __init__(self, path, *, provider: str = "cpu", threads: int | None = 1, spinning: bool = True,
                 cpu: str | None = None):
        super().__init__(path, provider=provider, threads=threads or 1, spinning=spinning,
                         cpu=cpu or DEFAULT_CPUS[1])
        self.facts: dict = {}
        self._proc: subprocess.Popen | None = None
        self._tmp: str | None = None
        self._log = None

    def label(self) -> str:
        return f"{self.name}@{self.cpu}"

    def unavailable_reason(self) -> str | None:
        try:
            return None if find_kit() is not None else missing_reason()
        except UserInputError as e:     # a changed kit: skipped, and why
            return str(e)

    def load(self) -> "EmulatedRunner":
        kit = find_kit()
        if kit is None:
            raise RunnerUnavailable(missing_reason())
        self._tmp = tempfile.mkdtemp(prefix="bsconv-arm64-")
        try:   # a worker that fails or hangs while loading is ended here: no process, no folder left
            self._log = tempfile.TemporaryFile("w+")
            self._proc = subprocess.Popen(self.command(kit),
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                          env=kit.env(HERE), cwd=self._tmp, start_new_session=True)
            self.facts = self._reply(LOAD_TIMEOUT_S)
        except BaseException:
            self._kill()
            self.close()
            raise
        self.input_names = list(self.facts["inputs"])
        self.output_names = list(self.facts["outputs"])
        self.input_shape = tuple(self.facts["input_shape"])
        return self

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(inputs[INPUT_NAME], dtype=np.float32)
        src, dst = Path(self._tmp) / "input.f32", Path(self._tmp) / "output.f32"
        x.tofile(src)
        self._proc.stdin.write(json.dumps({"input": str(src), "shape": list(x.shape), "output": str(dst)}) + "\n")
        self._proc.stdin.flush()
        reply = self._reply(INFER_TIMEOUT_S)
        if "error" in reply:
            raise RuntimeError(f"{self.runtime} on aarch64 ({self.cpu}): {reply['error']}")
        shape = [int(v) for v in reply["shape"]]
        return {OUTPUT_NAME: np.fromfile(dst, dtype=np.float32).reshape(shape)}

    def command(self, kit) -> list[str]:
        """How to start the worker on the emulated CPU (a Python script on the kit's Python by default)."""
        return kit.command(self.cpu, str(self.worker), str(self.path.resolve()), str(self.threads))

    def _reply(self, timeout: float) -> dict:
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            if ready:   # end of output: the worker is gone; its status says how
                try:
                    why = f"exited with status {self._proc.wait(timeout=30)}"
                except subprocess.TimeoutExpired:
                    why = "closed its output"
            else:
                why = f"gave no answer within {timeout:.0f} s"
                self._kill()     # hung (QEMU included): ended now, not left to the check's end
            self._log.seek(0)
            tail = " ".join(self._log.read().split())[-300:]
            raise RuntimeError(f"the emulated {self.runtime} ({self.cpu}) {why}: {tail}")
        return json.loads(line)

    def _kill(self) -> None:
        """End the worker and every process of its session (QEMU included) now."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except OSError:
                pass

    def close(self) -> None:
        if self._proc is not None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
