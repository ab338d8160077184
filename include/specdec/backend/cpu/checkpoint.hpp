#pragma once
/// \file backend/cpu/checkpoint.hpp
/// Loading and validating llama2.c "legacy" fp32 checkpoints (see models/README.md).
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

#include "specdec/backend/cpu/detail/aligned.hpp"
#include "specdec/error.hpp"

namespace specdec::cpu {

/// The seven header fields of a llama2.c checkpoint plus whether the classifier is tied
/// to the token embedding (a positive vocab_size in the file).
///
/// ```cpp
/// auto ck = specdec::cpu::load_checkpoint("models/stories260K.bin");
/// int hs = ck.config.head_size();  // 64 / 8 = 8
/// ```
struct model_config {
  int dim = 0;
  int hidden_dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int vocab_size = 0;  ///< always positive here (the file's sign is in shared_classifier)
  int seq_len = 0;
  bool shared_classifier = true;

  /// Width of the key/value projections: dim * n_kv_heads / n_heads.
  [[nodiscard]] int kv_dim() const noexcept { return dim * n_kv_heads / n_heads; }
  /// Width of one attention head: dim / n_heads.
  [[nodiscard]] int head_size() const noexcept { return dim / n_heads; }
};

/// Owning fp32 weights of a checkpoint, stored exactly as in the file (one flat buffer,
/// row-major `[out][in]` matrices) and addressed through the accessors below.
/// `freq_cis_*` tables are kept in the buffer but unused: RoPE is recomputed like run.c.
///
/// ```cpp
/// auto ck = std::make_shared<const specdec::cpu::checkpoint>(
///     specdec::cpu::load_checkpoint("models/kjv-big.bin"));
/// const float* wq0 = ck->wq(0);  // dim x dim, row-major
/// ```
struct checkpoint {
  model_config config{};
  std::string path;
  /// Every fp32 tensor of the file, in file order, in cache-line-aligned storage (so
  /// the weight rows the kernels stream start on a cache line; see detail/aligned.hpp).
  detail::aligned_vector<float> data;

  [[nodiscard]] const float* token_embedding() const noexcept { return data.data(); }
  [[nodiscard]] const float* rms_att(int l) const noexcept { return at(off_rms_att(), l, dim()); }
  [[nodiscard]] const float* wq(int l) const noexcept { return at(off_wq(), l, dim() * dim()); }
  [[nodiscard]] const float* wk(int l) const noexcept { return at(off_wk(), l, kvd() * dim()); }
  [[nodiscard]] const float* wv(int l) const noexcept { return at(off_wv(), l, kvd() * dim()); }
  [[nodiscard]] const float* wo(int l) const noexcept { return at(off_wo(), l, dim() * dim()); }
  [[nodiscard]] const float* rms_ffn(int l) const noexcept { return at(off_rms_ffn(), l, dim()); }
  [[nodiscard]] const float* w1(int l) const noexcept { return at(off_w1(), l, hid() * dim()); }
  [[nodiscard]] const float* w2(int l) const noexcept { return at(off_w2(), l, dim() * hid()); }
  [[nodiscard]] const float* w3(int l) const noexcept { return at(off_w3(), l, hid() * dim()); }
  [[nodiscard]] const float* rms_final() const noexcept { return data.data() + off_rms_final(); }
  /// The classifier `[vocab][dim]`: the token embedding when shared, else the trailing wcls.
  [[nodiscard]] const float* classifier() const noexcept {
    if (config.shared_classifier) return token_embedding();
    std::size_t hs2 = static_cast<std::size_t>(config.head_size() / 2);
    return data.data() + off_rms_final() + dim() + 2 * static_cast<std::size_t>(config.seq_len) * hs2;
  }

