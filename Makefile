# Two commands: `make run` and `make test`. Both create .venv and install from
# pyproject.toml under constraints.txt (which pins torch to its CPU build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUILD := build

.PHONY: run test test-all test-zoo install setup-litert setup-arm64 clients clients-deps train bench-export bench-pipeline bench-latency bench-pte bench-litert bench-sweep bench-gate bench-reduced bench-int8 bench-pte-calibration bench-compare bench-scale-gates bench-thresholds clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/bsconv-export info
	$(VENV)/bin/bsconv-export evaluate
	mkdir -p $(BUILD)
	$(VENV)/bin/bsconv-export export --out $(BUILD)/digits_cifar_mobilenetv2_w1d4_bsconvs_p1d6 --force \
		--formats pt2,onnx,ort,coreml,pte,int8,fp16,coreml-fp16

# One pytest worker per core (pytest-xdist); tests/conftest.py keeps each worker to one torch thread.
# make test: the fast tier a newcomer runs (logic, contracts, the trust tests, one end-to-end export
# and check of the shipped model); make test-all: every test but the whole-zoo sweep (what CI runs).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal -m "not zoo and not slow"

test-all: $(STAMP) setup-litert setup-arm64 clients
	$(PY) -m pytest -q -n auto --dist worksteal --durations=30 -m "not zoo"

# The LiteRT converter's own environment (2.1 GB, ~2 min; nothing when it exists): see
# exporter/formats/litert/converter.py. make run does not need it; test-all does.
setup-litert: $(STAMP)
	$(VENV)/bin/bsconv-export setup litert

# The ARM64 kit (QEMU, an aarch64 Python, the aarch64 runtimes; ~250 MB, pinned hashes; nothing when
# it exists): what `check --on arm64` runs artifacts with. See exporter/arm64/kit.py and docs/arm64.md.
setup-arm64: $(STAMP)
	$(VENV)/bin/bsconv-export setup arm64

# The app-side clients (docs/bundle.md): the C++ ExecuTorch client, built against the executorch
# wheel's runtime with libpng, nlohmann/json and OpenSSL; the JavaScript one on onnxruntime-node.
# clients/install-deps installs the Debian packages they need (as root; .ci/run does). npm runs no
# install scripts: onnxruntime-node's would fetch CUDA binaries from outside the registry, and the
# CPU binaries ship in its package.
CPP_CLIENT := clients/executorch-cpp
JS_CLIENT := clients/onnxruntime-js
clients: clients-deps $(CPP_CLIENT)/build/bsconv-run $(JS_CLIENT)/node_modules/.installed

# Before CMake or npm: one line naming the missing Debian packages and the command that installs them.
clients-deps:
	@clients/install-deps --check

$(CPP_CLIENT)/build/bsconv-run: $(STAMP) $(CPP_CLIENT)/main.cpp $(CPP_CLIENT)/CMakeLists.txt | clients-deps
	cmake -S $(CPP_CLIENT) -B $(CPP_CLIENT)/build -DCMAKE_BUILD_TYPE=Release \
		-Dexecutorch_DIR="$$($(PY) -c 'import executorch; print(list(executorch.__path__)[0])')/share/cmake" >/dev/null
	cmake --build $(CPP_CLIENT)/build -j2

$(JS_CLIENT)/node_modules/.installed: $(JS_CLIENT)/package.json $(JS_CLIENT)/package-lock.json | clients-deps
	cd $(JS_CLIENT) && ONNXRUNTIME_NODE_INSTALL=skip npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# Every zoo architecture at native size, every fp32 format (.pte and .tflite included), checked:
# hours on 2 cores. The exports run through `sweep` (interrupt and rerun: --resume keeps what passed);
# then the comparisons with the reference package.
test-zoo: $(STAMP) setup-litert
	$(PY) tests/zoo_plan.py --out $(BUILD)/zoo
	$(VENV)/bin/bsconv-export sweep $(BUILD)/zoo/sweep.toml --resume
	$(PY) -m pytest -q -n auto -m zoo tests/contract/test_reference.py tests/unit/test_zoo.py tests/e2e/test_sources.py

train: $(STAMP)
	$(VENV)/bin/bsconv-export train --force --out models/checkpoints/digits_cifar_mobilenetv2_w1d4_bsconvs_p1d6.pt

bench-export: $(STAMP)
	$(PY) tests/benchmarks/bench_export.py

# --jobs 2 against --jobs 1 (paired, alternating), the whole process tree's memory, and an unchanged
# re-export from the stage cache: docs/pipeline.md
bench-pipeline: $(STAMP)
	$(PY) tests/benchmarks/bench_pipeline.py

bench-latency: $(STAMP)
	$(PY) tests/benchmarks/bench_latency.py

bench-pte: $(STAMP)
	$(PY) tests/benchmarks/bench_pte.py

bench-litert: $(STAMP) setup-litert
	$(PY) tests/benchmarks/bench_litert.py

bench-sweep: $(STAMP)
	$(PY) tests/benchmarks/bench_sweep.py

# OpenVINO beside our files, for this benchmark only (never a product dependency). --no-deps leaves
# out openvino-telemetry: with it, `import openvino` sends a Google Analytics event; without it,
# OpenVINO falls back to its own no-op stub (checked with strace: no connect).
bench-compare: $(STAMP)
	$(PY) -m pip install -q --no-deps -c constraints.txt openvino
	$(PY) tests/benchmarks/bench_compare.py

bench-gate: $(STAMP)
	$(PY) tests/benchmarks/bench_gate.py

bench-reduced: $(STAMP)
	$(PY) tests/benchmarks/bench_reduced.py

# Every int8 file at 224 on networks trained on the digits (cached in build/bench-int8): checked against
# the int8 gate and timed against onnxruntime fp32 in one run (needs the LiteRT environment for .tflite).
bench-int8: $(STAMP) setup-litert
	$(PY) tests/benchmarks/bench_int8.py

# The .pte int8 calibration (activation observer, sample count) judged by the int8 gate on bench-int8's
# trained checkpoints (docs/int8.md)
bench-pte-calibration: $(STAMP)
	$(PY) tests/benchmarks/bench_pte_calibration.py

# The check's reduced-precision scale gates over correct exports, and the smallest faults they catch.
bench-scale-gates: $(STAMP)
	$(PY) tests/benchmarks/bench_scale_gates.py

bench-thresholds: $(STAMP)
	$(PY) tests/benchmarks/bench_thresholds.py

clean:
	rm -rf $(BUILD) $(VENV)
