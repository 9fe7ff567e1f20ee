"""Runs an ONNX or .ort file on onnxruntime's aarch64 build (MLAS's NEON kernels), under QEMU, for the
ARM64 check. Executed by the kit's aarch64 Python with numpy and onnxruntime only (see exporter.arm64)."""
import onnxruntime as ort
from bsconv_arm64_serve import serve


def load(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    outputs = [o.name for o in session.get_outputs()]
    facts = {"inputs": [i.name for i in session.get_inputs()], "outputs": outputs, "input_shape": list(first.shape),
             "runtime": f"onnxruntime {ort.__version__}"}
    return facts, lambda x: dict(zip(outputs, session.run(None, {first.name: x})))


serve(load)