 private:
  [[nodiscard]] std::size_t dim() const noexcept { return static_cast<std::size_t>(config.dim); }
  [[nodiscard]] std::size_t kvd() const noexcept { return static_cast<std::size_t>(config.kv_dim()); }
  [[nodiscard]] std::size_t hid() const noexcept { return static_cast<std::size_t>(config.hidden_dim); }
  [[nodiscard]] std::size_t nl() const noexcept { return static_cast<std::size_t>(config.n_layers); }
  [[nodiscard]] const float* at(std::size_t base, int l, std::size_t per_layer) const noexcept {
    return data.data() + base + static_cast<std::size_t>(l) * per_layer;
  }
  [[nodiscard]] std::size_t off_rms_att() const noexcept {
    return static_cast<std::size_t>(config.vocab_size) * dim();
  }
  [[nodiscard]] std::size_t off_wq() const noexcept { return off_rms_att() + nl() * dim(); }
  [[nodiscard]] std::size_t off_wk() const noexcept { return off_wq() + nl() * dim() * dim(); }
  [[nodiscard]] std::size_t off_wv() const noexcept { return off_wk() + nl() * kvd() * dim(); }
  [[nodiscard]] std::size_t off_wo() const noexcept { return off_wv() + nl() * kvd() * dim(); }
  [[nodiscard]] std::size_t off_rms_ffn() const noexcept { return off_wo() + nl() * dim() * dim(); }
  [[nodiscard]] std::size_t off_w1() const noexcept { return off_rms_ffn() + nl() * dim(); }
  [[nodiscard]] std::size_t off_w2() const noexcept { return off_w1() + nl() * hid() * dim(); }
  [[nodiscard]] std::size_t off_w3() const noexcept { return off_w2() + nl() * dim() * hid(); }
  [[nodiscard]] std::size_t off_rms_final() const noexcept { return off_w3() + nl() * hid() * dim(); }
};

namespace detail {

/// Size limits that reject absurd headers before any arithmetic can overflow or any
/// allocation is attempted.
inline constexpr std::int64_t max_dimension = std::int64_t{1} << 24;
inline constexpr std::uint64_t max_checkpoint_bytes = std::uint64_t{1} << 38;  // 256 GiB

/// a * b, or false when the product exceeds max_checkpoint_bytes (operands are < 2^32).
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (a != 0 && b > max_checkpoint_bytes / a) return false;
  out = a * b;
  return true;
}
inline bool checked_add(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (b > max_checkpoint_bytes - a) return false;
  out = a + b;
  return true;
}

[[noreturn]] inline void checkpoint_fail(const std::string& path, const std::string& what) {
  throw checkpoint_error("checkpoint '" + path + "': " + what);
}

/// Number of fp32 values a checkpoint with header `c` holds after the header, or throws.
inline std::uint64_t expected_float_count(const model_config& c, const std::string& path) {
  auto u = [](int v) { return static_cast<std::uint64_t>(v); };
  const std::uint64_t dim = u(c.dim), hid = u(c.hidden_dim), L = u(c.n_layers);
  const std::uint64_t kvd = u(c.kv_dim()), vocab = u(c.vocab_size), seq = u(c.seq_len);
  const std::uint64_t hs = u(c.head_size());
  // Sum of (count_a * count_b [* count_c]) terms, each checked.
  std::uint64_t total = 0;
  bool ok = true;
  auto add3 = [&](std::uint64_t a, std::uint64_t b, std::uint64_t cc) {
    std::uint64_t t1 = 0, t2 = 0;
    ok = ok && checked_mul(a, b, t1) && checked_mul(t1, cc, t2) && checked_add(total, t2, total);
  };
  add3(vocab, dim, 1);       // token_embedding
  add3(L, dim, 1);           // rms_att
  add3(L, dim, dim);         // wq
  add3(L, kvd, dim);         // wk
  add3(L, kvd, dim);         // wv
  add3(L, dim, dim);         // wo
  add3(L, dim, 1);           // rms_ffn
  add3(L, hid, dim);         // w1
  add3(L, dim, hid);         // w2
  add3(L, hid, dim);         // w3
  add3(dim, 1, 1);           // rms_final
  add3(seq, hs / 2, 2);      // freq_cis_real + freq_cis_imag
  if (!c.shared_classifier) add3(vocab, dim, 1);  // wcls
  std::uint64_t bytes = 0;
  if (!ok || !checked_mul(total, 4, bytes) || !checked_add(bytes, 28, bytes)) {
    checkpoint_fail(path, "header sizes are absurd: the implied file size exceeds " +
                              std::to_string(max_checkpoint_bytes) +
                              " bytes; expected a checkpoint of sane dimensions");
  }
  return total;
}

inline void check_positive(const std::string& path, const char* name, std::int64_t v) {
  if (v <= 0) {
    checkpoint_fail(path, std::string("header field ") + name + " = " + std::to_string(v) +
                              "; expected " + name + " > 0");
  }
  if (v > max_dimension) {
    checkpoint_fail(path, std::string("header field ") + name + " = " + std::to_string(v) +
                              " is absurd; expected " + name + " <= " +
                              std::to_string(max_dimension));
  }
}

}  // namespace detail

