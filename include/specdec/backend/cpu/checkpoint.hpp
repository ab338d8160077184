#pragma once
/// \file backend/cpu/checkpoint.hpp
/// Loading and validating llama2.c "legacy" fp32 checkpoints (see models/README.md).
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "specdec/backend/cpu/detail/aligned.hpp"
#include "specdec/backend/cpu/detail/linkage.hpp"
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

  /// Width of the key/value projections: dim * n_kv_heads / n_heads (computed in 64 bits:
  /// the product can exceed int even where the quotient, at most dim, fits).
  [[nodiscard]] int kv_dim() const noexcept {
    return static_cast<int>(static_cast<std::int64_t>(dim) * n_kv_heads / n_heads);
  }
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
inline constexpr std::size_t checkpoint_header_bytes = 7 * sizeof(std::int32_t);

/// a * b, or false when the product exceeds max_checkpoint_bytes. Any operands: the
/// check comes before the multiplication, so nothing wraps.
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (a != 0 && b > max_checkpoint_bytes / a) return false;
  out = a * b;
  return true;
}
inline bool checked_add(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (a > max_checkpoint_bytes || b > max_checkpoint_bytes - a) return false;
  out = a + b;
  return true;
}

[[noreturn]] inline void checkpoint_fail(const std::string& path, const std::string& what) {
  throw checkpoint_error("checkpoint '" + path + "': " + what);
}

/// One tensor of the file: `layers` blocks of `rows x cols` floats, in file order.
/// `used` is false for the RoPE tables, which the loader keeps but never reads.
struct tensor_extent {
  const char* name;
  std::uint64_t layers, rows, cols;
  bool per_layer = false;  ///< one block per transformer layer
  bool used = true;
};

/// The tensors a checkpoint with header `c` holds after the header, in file order
/// (widened to 64 bits; their products are checked by `expected_float_count`).
inline std::vector<tensor_extent> tensor_layout(const model_config& c) {
  auto u = [](int v) { return static_cast<std::uint64_t>(v); };
  const std::uint64_t dim = u(c.dim), hid = u(c.hidden_dim), L = u(c.n_layers);
  const std::uint64_t kvd = u(c.kv_dim()), vocab = u(c.vocab_size), seq = u(c.seq_len);
  const std::uint64_t half = u(c.head_size()) / 2;
  std::vector<tensor_extent> t{{"token_embedding", 1, vocab, dim},
                               {"rms_att", L, 1, dim, true},
                               {"wq", L, dim, dim, true},
                               {"wk", L, kvd, dim, true},
                               {"wv", L, kvd, dim, true},
                               {"wo", L, dim, dim, true},
                               {"rms_ffn", L, 1, dim, true},
                               {"w1", L, hid, dim, true},
                               {"w2", L, dim, hid, true},
                               {"w3", L, hid, dim, true},
                               {"rms_final", 1, 1, dim},
                               {"freq_cis_real", 1, seq, half, false, false},
                               {"freq_cis_imag", 1, seq, half, false, false}};
  if (!c.shared_classifier) t.push_back({"wcls", 1, vocab, dim});
  return t;
}

/// Floats per layer of `t` and in all of `t`, or false if either exceeds the file limit.
inline bool tensor_counts(const tensor_extent& t, std::uint64_t& per_layer, std::uint64_t& total) noexcept {
  return checked_mul(t.rows, t.cols, per_layer) && checked_mul(per_layer, t.layers, total);
}

