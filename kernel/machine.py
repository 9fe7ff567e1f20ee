"""What a timing depends on: the CPU, its instruction sets, the library versions.

The fingerprint is what ``regress --baseline results.json`` compares before it
trusts a stored result.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
             "amx_bf16", "asimd", "sve", "i8mm", "bf16")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return info
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key and key not in info:
            info[key] = value.strip()
    return info


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int | None:
    """The thread count a runtime gets when the user chose none: None (the runtime's own default,
    every core) when this process may use every core, else the usable cores — a runtime that sizes
    its pool from the machine would otherwise run more threads than the process has cores."""
    return None if usable_cores() >= (os.cpu_count() or 1) else usable_cores()


def machine_info(versions: dict[str, str]) -> dict:
    """This machine's facts, with ``versions`` (what ran: the caller's tool versions) beside them."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    cpu = info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine()
    return {
        "cpu": cpu,
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "isa": sorted(f for f in ISA_FLAGS if f in flags),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def fingerprint(machine: dict) -> dict:
    """The parts of ``machine_info`` that must match for stored timings to compare."""
    v = machine.get("versions", {})
    return {"cpu": machine.get("cpu"), "arch": machine.get("arch"), "usable_cores": machine.get("usable_cores"),
            "isa": machine.get("isa"), "onnxruntime": v.get("onnxruntime"), "torch": v.get("torch")}
