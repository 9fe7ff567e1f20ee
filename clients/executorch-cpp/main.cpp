// bsconv-run: classify PNG images with a bsconv-export bundle's ExecuTorch program (model.pte).
//
//   bsconv-run BUNDLE IMAGE.png... [--format pte]
//
// Everything the model needs comes from the bundle (docs/bundle.md): manifest.json names the model
// file and its sha256, says whether the bundle's check passed, and carries the labels and the input
// spec (a .pte file carries no metadata of its own). Each image becomes the model's input by the
// contract's one rule (see to_input), and one JSON line per image goes to stdout:
//   {"image": "...", "label": "...", "index": 3, "logits": [...]}
// Any problem is one line on stderr and exit status 2.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <png.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using nlohmann::json;

// The runtime's log sink (a weak symbol of the platform layer): keep errors, drop the info lines
// its CPU probe prints on every start, so stderr carries only what went wrong.
extern "C" void et_pal_emit_log_message(et_timestamp_t, et_pal_log_level_t level, const char*, const char*,
                                        size_t, const char* message, size_t length) {
  if (level == kError || level == kFatal) {
    std::cerr << "executorch: " << std::string(message, length) << std::endl;
  }
}

namespace {

constexpr long kMaxManifestBytes = 16L << 20;  // the same bound the Python side reads with
constexpr unsigned kMaxImageSide = 8192;        // larger images are refused before decoding
constexpr long kMaxPngBytes = 256L << 20;       // a PNG file larger than this is refused before it is read
constexpr int kSchemaVersion = 4;               // the manifest schema this client was written for

// A problem with the user's input: one line on stderr, exit 2.
struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct InputSpec {
  int size = 0, channels = 3;
  std::string color_order = "RGB", normalization = "none";
  double lo = 0.0, hi = 1.0;
  std::vector<double> mean, std;
};

struct Bundle {
  std::string model_path;
  InputSpec spec;
  std::vector<std::string> labels;
  int batch = 1;  // the batch the program was built for (the image goes in row 0)
};

struct Image {
  unsigned width = 0, height = 0, channels = 0;  // channels: 1 (grey) or 3 (RGB)
  std::vector<unsigned char> pixels;             // row-major, interleaved
};

// A regular file inside the bundle: no absolute path, no "..", no symbolic link on the way.
std::string inside(const std::string& bundle, const std::string& rel) {
  if (rel.empty() || rel[0] == '/' || rel.find('\\') != std::string::npos) {
    throw UserError("manifest.json: artifact path '" + rel + "' leaves the bundle; refusing it");
  }
  std::string path = bundle;
  std::stringstream parts(rel);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part.empty() || part == "." || part == "..") {
      throw UserError("manifest.json: artifact path '" + rel + "' leaves the bundle; refusing it");
    }
    path += "/" + part;
    struct stat st;
    if (lstat(path.c_str(), &st) != 0) throw UserError(path + ": missing from the bundle; re-export it");
    if (S_ISLNK(st.st_mode)) throw UserError(path + ": a symbolic link; refusing to follow it out of the bundle");
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) throw UserError(path + ": not a regular file");
  return path;
}

// A regular file's bytes, opened without blocking (a FIFO is refused, never waited on), at most max_bytes.
// missing: the message when there is no such file.
std::string read_file(const std::string& path, long max_bytes, const std::string& what,
                      const std::string& missing = "") {
  int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT && !missing.empty()) throw UserError(path + ": " + missing);
    throw UserError(path + ": cannot open " + what + " (" + std::strerror(errno) + ")");
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    throw UserError(path + ": " + what + " is not a regular file (a folder, pipe or device); pass a file");
  }
  if (st.st_size > max_bytes) {
    close(fd);
    throw UserError(path + ": " + what + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::string data;
  data.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
    if (static_cast<long>(data.size()) > max_bytes) {
      close(fd);
      throw UserError(path + ": " + what + " is larger than " + std::to_string(max_bytes) + " bytes");
    }
  }
  close(fd);
  return data;
}

