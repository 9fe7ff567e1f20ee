"""Runs a .tflite on LiteRT's aarch64 build (XNNPACK's NEON kernels, its default delegate), under QEMU,
for the ARM64 check. Executed by the kit's aarch64 Python with numpy and ai-edge-litert only."""
import ai_edge_litert
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
        interpreter.set_tensor(first["index"], x)
        interpreter.invoke()
        return {d["name"]: interpreter.get_tensor(d["index"]).copy() for d in outputs}

    return facts, run


serve(load)
