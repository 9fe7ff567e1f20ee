"""The shared kernel both models/ and exporter/ import: errors, bounded safe I/O, limits, the app
contract's names, machine facts, quieting third-party logs, folders and files the tool owns, kits'
records, cache folders and package versions. It imports nothing of models/ or exporter/."""
import os

# No network unless asked: onnxruntime's Linux build sends telemetry (DNS lookups of a
# Microsoft events host) from native code, e.g. when onnxsim imports it, and only this
# variable, read before onnxruntime starts, stops all of it (disable_telemetry_events()
# does not). A user who wants telemetry sets ORT_DISABLE_TELEMETRY=0.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.2.0"