std::string sha256_of_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UserError(path + ": cannot open the model file");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(f.gcount()));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  char byte[3];
  for (unsigned i = 0; i < len; ++i) {
    std::snprintf(byte, sizeof byte, "%02x", md[i]);
    hex += byte;
  }
  return hex;
}

// manifest.json → the model file (hash-checked), its labels and input spec; refuses a bundle whose
// check did not pass.
Bundle open_bundle(const std::string& dir, const std::string& format) {
  const std::string manifest_path = dir + "/manifest.json";
  struct stat st;
  if (lstat(manifest_path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw UserError(dir + " is not a bundle: no manifest.json (or it is a link); create one with 'bsconv-export export'");
  }
  json m;
  try {
    m = json::parse(read_file(manifest_path, kMaxManifestBytes, "the manifest"));
  } catch (const json::exception& e) {
    throw UserError(manifest_path + ": not valid JSON; re-export the bundle");
  }
  try {
    int version = m.at("schema_version").get<int>();
    if (version > kSchemaVersion) {
      throw UserError(manifest_path + ": schema " + std::to_string(version) + " is newer than this client's " +
                      std::to_string(kSchemaVersion) + "; update the client");
    }
    // May this bundle run? The stored verdict says passed, and the rows agree (docs/bundle.md): no failed
    // artifact, a check whose results are all ok or skipped with at least one ok.
    std::string verdict = m.at("verdict").get<std::string>();
    bool rows_pass = m.at("passed").get<bool>() && m.at("check").is_object();
    for (const auto& a : m.at("artifacts")) rows_pass = rows_pass && a.at("status").get<std::string>() != "failed";
    if (rows_pass) {
      bool any_ok = false;
      for (const auto& r : m.at("check").at("results")) {
        const std::string st = r.at("status").get<std::string>();
        any_ok = any_ok || st == "ok";
        rows_pass = rows_pass && (st == "ok" || st == "skipped");
      }
      rows_pass = rows_pass && any_ok && !m.at("artifacts").empty();
    }
    if (verdict != "passed" || !rows_pass) {
      throw UserError(dir + ": its check did not pass (verdict: " + verdict + (verdict == "passed" ? ", but its rows disagree" : "") +
                      "); run 'bsconv-export check " + dir + "' to see why, and re-export");
    }
    Bundle b;
    const json* artifact = nullptr;
    for (const auto& a : m.at("artifacts")) {
      if (a.at("format").get<std::string>() == format && a.at("status").get<std::string>() == "ok") artifact = &a;
    }
    if (artifact == nullptr) throw UserError(dir + ": no " + format + " model in the bundle; export it with --formats " + format);
    b.model_path = inside(dir, artifact->at("path").get<std::string>());
    if (sha256_of_file(b.model_path) != artifact->at("sha256").get<std::string>()) {
      throw UserError(b.model_path + ": changed since the export (its sha256 differs from the manifest's); re-export the bundle");
    }
    const json& model = m.at("model");
    const json& s = model.at("input_spec");
    b.spec.size = s.at("size").get<int>();
    b.spec.channels = s.at("channels").get<int>();
    b.spec.color_order = s.at("color_order").get<std::string>();
    b.spec.normalization = s.at("normalization").get<std::string>();
    b.spec.lo = s.at("value_range").at(0).get<double>();
    b.spec.hi = s.at("value_range").at(1).get<double>();
    b.spec.mean = s.at("mean").get<std::vector<double>>();
    b.spec.std = s.at("std").get<std::vector<double>>();
    b.labels = model.at("labels").get<std::vector<std::string>>();
    const json& exp = m.at("export");
    b.batch = exp.at("dynamic_batch").get<bool>() ? 1 : exp.at("input_shape").at(0).get<int>();
    if (b.spec.size < 1 || b.spec.size > 4096 || (b.spec.channels != 1 && b.spec.channels != 3) || b.batch < 1 ||
        b.batch > 1024) {
      throw UserError(manifest_path + ": an input spec this client cannot feed (size " + std::to_string(b.spec.size) +
                      ", " + std::to_string(b.spec.channels) + " channels, batch " + std::to_string(b.batch) + ")");
    }
    if (b.spec.normalization == "mean_std" &&
        (b.spec.mean.size() != size_t(b.spec.channels) || b.spec.std.size() != size_t(b.spec.channels))) {
      throw UserError(manifest_path + ": mean and std must list one number per channel");
    }
    for (double v : b.spec.std) {
      if (!(v > 0) || !std::isfinite(v)) throw UserError(manifest_path + ": input_spec.std must be positive numbers; re-export the bundle");
    }
    return b;
  } catch (const json::exception& e) {
    throw UserError(manifest_path + ": a field is missing or has the wrong type (" + std::string(e.what()) +
                    "); re-export the bundle");
  }
}

// libpng's message sinks: an error's text is kept for the one line we print, warnings are dropped.
void png_error_sink(png_structp png, png_const_charp message) {
  auto* problem = static_cast<std::string*>(png_get_error_ptr(png));
  if (problem->empty()) *problem = std::string("unreadable PNG (") + message + "); re-save it as an 8-bit PNG";
  png_longjmp(png, 1);
}

void png_warning_sink(png_structp, png_const_charp) {}

uint32_t be32(const std::string& d, size_t at) {
  return (uint32_t(uint8_t(d[at])) << 24) | (uint32_t(uint8_t(d[at + 1])) << 16) | (uint32_t(uint8_t(d[at + 2])) << 8) |
         uint32_t(uint8_t(d[at + 3]));
}

uint32_t crc32_of(const std::string& d, size_t from, size_t to) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = from; i < to; ++i) {
    c ^= uint8_t(d[i]);
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return c ^ 0xFFFFFFFFu;
}