/// Number of fp32 values a checkpoint with header `c` holds after the header, or throws.
/// Every product and sum of header values is checked against max_checkpoint_bytes in 64-bit
/// unsigned arithmetic before it is formed.
inline std::uint64_t expected_float_count(const model_config& c, const std::string& path) {
  std::uint64_t total = 0, bytes = 0;
  bool ok = true;
  for (const tensor_extent& t : tensor_layout(c)) {
    std::uint64_t per_layer = 0, n = 0;
    ok = ok && tensor_counts(t, per_layer, n) && checked_add(total, n, total);
  }
  if (!ok || !checked_mul(total, 4, bytes) || !checked_add(bytes, checkpoint_header_bytes, bytes)) {
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

/// The validated header of a checkpoint of `file_size` bytes whose first 28 bytes are
/// `raw`, and the number of floats that follow it; throws `checkpoint_error` naming
/// `path` for invalid or absurd fields and for a size that differs from the header's.
inline model_config parse_checkpoint_header(const unsigned char* raw, std::uint64_t file_size, const std::string& path,
                                            std::uint64_t& floats) {
  std::array<std::int64_t, 7> h{};
  for (std::size_t i = 0; i < 7; ++i) {  // little-endian int32, independent of the host
    std::uint32_t u = std::uint32_t(raw[4 * i]) | (std::uint32_t(raw[4 * i + 1]) << 8) |
                      (std::uint32_t(raw[4 * i + 2]) << 16) | (std::uint32_t(raw[4 * i + 3]) << 24);
    h[i] = static_cast<std::int32_t>(u);
  }
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (std::size_t i = 0; i < 7; ++i) check_positive(path, names[i], i == 5 ? (h[i] < 0 ? -h[i] : h[i]) : h[i]);
  model_config c;
  c.dim = static_cast<int>(h[0]);
  c.hidden_dim = static_cast<int>(h[1]);
  c.n_layers = static_cast<int>(h[2]);
  c.n_heads = static_cast<int>(h[3]);
  c.n_kv_heads = static_cast<int>(h[4]);
  c.shared_classifier = h[5] > 0;
  c.vocab_size = static_cast<int>(h[5] < 0 ? -h[5] : h[5]);
  c.seq_len = static_cast<int>(h[6]);
  if (c.dim % c.n_heads != 0) {
    checkpoint_fail(path, "dim = " + std::to_string(c.dim) + " is not a multiple of n_heads = " +
                              std::to_string(c.n_heads) + "; expected dim % n_heads == 0");
  }
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0) {
    checkpoint_fail(path, "n_heads = " + std::to_string(c.n_heads) + " is not a multiple of n_kv_heads = " +
                              std::to_string(c.n_kv_heads) + "; expected n_heads % n_kv_heads == 0");
  }
  if (c.head_size() % 2 != 0) {
    checkpoint_fail(path, "head_size = dim / n_heads = " + std::to_string(c.head_size()) +
                              " is odd; expected an even head_size for rotary embeddings");
  }
  floats = expected_float_count(c, path);
  const std::uint64_t expected_bytes = checkpoint_header_bytes + 4 * floats;
  if (file_size != expected_bytes) {
    checkpoint_fail(path, "file size does not match its header (dim " + std::to_string(c.dim) + ", hidden_dim " +
                              std::to_string(c.hidden_dim) + ", n_layers " + std::to_string(c.n_layers) +
                              ", n_heads " + std::to_string(c.n_heads) + ", n_kv_heads " +
                              std::to_string(c.n_kv_heads) + ", vocab_size " + std::to_string(h[5]) +
                              ", seq_len " + std::to_string(c.seq_len) + "): expected " +
                              std::to_string(expected_bytes) + " bytes, got " + std::to_string(file_size));
  }
  return c;
}

/// Byte-swaps the little-endian payload on big-endian hosts, then checks that every
/// weight the model reads is finite: a NaN or infinite weight would make every logit NaN,
/// which greedy decoding turns silently into token 0. Throws `checkpoint_error` naming the
/// tensor, its layer and the element.
inline void finish_payload(checkpoint& ck) {
  if constexpr (std::endian::native == std::endian::big) {
    for (float& f : ck.data) {
      std::uint32_t u;
      std::memcpy(&u, &f, 4);
      u = (u >> 24) | ((u >> 8) & 0xff00u) | ((u << 8) & 0xff0000u) | (u << 24);
      std::memcpy(&f, &u, 4);
    }
  }
  std::uint64_t offset = 0;
  for (const tensor_extent& t : tensor_layout(ck.config)) {
    std::uint64_t per_layer = 0, n = 0;
    (void)tensor_counts(t, per_layer, n);  // checked when the header was parsed
    const float* p = ck.data.data() + offset;
    offset += n;
    if (!t.used) continue;
    // Branch-free pass (vectorises); the position is looked for only when one is bad.
    bool bad = false;
    for (std::uint64_t i = 0; i < n; ++i) bad |= !std::isfinite(p[i]);
    if (!bad) continue;
    std::uint64_t i = 0;
    while (std::isfinite(p[i])) ++i;
    std::string where = "tensor " + std::string(t.name);
    if (t.per_layer) where += " of layer " + std::to_string(i / per_layer);
    where += " (row " + std::to_string(i % per_layer / t.cols) + ", column " + std::to_string(i % t.cols) + ")";
    checkpoint_fail(ck.path, where + " holds " + std::to_string(p[i]) + "; expected finite weights");
  }
}

}  // namespace detail

