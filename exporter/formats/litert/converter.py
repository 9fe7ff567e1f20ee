"""The LiteRT converter's own environment: where it lives, how it is made, how it is run.

litert-torch cannot share bsconv-export's environment (its xdsl pins typing-extensions
< 4.13, which leaves coremltools broken), so it gets one of its own: a virtual environment
built from ``requirements.txt`` (every package pinned) in a per-user cache folder
(``$BSCONV_EXPORT_CACHE``, else ``$XDG_CACHE_HOME/bsconv-export``, else
``~/.cache/bsconv-export``), named by the requirements' hash, so a changed pin builds a new
one. ``bsconv-export setup litert`` makes it (built aside, renamed into place when pip
succeeded); the export refuses the format up front, with that command, while it is missing.
The converter runs as a subprocess (:mod:`in_env`) fed ``model.pt2``, and the quantizer fed the fp32
``.tflite`` and calibration rows, each with a time limit, its own process group (killed whole at the
limit) and no network.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ...kit import UserInputError, built_aside, cache_root, record_files, verify_files

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
SCRIPT = HERE / "in_env.py"
READY = ".bsconv-export-ready"
CONVERT_TIMEOUT_S = 900
SETUP_COMMAND = "bsconv-export setup litert"


def env_dir() -> Path:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    return cache_root() / f"litert-converter-{digest}"


def env_python() -> Path | None:
    """The converter environment's Python, or None while it is not made (or half-made)."""
    d = env_dir()
    python = d / "bin" / "python"
    return python if (d / READY).is_file() and python.exists() else None


def missing_reason() -> str | None:
    """Why the converter cannot run here (None: it can): not made, or not what it was made with."""
    if env_python() is None:
        return (f"the LiteRT converter environment is not set up here (it needs its own 2.1 GB environment, "
                f"~3 minutes to make): run '{SETUP_COMMAND}'")
    try:
        verify_files(env_dir(), "the LiteRT converter environment", f"run '{SETUP_COMMAND}' to make it again")
    except UserInputError as e:
        return str(e)
    return None


def pinned(package: str) -> str | None:
    """The version ``requirements.txt`` pins for ``package``."""
    for line in REQUIREMENTS.read_text().splitlines():
        name, _, ver = line.partition("==")
        if name.strip().lower() == package.lower():
            return ver.strip()
    return None


def setup(progress=None) -> Path:
    """Make the converter environment (nothing to do when it exists); returns its folder."""
    target = env_dir()
    if env_python() is not None:
        try:
            verify_files(target, "the LiteRT converter environment", "")
            return target
        except UserInputError:
            pass     # changed since it was made (or made before records): made again
    t0 = time.perf_counter()
    with built_aside(target, "the LiteRT converter environment") as building:
        if progress:
            progress(f"creating {target} (2.1 GB; pip output follows)")
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        pip = [str(building / "bin" / "python"), "-m", "pip"]
        subprocess.run([*pip, "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "install", "-q", "--no-deps", "-r", str(REQUIREMENTS)], check=True)
        subprocess.run([*pip, "check"], check=True)
        # renamed into place next: its bin/python finds its packages wherever the folder is
        (building / READY).write_text(f"made in {time.perf_counter() - t0:.0f} s from {REQUIREMENTS.name}\n")
        record_files(building)    # what it holds now is all it may ever run (checked before each use)
    return target


class ConversionFailed(RuntimeError):
    """The converter ran and failed (or ran out of time); the message holds its last words."""


def convert(pt2: Path, out: Path, shape: tuple[int, ...], timeout: float = CONVERT_TIMEOUT_S) -> str:
    """Run the converter on ``pt2``, writing ``out``; returns its log's tail."""
    return _run(["convert", str(pt2), str(out), ",".join(map(str, shape))], out, timeout, "converter")


def quantize(fp32: Path, calibration: Path, out: Path, io: str, timeout: float = CONVERT_TIMEOUT_S) -> str:
    """Run ai-edge-quantizer's static int8 recipe on ``fp32``, calibrated on ``calibration`` (an npz
    with an ``input`` array), writing ``out`` with ``io`` ("float" or "int8") inputs and outputs."""
    return _run(["quantize", str(fp32), str(calibration), str(out), io], out, timeout, "quantizer")


def _run(args: list[str], out: Path, timeout: float, what: str) -> str:
    python, reason = env_python(), missing_reason()
    if python is None or reason:
        raise ConversionFailed(reason)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "PYTHONNOUSERSITE": "1",
           "PYTHONDONTWRITEBYTECODE": "1",   # the environment is verified by its record: nothing is added to it
           "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryFile("w+") as log:
        # -S: no site-packages (nor their .pth files) until the script has refused the network
        proc = subprocess.Popen([str(python), "-I", "-S", str(SCRIPT), *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(out.parent),
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise ConversionFailed(f"the LiteRT {what} did not finish within {timeout:.0f} s") from None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        log.seek(0)
        lines = [ln for ln in log.read().splitlines() if ln.strip()]
    if code != 0 or not out.is_file():
        last = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        raise ConversionFailed(f"the LiteRT {what} failed (exit {code}): {last.strip()[:400]}")
    return "\n".join(lines[-5:])