/// Reads and validates a llama2.c legacy checkpoint. Throws `specdec::checkpoint_error`
/// naming the file and the expectation for a missing file, a truncated header, invalid
/// or absurd dimensions, and a file size that differs from what the header implies.
///
/// ```cpp
/// specdec::cpu::checkpoint ck = specdec::cpu::load_checkpoint("models/kjv-little.bin");
/// assert(ck.config.dim == 128 && ck.config.shared_classifier);
/// ```
inline checkpoint load_checkpoint(const std::filesystem::path& file) {
  const std::string path = file.string();
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) {
    detail::checkpoint_fail(path, "no such file; expected an existing llama2.c checkpoint file");
  }
  if (!std::filesystem::is_regular_file(file, ec)) {
    detail::checkpoint_fail(path, "not a regular file; expected an existing llama2.c checkpoint file");
  }
  const std::uintmax_t file_size = std::filesystem::file_size(file, ec);
  if (ec) detail::checkpoint_fail(path, "cannot determine the file size: " + ec.message());
  std::ifstream in(file, std::ios::binary);
  if (!in) detail::checkpoint_fail(path, "cannot open the file for reading");

  constexpr std::size_t header_bytes = 7 * sizeof(std::int32_t);
  std::array<unsigned char, header_bytes> raw{};
  if (file_size < header_bytes ||
      !in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(header_bytes))) {
    detail::checkpoint_fail(path, "truncated header: expected at least " +
                                      std::to_string(header_bytes) + " bytes, got " +
                                      std::to_string(file_size));
  }
  std::array<std::int64_t, 7> h{};
  for (std::size_t i = 0; i < 7; ++i) {  // little-endian int32, independent of the host
    std::uint32_t u = std::uint32_t(raw[4 * i]) | (std::uint32_t(raw[4 * i + 1]) << 8) |
                      (std::uint32_t(raw[4 * i + 2]) << 16) | (std::uint32_t(raw[4 * i + 3]) << 24);
    h[i] = static_cast<std::int32_t>(u);
  }
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (std::size_t i = 0; i < 7; ++i) {
    detail::check_positive(path, names[i], i == 5 ? (h[i] < 0 ? -h[i] : h[i]) : h[i]);
  }
  checkpoint ck;
  ck.path = path;
  model_config& c = ck.config;
  c.dim = static_cast<int>(h[0]);
  c.hidden_dim = static_cast<int>(h[1]);
  c.n_layers = static_cast<int>(h[2]);
  c.n_heads = static_cast<int>(h[3]);
  c.n_kv_heads = static_cast<int>(h[4]);
  c.shared_classifier = h[5] > 0;
  c.vocab_size = static_cast<int>(h[5] < 0 ? -h[5] : h[5]);
  c.seq_len = static_cast<int>(h[6]);
  if (c.dim % c.n_heads != 0) {
    detail::checkpoint_fail(path, "dim = " + std::to_string(c.dim) + " is not a multiple of n_heads = " +
                                      std::to_string(c.n_heads) + "; expected dim % n_heads == 0");
  }
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0) {
    detail::checkpoint_fail(path, "n_heads = " + std::to_string(c.n_heads) +
                                      " is not a multiple of n_kv_heads = " + std::to_string(c.n_kv_heads) +
                                      "; expected n_heads % n_kv_heads == 0");
  }
  if (c.head_size() % 2 != 0) {
    detail::checkpoint_fail(path, "head_size = dim / n_heads = " + std::to_string(c.head_size()) +
                                      " is odd; expected an even head_size for rotary embeddings");
  }
  const std::uint64_t floats = detail::expected_float_count(c, path);
  const std::uint64_t expected_bytes = header_bytes + 4 * floats;
  if (static_cast<std::uint64_t>(file_size) != expected_bytes) {
    detail::checkpoint_fail(
        path, "file size does not match its header (dim " + std::to_string(c.dim) + ", hidden_dim " +
                  std::to_string(c.hidden_dim) + ", n_layers " + std::to_string(c.n_layers) +
                  ", n_heads " + std::to_string(c.n_heads) + ", n_kv_heads " +
                  std::to_string(c.n_kv_heads) + ", vocab_size " + std::to_string(h[5]) +
                  ", seq_len " + std::to_string(c.seq_len) + "): expected " +
                  std::to_string(expected_bytes) + " bytes, got " + std::to_string(file_size));
  }
  ck.data.resize(static_cast<std::size_t>(floats));
  if (!in.read(reinterpret_cast<char*>(ck.data.data()), static_cast<std::streamsize>(4 * floats))) {
    detail::checkpoint_fail(path, "read failed after " + std::to_string(in.gcount()) +
                                      " payload bytes; expected " + std::to_string(4 * floats));
  }
  if constexpr (std::endian::native == std::endian::big) {
    for (float& f : ck.data) {
      std::uint32_t u;
      std::memcpy(&u, &f, 4);
      u = (u >> 24) | ((u >> 8) & 0xff00u) | ((u << 8) & 0xff0000u) | (u << 24);
      std::memcpy(&f, &u, 4);
    }
  }
  return ck;
}

}  // namespace specdec::cpu
