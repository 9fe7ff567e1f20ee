// The ARM64 check's ExecuTorch worker: runs a .pte on ExecuTorch's aarch64 runtime (XNNPACK's NEON
// kernels) under QEMU. Cross-compiled by `bsconv-export setup arm64` against the executorch aarch64
// wheel's lib/ and include/ (exporter/arm64/kit.py) and speaking the worker protocol of
// exporter/arm64/bsconv_arm64_serve.py: facts on start, then one JSON request per line
// {"input": X, "shape": [N, C, H, W], "output": Y} answered {"ok": true, "shape": [N, K]} or
// {"error": "..."}; X and Y are raw float32.
//
//   pte-runner MODEL.pte THREADS
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

using nlohmann::json;
using executorch::extension::Module;

// The runtime's log sink: keep errors (they reach the host's record through stderr), drop info lines.
extern "C" void et_pal_emit_log_message(et_timestamp_t, et_pal_log_level_t level, const char*, const char*,
                                        size_t, const char* message, size_t length) {
  if (level == kError || level == kFatal) std::cerr << "executorch: " << std::string(message, length) << std::endl;
}

namespace {

void say(const json& j) { std::cout << j.dump() << std::endl; }

std::vector<float> read_floats(const std::string& path, size_t count) {
  std::vector<float> data(count);
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (static_cast<size_t>(f.gcount()) != count * sizeof(float)) throw std::runtime_error("short input file " + path);
  return data;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: pte-runner MODEL.pte [THREADS]" << std::endl;
    return 2;
  }
  Module module(argv[1], Module::LoadMode::File);
  if (module.load_forward() != executorch::runtime::Error::Ok) {
    std::cerr << "ExecuTorch could not load the forward method of " << argv[1] << std::endl;
    return 1;
  }
  auto meta = module.method_meta("forward");
  if (!meta.ok() || meta->num_inputs() != 1 || meta->num_outputs() != 1) {
    std::cerr << "the .pte's forward does not take one input and return one output" << std::endl;
    return 1;
  }
  auto in_meta = meta->input_tensor_meta(0);
  std::vector<int> planned(in_meta->sizes().begin(), in_meta->sizes().end());
  if (planned.size() != 4) {
    std::cerr << "the .pte's input is not [batch, channels, h, w]" << std::endl;
    return 1;
  }
  say({{"inputs", {"input"}}, {"outputs", {"logits"}}, {"input_shape", planned}, {"runtime", "executorch (aarch64)"}});
  const size_t batch = static_cast<size_t>(planned[0]);
  const size_t row = static_cast<size_t>(planned[1]) * planned[2] * planned[3];
  std::string line;
  while (std::getline(std::cin, line)) {
    try {
      json request = json::parse(line);
      std::vector<size_t> shape = request.at("shape").get<std::vector<size_t>>();
      if (shape.size() != 4 || shape[1] * shape[2] * shape[3] != row) throw std::runtime_error("input shape differs from the program's");
      const size_t n = shape[0];
      std::vector<float> x = read_floats(request.at("input").get<std::string>(), n * row);
      std::vector<float> y;
      size_t classes = 0;
      for (size_t i = 0; i < n; i += batch) {
        const size_t take = std::min(batch, n - i);
        std::vector<float> chunk(batch * row, 0.0f);
        std::copy(x.begin() + i * row, x.begin() + (i + take) * row, chunk.begin());
        auto tensor = executorch::extension::make_tensor_ptr(
            {planned[0], planned[1], planned[2], planned[3]}, std::move(chunk));
        auto result = module.forward(tensor);
        if (!result.ok() || result->empty() || !result->at(0).isTensor()) throw std::runtime_error("forward failed");
        const auto& out = result->at(0).toTensor();
        classes = static_cast<size_t>(out.numel()) / batch;
        const float* data = out.const_data_ptr<float>();
        y.insert(y.end(), data, data + take * classes);
      }
      std::ofstream f(request.at("output").get<std::string>(), std::ios::binary);
      f.write(reinterpret_cast<const char*>(y.data()), static_cast<std::streamsize>(y.size() * sizeof(float)));
      f.close();
      say({{"ok", true}, {"shape", {n, classes}}});
    } catch (const std::exception& e) {
      say({{"error", e.what()}});
    }
  }
  return 0;
}