/// Reads and validates a llama2.c legacy checkpoint. Throws `specdec::checkpoint_error`
/// naming the file and the expectation for a missing file, a truncated header, invalid
/// or absurd dimensions, a file size that differs from what the header implies, and a
/// non-finite weight (naming the tensor and layer).
///
/// ```cpp
/// specdec::cpu::checkpoint ck = specdec::cpu::load_checkpoint("models/kjv-little.bin");
/// assert(ck.config.dim == 128 && ck.config.shared_classifier);
/// ```
SPECDEC_CPU_FUNC checkpoint load_checkpoint(const std::filesystem::path& file);
#if SPECDEC_CPU_DEFINITIONS
SPECDEC_CPU_FUNC checkpoint load_checkpoint(const std::filesystem::path& file) {
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

  constexpr std::size_t header_bytes = detail::checkpoint_header_bytes;
  std::array<unsigned char, header_bytes> raw{};
  if (file_size < header_bytes ||
      !in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(header_bytes))) {
    detail::checkpoint_fail(path, "truncated header: expected at least " +
                                      std::to_string(header_bytes) + " bytes, got " +
                                      std::to_string(file_size));
  }
  checkpoint ck;
  ck.path = path;
  std::uint64_t floats = 0;
  ck.config = detail::parse_checkpoint_header(raw.data(), file_size, path, floats);
  ck.data.resize(static_cast<std::size_t>(floats));
  if (!in.read(reinterpret_cast<char*>(ck.data.data()), static_cast<std::streamsize>(4 * floats))) {
    detail::checkpoint_fail(path, "read failed after " + std::to_string(in.gcount()) +
                                      " payload bytes; expected " + std::to_string(4 * floats));
  }
  detail::finish_payload(ck);
  return ck;
}
#endif  // SPECDEC_CPU_DEFINITIONS

/// The checkpoint held in memory in `bytes` (a whole llama2.c file), validated exactly as
/// `load_checkpoint` validates a file; errors name `name` in place of a path.
///
/// ```cpp
/// std::ifstream in("models/stories260K.bin", std::ios::binary);  // or any other source
/// std::vector<unsigned char> bytes(std::istreambuf_iterator<char>(in), {});
/// specdec::cpu::checkpoint ck = specdec::cpu::parse_checkpoint(bytes, "stories260K (in memory)");
/// ```
SPECDEC_CPU_FUNC checkpoint parse_checkpoint(std::span<const unsigned char> bytes, const std::string& name);
#if SPECDEC_CPU_DEFINITIONS
SPECDEC_CPU_FUNC checkpoint parse_checkpoint(std::span<const unsigned char> bytes, const std::string& name) {
  constexpr std::size_t header_bytes = detail::checkpoint_header_bytes;
  if (bytes.size() < header_bytes) {
    detail::checkpoint_fail(name, "truncated header: expected at least " + std::to_string(header_bytes) +
                                      " bytes, got " + std::to_string(bytes.size()));
  }
  checkpoint ck;
  ck.path = name;
  std::uint64_t floats = 0;
  ck.config = detail::parse_checkpoint_header(bytes.data(), bytes.size(), name, floats);
  ck.data.resize(static_cast<std::size_t>(floats));
  std::memcpy(ck.data.data(), bytes.data() + header_bytes, static_cast<std::size_t>(4 * floats));
  detail::finish_payload(ck);
  return ck;
}
#endif  // SPECDEC_CPU_DEFINITIONS

}  // namespace specdec::cpu
