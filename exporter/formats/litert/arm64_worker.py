"""Runs a .tflite on LiteRT's aarch64 build (XNNPACK's NEON kernels, its default delegate), under QEMU,
for the ARM64 check. Executed by the kit's aarch64 Python with numpy and ai-edge-litert only.
Integer inputs and outputs are quantised and dequantised by their tensors' parameters, as the host's
runner does (runner.to_tensor / from_tensor: this file cannot import it)."""
import ai_edge_litert
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from bsconv_arm64_serve import serve


def load(path, threads):
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    first = inputs[0]
    facts = {"inputs": [d["name"] for d in inputs], "outputs": [d["name"] for d in outputs],
             "input_shape": [int(v) for v in first["shape"]],
             "runtime": f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '')}".strip()}

    def run(x):
        if not np.issubdtype(first["dtype"], np.floating):
            scale, zero = first["quantization"]
            info = np.iinfo(first["dtype"])
            x = np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(first["dtype"])
        interpreter.set_tensor(first["index"], x)
        interpreter.invoke()
        out = {}
        for d in outputs:
            y = interpreter.get_tensor(d["index"])
            if not np.issubdtype(y.dtype, np.floating):
                scale, zero = d["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            out[d["name"]] = np.array(y, dtype=np.float32)
        return out

    return facts, run


serve(load)