// The clients' PNG rule (docs/bundle.md, the pixel rule), on the file's bytes before any decoding: a regular
// file of at most kMaxPngBytes, the signature, an IHDR of 1..8192 pixels per side at 8 bits (1, 2 and 4 too
// for grey and palette images), every chunk's CRC right. The same checks, in the same order, as
// exporter/predict.py's png_bytes and the JavaScript client's pngBytes.
std::string png_bytes(const std::string& path) {
  const std::string d = read_file(path, kMaxPngBytes, "the image", "no such image file");
  if (d.size() < 33 || png_sig_cmp(reinterpret_cast<png_const_bytep>(d.data()), 0, 8) != 0 || d.compare(12, 4, "IHDR") != 0) {
    throw UserError(path + ": not a PNG image; the clients read 8-bit PNG files");
  }
  const uint32_t width = be32(d, 16), height = be32(d, 20);
  const int depth = uint8_t(d[24]), colour = uint8_t(d[25]);
  if (width == 0 || height == 0) {
    throw UserError(path + ": a PNG with no pixels (" + std::to_string(width) + "x" + std::to_string(height) + "); save a real image");
  }
  if (width > kMaxImageSide || height > kMaxImageSide) {
    throw UserError(path + ": " + std::to_string(width) + "x" + std::to_string(height) + " is larger than the " +
                    std::to_string(kMaxImageSide) + " pixels per side a client decodes; scale it down first");
  }
  if (depth == 16) throw UserError(path + ": a 16-bit PNG; save it with 8 bits per channel");
  const bool low_ok = colour == 0 || colour == 3;
  const bool known = colour == 0 || colour == 2 || colour == 3 || colour == 4 || colour == 6;
  if (!known || !(depth == 8 || (low_ok && (depth == 1 || depth == 2 || depth == 4)))) {
    throw UserError(path + ": not a PNG image the clients read (colour type " + std::to_string(colour) + ", " +
                    std::to_string(depth) + " bits)");
  }
  size_t pos = 8;
  while (pos < d.size()) {
    if (pos + 12 > d.size()) throw UserError(path + ": unreadable PNG (truncated); re-save it as an 8-bit PNG");
    const size_t end = pos + 8 + be32(d, pos);
    if (end + 4 > d.size() || end < pos) throw UserError(path + ": unreadable PNG (truncated); re-save it as an 8-bit PNG");
    if (crc32_of(d, pos + 4, end) != be32(d, end)) {
      throw UserError(path + ": unreadable PNG (CRC error in its '" + d.substr(pos + 4, 4) + "' chunk); re-save it as an 8-bit PNG");
    }
    if (d.compare(pos + 4, 4, "IEND") == 0) break;
    pos = end + 4;
  }
  return d;
}

