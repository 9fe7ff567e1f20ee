"""The ARM64 kit: what runs a bundle's artifacts on the aarch64 builds of their runtimes, under emulation.

Phones run the aarch64 builds of onnxruntime (MLAS's NEON kernels) and LiteRT (XNNPACK's), which
pick their code paths by CPU feature: fp16 arithmetic exists on a Cortex-A76 and not on an A53.
The kit is everything needed to run those builds on this x86 machine, made once per user by
``bsconv-export setup arm64`` into ``<cache>/arm64-kit-<hash of the pins>`` (~320 MB):

* ``qemu-aarch64``: QEMU's user-mode emulator, static, from Debian 13's qemu-user package;
* ``sysroot/``: an aarch64 Python 3.11 and the C libraries it loads, from Debian 12's packages
  (unpacked with ``dpkg-deb -x``; the host's package database is never touched);
* ``site/``: the aarch64 wheels of onnxruntime, numpy and ai-edge-litert.

Every download is checked against a sha256 pinned in this folder (``kit.lock.json`` for the
Debian files, ``requirements.txt`` in pip's hash-checking mode for the wheels) before it is used;
a Debian file the pool no longer has is replaced by the package's current one, proven through
Debian's signed index (:mod:`exporter.arm64.debian`).
The kit is built in a temporary folder and renamed into place when complete; nothing is ever
downloaded by ``check``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ...kernel.errors import UserInputError
from ...kernel.cache_dirs import built_aside, cache_root
from ...kernel.kit_files import record_files, verify_files
from .debian import fetch_package

HERE = Path(__file__).resolve().parent
LOCK = HERE / "kit.lock.json"
REQUIREMENTS = HERE / "requirements.txt"
READY = ".bsconv-export-ready"
SETUP_COMMAND = "bsconv-export setup arm64"
PYTHON = "usr/bin/python3.11"
#: the platforms pip may take the aarch64 wheels for (each wheel names the oldest glibc it needs)
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                   "manylinux2014_aarch64")


@dataclass(frozen=True)
class Kit:
    root: Path

    @property
    def qemu(self) -> Path:
        return self.root / "qemu-aarch64"

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def site(self) -> Path:
        return self.root / "site"

    def command(self, cpu: str, *args: str) -> list[str]:
        """Run the kit's aarch64 Python on the emulated ``cpu`` (no user site; its path comes from :meth:`env`)."""
        return [str(self.qemu), "-L", str(self.sysroot), "-cpu", cpu, str(self.sysroot / PYTHON), "-s", *args]

    def env(self, *paths: Path) -> dict[str, str]:
        """A minimal environment for the emulated process: the kit's packages and ``paths`` on its path,
        one thread for every pool that reads a variable, nothing of the host's."""
        return {"PYTHONPATH": os.pathsep.join(str(p) for p in (self.site, *paths)), "PATH": "/usr/bin:/bin",
                "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "ORT_DISABLE_TELEMETRY": "1", "HOME": str(self.root), "LANG": "C.UTF-8"}

    def cpus(self) -> list[str]:
        """The CPU models this QEMU emulates (``-cpu help``)."""
        out = subprocess.run([str(self.qemu), "-cpu", "help"], capture_output=True, text=True, timeout=60).stdout
        return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def kit_dir() -> Path:
    digest = hashlib.sha256(LOCK.read_bytes() + REQUIREMENTS.read_bytes()).hexdigest()[:12]
    return cache_root() / f"arm64-kit-{digest}"


def find_kit() -> Kit | None:
    """The kit, or None while it is not made (or half-made); a kit that is not exactly what it was made
    with (a file changed, added or removed since) is refused in one line (exit 2), never run."""
    root = kit_dir()
    kit = Kit(root)
    if not ((root / READY).is_file() and kit.qemu.is_file()):
        return None
    verify_files(root, "the ARM64 kit", f"remove that folder and run '{SETUP_COMMAND}'")
    return kit


def _made() -> Kit | None:
    """The kit when it was completed (not yet verified): setup's own question."""
    kit = Kit(kit_dir())
    return kit if (kit.root / READY).is_file() and kit.qemu.is_file() else None


def _usable() -> bool:
    """A completed kit that is still what it was made with (else setup makes it again)."""
    if _made() is None:
        return False
    try:
        verify_files(kit_dir(), "the ARM64 kit", "")
    except UserInputError:
        return False
    return True


def missing_reason() -> str:
    return (f"the ARM64 kit (QEMU, an aarch64 Python and the aarch64 runtimes, ~320 MB) is not set up here: "
            f"run '{SETUP_COMMAND}'")


def setup(progress=None, parts: Iterable[Callable] = ()) -> Path:
    """Make the kit (nothing to do when it exists), then let each part add itself (``parts``: the plugins'
    ARM64 runners' ``prepare`` hooks, :func:`exporter.formats.arm64_parts`; the ExecuTorch runner is
    cross-compiled); returns the kit's folder."""
    say = progress or (lambda _msg: None)
    target = _base(say) if not _usable() else kit_dir()
    for prepare in parts:
        prepare(find_kit(), say)
    return target


def _base(say) -> Path:
    target = kit_dir()
    if shutil.which("dpkg-deb") is None:
        raise UserInputError("the ARM64 kit unpacks Debian packages with dpkg-deb, which is not installed here; "
                             "install Debian's dpkg package")
    lock = json.loads(LOCK.read_text())
    t0 = time.perf_counter()
    # another setup that finished first keeps its kit (one in use is never replaced)
    with built_aside(target, "the ARM64 kit", keep_existing=_usable) as building:
        downloads = building / "downloads"
        downloads.mkdir()
        say(f"creating {target}: QEMU from Debian 13")
        deb = fetch_package(lock["qemu"], downloads, say)
        unpacked = building / "qemu-deb"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        shutil.copy2(unpacked / lock["qemu"]["member"], building / "qemu-aarch64")
        shutil.rmtree(unpacked)
        deb.unlink()
        say(f"an aarch64 Python 3.11 from Debian 12 ({len(lock['sysroot'])} packages)")
        for entry in lock["sysroot"]:
            deb = fetch_package(entry, downloads, say)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(building / "sysroot")], check=True)
            deb.unlink()
        shutil.rmtree(downloads)
        say("the aarch64 wheels (pip, hash-checked)")
        platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:",
                        *platforms, "--python-version", "3.11", "--implementation", "cp", "--require-hashes",
                        "--target", str(building / "site"), "-r", str(REQUIREMENTS)], check=True)
        kit = Kit(building)
        probe = subprocess.run(kit.command("cortex-a53", "-c", "import platform, numpy, onnxruntime; "
                                           "print(platform.machine(), onnxruntime.__version__)"),
                               capture_output=True, text=True, timeout=600, env=kit.env())
        if probe.returncode != 0 or not probe.stdout.startswith("aarch64"):
            raise UserInputError(f"the ARM64 kit was made but its Python does not start under QEMU: "
                                 f"{(probe.stderr or probe.stdout).strip()[-300:]}")
        (building / READY).write_text(f"made in {time.perf_counter() - t0:.0f} s; {probe.stdout.strip()}\n")
        record_files(building)    # what it holds now is all it may ever run (checked before each use)
    return target
