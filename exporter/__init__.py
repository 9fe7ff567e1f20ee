"""Export stages (one module per format), the bundle pipeline, the check, runners and benchmarks."""
import os

# No network unless asked: onnxruntime's Linux build sends telemetry (DNS lookups of a
# Microsoft events host) from native code, e.g. when onnxsim imports it, and only this
# variable, read before onnxruntime starts, stops all of it (disable_telemetry_events()
# does not). A user who wants telemetry sets ORT_DISABLE_TELEMETRY=0.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.2.0"
