// Writes variants of a llama2.c checkpoint for the command-line tests:
//   make_checkpoint SRC DST seq_len N   the same weights with a context of N <= SRC's
//                                       (the unused RoPE tables cut to N positions)
//   make_checkpoint SRC DST nan TENSOR  the first element of TENSOR (layer 0) set to NaN
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "specdec/backend/cpu/checkpoint.hpp"

int main(int argc, char** argv) try {
  if (argc != 5) {
    std::cerr << "usage: make_checkpoint SRC DST seq_len N | SRC DST nan TENSOR\n";
    return 2;
  }
  using namespace specdec::cpu;
  const checkpoint ck = load_checkpoint(argv[1]);
  const std::string mode = argv[3], arg = argv[4];
  model_config c = ck.config;
  std::vector<float> out;
  std::uint64_t offset = 0;
  bool found = false;
  if (mode == "seq_len") c.seq_len = std::stoi(arg);
  if (c.seq_len <= 0 || c.seq_len > ck.config.seq_len) throw std::runtime_error("seq_len out of range");
  for (const detail::tensor_extent& t : detail::tensor_layout(ck.config)) {
    const std::uint64_t n = t.layers * t.rows * t.cols;
    const float* p = ck.data.data() + offset;
    offset += n;
    // RoPE tables: the first seq_len rows of half a head each.
    const std::uint64_t keep = t.used ? n : static_cast<std::uint64_t>(c.seq_len) * t.cols;
    const std::size_t at = out.size();
    out.insert(out.end(), p, p + keep);
    if (mode == "nan" && arg == t.name) {
      out[at] = std::numeric_limits<float>::quiet_NaN();
      found = true;
    }
  }
  if (mode == "nan" && !found) throw std::runtime_error("no tensor named " + arg);
  if (mode != "nan" && mode != "seq_len") throw std::runtime_error("unknown mode " + mode);
  const std::int32_t header[7] = {c.dim,        c.hidden_dim,
                                  c.n_layers,   c.n_heads,
                                  c.n_kv_heads, c.shared_classifier ? c.vocab_size : -c.vocab_size,
                                  c.seq_len};
  std::ofstream f(argv[2], std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(header), sizeof header);  // the bundled files are little-endian, as is x86
  f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(float)));
  return f.good() ? 0 : 1;
} catch (const std::exception& e) {
  std::cerr << "make_checkpoint: " << e.what() << "\n";
  return 1;
}