struct MemoryReader {
  const std::string* data;
  size_t at;
};

void read_from_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<MemoryReader*>(png_get_io_ptr(png));
  if (r->at + n > r->data->size()) png_error(png, "truncated");
  std::memcpy(out, r->data->data() + r->at, n);
  r->at += n;
}

// An 8-bit PNG as grey or RGB pixels: a palette is expanded, alpha (and tRNS) dropped, grey of 1, 2 or 4 bits
// scaled to 0..255; the file's bytes are checked by png_bytes first.
Image read_png(const std::string& path) {
  const std::string data = png_bytes(path);
  MemoryReader reader{&data, 8};
  std::string problem;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &problem, png_error_sink, png_warning_sink);
  png_infop info = png_create_info_struct(png);
  Image img;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw UserError(path + ": " + (problem.empty() ? "unreadable PNG; re-save it as an 8-bit PNG" : problem));
  }
  png_set_read_fn(png, &reader, read_from_memory);
  png_set_sig_bytes(png, 8);
  png_set_user_limits(png, 1u << 20, 1u << 20);  // libpng's own bound; ours follows with a clearer message
  png_read_info(png, info);
  if (png_get_image_width(png, info) > kMaxImageSide || png_get_image_height(png, info) > kMaxImageSide) {
    problem = std::to_string(png_get_image_width(png, info)) + "x" + std::to_string(png_get_image_height(png, info)) +
              " is larger than the " + std::to_string(kMaxImageSide) +
              " pixels per side a client decodes; scale it down first";
    png_longjmp(png, 1);
  }
  const int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
  if (depth == 16) {
    problem = "a 16-bit PNG; save it with 8 bits per channel";
    png_longjmp(png, 1);
  }
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  png_set_strip_alpha(png);   // an alpha channel, or the one a palette's tRNS expands into
  png_read_update_info(png, info);
  img.width = png_get_image_width(png, info);
  img.height = png_get_image_height(png, info);
  img.channels = png_get_channels(png, info);
  if (img.channels != 1 && img.channels != 3) {
    problem = "an image with " + std::to_string(img.channels) + " channels after decoding; save it as grey or RGB";
    png_longjmp(png, 1);
  }
  const size_t stride = png_get_rowbytes(png, info);
  img.pixels.resize(stride * img.height);
  rows.resize(img.height);
  for (unsigned y = 0; y < img.height; ++y) rows[y] = img.pixels.data() + y * stride;
  png_read_image(png, rows.data());
  png_destroy_read_struct(&png, &info, nullptr);
  return img;
}

// Bilinear taps with half-pixel centres and no antialiasing (PyTorch's align_corners=False).
struct Tap {
  unsigned i0, i1;
  double w;
};

std::vector<Tap> taps(unsigned n_in, unsigned n_out) {
  std::vector<Tap> t(n_out);
  const double scale = double(n_in) / double(n_out);
  for (unsigned i = 0; i < n_out; ++i) {
    double src = std::max((i + 0.5) * scale - 0.5, 0.0);
    unsigned i0 = static_cast<unsigned>(std::floor(src));
    t[i] = {i0, std::min(i0 + 1, n_in - 1), src - i0};
  }
  return t;
}

