"""A .pte on ExecuTorch's aarch64 runtime (XNNPACK's NEON kernels), under QEMU.

PyPI's aarch64 torch is a CUDA build that does not import without CUDA, so ExecuTorch's Python
runtime cannot run there; the executorch aarch64 wheel's ``lib/`` (runtime, kernels, XNNPACK, no
libtorch) and ``include/`` can. :meth:`PteArm64Runner.prepare` (run by ``bsconv-export setup arm64``)
takes those from the hash-pinned wheel and cross-compiles ``arm64_runner.cpp`` against them with
Debian's ``g++-aarch64-linux-gnu``; without that compiler the runner says so and ``.pte`` files are
skipped on arm64.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from ...kit import (EmulatedRunner, UserInputError, WHEEL_PLATFORMS, built_aside, find_kit, missing_reason,
                   record_files, verify_files)

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "arm64_runner.cpp"
REQUIREMENTS = HERE / "arm64-requirements.txt"
COMPILER = "aarch64-linux-gnu-g++"
NO_COMPILER = (f"the ARM64 kit has no ExecuTorch runner: it is cross-compiled with {COMPILER} "
               "(Debian's g++-aarch64-linux-gnu); install it and rerun 'bsconv-export setup arm64'")


def part_dir(kit_root: Path) -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + REQUIREMENTS.read_bytes()).hexdigest()[:12]
    return kit_root / f"executorch-{digest}"


class PteArm64Runner(EmulatedRunner):
    name = "executorch-xnnpack-arm64"
    kinds = ("pte",)
    runtime = "ExecuTorch"

    def unavailable_reason(self) -> str | None:
        try:
            kit = find_kit()
            if kit is None:
                return missing_reason()
            if not (part_dir(kit.root) / "pte-runner").is_file():
                return NO_COMPILER
            verify_files(part_dir(kit.root), "the ExecuTorch runner for ARM64",
                         "remove that folder and run 'bsconv-export setup arm64'")
        except UserInputError as e:
            return str(e)
        return None

    def command(self, kit) -> list[str]:
        binary = part_dir(kit.root) / "pte-runner"
        return [str(kit.qemu), "-L", str(kit.sysroot), "-cpu", self.cpu, str(binary), str(self.path.resolve()),
                str(self.threads)]

    @classmethod
    def prepare(cls, kit, progress) -> None:
        """Add the cross-compiled runner to the kit (nothing when it is there, or without the compiler)."""
        target = part_dir(kit.root)
        if (target / "pte-runner").is_file():
            try:
                verify_files(target, "the ExecuTorch runner for ARM64", "")
                return
            except UserInputError:
                pass     # changed since it was made (or made before records): made again
        compiler = shutil.which(COMPILER)
        if compiler is None:
            progress(f"skipping the ExecuTorch runner: {NO_COMPILER}")
            return
        progress("the ExecuTorch aarch64 runtime (hash-checked wheel) and its runner, cross-compiled")
        with built_aside(target, "the ExecuTorch runner for ARM64") as building:
            platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            *platforms, "--python-version", "3.11", "--implementation", "cp", "--require-hashes",
                            "-d", str(building / "wheel"), "-r", str(REQUIREMENTS)], check=True)
            (wheel,) = (building / "wheel").glob("*.whl")
            with zipfile.ZipFile(wheel) as z:
                for member in z.namelist():
                    if member.startswith(("executorch/lib/lib", "executorch/include/")) and ".." not in member:
                        z.extract(member, building)
            shutil.rmtree(building / "wheel")
            root = building / "executorch"
            include = root / "include"
            json_include = building / "json-include"   # nlohmann/json alone: the host's /usr/include must not
            json_include.mkdir()                        # shadow the cross compiler's aarch64 headers
            if not Path("/usr/include/nlohmann/json.hpp").is_file():
                raise UserInputError("the ExecuTorch runner for ARM64 needs nlohmann/json's header: install Debian's "
                                     "nlohmann-json3-dev (clients/install-deps does) and rerun setup")
            (json_include / "nlohmann").symlink_to("/usr/include/nlohmann")
            subprocess.run([compiler, "-std=c++17", "-O2", "-o", str(building / "pte-runner"), str(SOURCE),
                            "-isystem", str(include), "-isystem", str(include / "executorch/runtime/core/portable_type/c10"),
                            "-isystem", str(json_include), "-DC10_USING_CUSTOM_GENERATED_MACROS",
                            "-DET_EVENT_TRACER_ENABLED", "-L", str(root / "lib"), "-Wl,--no-as-needed",
                            "-lexecutorch_kernels_optimized", "-lexecutorch_backend_xnnpack",
                            "-lexecutorch_threadpool", "-lexecutorch", "-Wl,--as-needed",
                            "-Wl,-rpath,$ORIGIN/executorch/lib"], check=True)
            shutil.rmtree(json_include)
            shutil.rmtree(include)   # compiled: only the libraries and the runner stay in the kit
            record_files(building)   # verified, like the kit, before each use