// The contract's rule (docs/bundle.md), in float64 until the end: 0..255 → [0, 1]; resize to size;
// a grey image repeated to 3 channels; channels in color_order; [0, 1] onto value_range; for
// "mean_std", minus mean and over std per channel; NCHW float32, in row 0 of the program's batch.
std::vector<float> to_input(const Image& img, const InputSpec& spec, int batch) {
  if (spec.channels == 1 && img.channels != 1) {
    throw UserError("the model takes grey images (1 channel); this image has 3: convert it to greyscale");
  }
  const unsigned s = static_cast<unsigned>(spec.size), c = static_cast<unsigned>(spec.channels);
  const std::vector<Tap> ty = taps(img.height, s), tx = taps(img.width, s);
  std::vector<float> x(size_t(batch) * c * s * s, 0.0f);
  auto px = [&](unsigned y, unsigned xx, unsigned ch) {
    return img.pixels[(size_t(y) * img.width + xx) * img.channels + (img.channels == 1 ? 0 : ch)] / 255.0;
  };
  for (unsigned ch = 0; ch < c; ++ch) {
    const unsigned src_ch = (spec.color_order == "BGR" && c == 3) ? 2 - ch : ch;
    for (unsigned y = 0; y < s; ++y) {
      for (unsigned xx = 0; xx < s; ++xx) {
        const Tap& a = ty[y];
        const Tap& b = tx[xx];
        double top = px(a.i0, b.i0, src_ch) * (1 - b.w) + px(a.i0, b.i1, src_ch) * b.w;
        double bottom = px(a.i1, b.i0, src_ch) * (1 - b.w) + px(a.i1, b.i1, src_ch) * b.w;
        double v = top * (1 - a.w) + bottom * a.w;
        v = spec.lo + (spec.hi - spec.lo) * v;
        if (spec.normalization == "mean_std") v = (v - spec.mean[ch]) / spec.std[ch];
        x[(size_t(ch) * s + y) * s + xx] = static_cast<float>(v);
      }
    }
  }
  return x;
}

int run(int argc, char** argv) {
  std::string bundle_dir, format = "pte";
  std::vector<std::string> images;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--format" && i + 1 < argc) {
      format = argv[++i];
    } else if (a == "-h" || a == "--help") {
      std::cout << "usage: bsconv-run BUNDLE IMAGE.png... [--format pte]\n"
                   "Classify 8-bit PNG images with a bsconv-export bundle's ExecuTorch program;\n"
                   "one JSON line per image on stdout.\n";
      return 0;
    } else if (bundle_dir.empty()) {
      bundle_dir = a;
    } else {
      images.push_back(a);
    }
  }
  if (bundle_dir.empty() || images.empty()) throw UserError("usage: bsconv-run BUNDLE IMAGE.png... [--format pte]");
  if (format != "pte") throw UserError("this client runs ExecuTorch programs: --format pte (got '" + format + "')");
  const Bundle b = open_bundle(bundle_dir, format);
  std::vector<std::vector<float>> inputs;  // every image read before any runs
  for (const auto& path : images) inputs.push_back(to_input(read_png(path), b.spec, b.batch));

  using executorch::extension::Module;
  Module module(b.model_path, Module::LoadMode::File);
  if (module.load_forward() != executorch::runtime::Error::Ok) {
    throw UserError(b.model_path + ": ExecuTorch could not load its forward method; re-export the bundle");
  }
  const int s = b.spec.size, c = b.spec.channels;
  for (size_t i = 0; i < images.size(); ++i) {
    auto tensor = executorch::extension::make_tensor_ptr({b.batch, c, s, s}, std::move(inputs[i]));
    auto result = module.forward(tensor);
    if (!result.ok() || result->empty() || !result->at(0).isTensor()) {
      throw UserError(b.model_path + ": running the program failed on " + images[i]);
    }
    const auto& out = result->at(0).toTensor();
    const size_t classes = size_t(out.numel()) / size_t(b.batch);
    if (classes != b.labels.size()) {
      throw UserError(b.model_path + ": " + std::to_string(classes) + " logits, but the manifest lists " +
                      std::to_string(b.labels.size()) + " labels; re-export the bundle");
    }
    const float* logits = out.const_data_ptr<float>();
    size_t best = 0;
    for (size_t k = 1; k < classes; ++k) {
      if (logits[k] > logits[best]) best = k;
    }
    json line = {{"image", images[i]}, {"label", b.labels[best]}, {"index", best},
                 {"logits", std::vector<double>(logits, logits + classes)}};
    std::cout << line.dump() << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UserError& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  }
}
