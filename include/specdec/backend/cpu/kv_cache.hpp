#pragma once
/// \file backend/cpu/kv_cache.hpp
/// The preallocated key/value cache of the CPU transformer.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#if __has_include(<unistd.h>)
#include <unistd.h>
#endif

#include "specdec/backend/cpu/detail/aligned.hpp"
#include "specdec/backend/cpu/detail/weights.hpp"
#include "specdec/error.hpp"

namespace specdec::cpu {

/// Throws `invalid_argument` ("<who>: 'q8_0' cannot hold a KV cache; expected fp32, bf16 or
/// fp16") unless `format` can hold a KV cache; q8_0 is a weight format only. The KV cache,
/// the transformer options and the command-line tools all check through here.
inline void check_kv_format(weight_format format, std::string_view who) {
  if (format == weight_format::fp32 || format == weight_format::bf16 || format == weight_format::fp16) return;
  throw invalid_argument(std::string(who) + ": '" + std::string(to_string(format)) +
                         "' cannot hold a KV cache; expected fp32, bf16 or fp16");
}

namespace detail {

/// Bytes of memory the system reports available for new allocations: MemAvailable of
/// /proc/meminfo (Linux), else the free physical pages of sysconf, else unlimited. The
/// default bound of the memory a model's KV caches and scratch may take.
inline std::uint64_t available_memory() noexcept {
  if (std::FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kib = 0;
    bool found = false;
    while (!found && std::fgets(line, sizeof line, f)) found = std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
    std::fclose(f);
    if (found && kib <= std::numeric_limits<std::uint64_t>::max() / 1024) return std::uint64_t{kib} * 1024;
  }
#if defined(_SC_AVPHYS_PAGES) && defined(_SC_PAGESIZE)
  const long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return std::uint64_t(pages) * std::uint64_t(page);
#endif
  return std::numeric_limits<std::uint64_t>::max();
}

/// a * b * c, or false if it exceeds `limit` (checked before multiplying, nothing wraps).
inline bool checked_product(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t limit,
                            std::uint64_t& out) noexcept {
  if (a != 0 && b > limit / a) return false;
  const std::uint64_t ab = a * b;
  if (ab != 0 && c > limit / ab) return false;
  out = ab * c;
  return true;
}

}  // namespace detail

/// Keys and values of every layer for up to `capacity()` positions, laid out
/// `[layer][position][kv_dim]` and allocated once. `length()` is how many positions hold
/// valid entries; shrinking it is O(1) because entries past the length are simply
/// overwritten by the next forward.
///
/// Entries are held as `format()`: fp32 (exact), or fp16 / bf16 (2 bytes, rounded to
/// nearest even when stored, widened exactly when read; half the memory and half the
/// bytes each attention pass reads). The rounding happens once, when a position is
/// stored, so it is the same whatever block or batch the position came in with.
///
/// ```cpp
/// specdec::cpu::kv_cache cache(/*n_layers=*/6, /*seq_len=*/256, /*kv_dim=*/128);
/// std::vector<float> k(128, 0.5f), v(128, -0.5f);
/// cache.store(0, cache.length(), k.data(), v.data());  // layer 0, next position
/// cache.set_length(cache.length() + 1);
/// ```
class kv_cache {
 public:
  kv_cache() = default;
  /// Throws `invalid_argument` for q8_0, which is a weight format only, and for sizes
  /// whose product overflows (before allocating anything).
  kv_cache(std::size_t n_layers, std::size_t seq_len, std::size_t kv_dim, weight_format format = weight_format::fp32)
      : layers_(n_layers), capacity_(seq_len), kv_dim_(kv_dim), format_(format) {
    check_kv_format(format, "kv_cache");
    const std::size_t n = entries(n_layers, seq_len, kv_dim);
    if (format == weight_format::fp32) keys_.resize(n), values_.resize(n);
    else keys16_.resize(n), values16_.resize(n);
  }

  /// Bytes a cache of these sizes holds (keys and values), computed before allocating
  /// one; `invalid_argument` if the product overflows.
  ///
  /// ```cpp
  /// std::uint64_t b = specdec::cpu::kv_cache::bytes(6, 256, 128, specdec::cpu::weight_format::fp16);  // 786432
  /// ```
  [[nodiscard]] static std::uint64_t bytes(std::size_t n_layers, std::size_t seq_len, std::size_t kv_dim,
                                           weight_format format) {
    const std::uint64_t element = format == weight_format::fp32 ? sizeof(float) : sizeof(std::uint16_t);
    std::uint64_t b = 0;
    if (!detail::checked_product(entries(n_layers, seq_len, kv_dim), 2 * element, 1,
                                 std::numeric_limits<std::uint64_t>::max(), b))
      overflow(n_layers, seq_len, kv_dim);
    return b;
  }

  [[nodiscard]] std::size_t length() const noexcept { return length_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] std::size_t kv_dim() const noexcept { return kv_dim_; }
  [[nodiscard]] std::size_t layers() const noexcept { return layers_; }
  [[nodiscard]] weight_format format() const noexcept { return format_; }
  /// Bytes one cached position takes over all layers (keys and values).
  [[nodiscard]] std::size_t bytes_per_position() const noexcept { return bytes_per_position(layers_, kv_dim_, format_); }
  /// The same for a cache of `n_layers` x `kv_dim` in `format`, without allocating one.
  [[nodiscard]] static std::size_t bytes_per_position(std::size_t n_layers, std::size_t kv_dim,
                                                      weight_format format) noexcept {
    return 2 * n_layers * kv_dim * (format == weight_format::fp32 ? sizeof(float) : sizeof(std::uint16_t));
  }
  /// Sets the number of valid positions; the caller keeps it <= capacity().
  void set_length(std::size_t n) noexcept { length_ = n; }
  /// Zeroes every stored key and value and empties the cache, so nothing of the tokens it
  /// held survives into its next use (a server reusing caches across clients).
  void wipe() noexcept {
    std::fill(keys_.begin(), keys_.end(), 0.0f);
    std::fill(values_.begin(), values_.end(), 0.0f);
    std::fill(keys16_.begin(), keys16_.end(), std::uint16_t{0});
    std::fill(values16_.begin(), values16_.end(), std::uint16_t{0});
    length_ = 0;
  }

  /// Writes the key and value (kv_dim floats each) of `pos` in `layer`, rounded to
  /// `format()`.
  void store(std::size_t layer, std::size_t pos, const float* key, const float* value) noexcept {
    const std::size_t at = index(layer, pos);
    switch (format_) {
      case weight_format::fp32:
        for (std::size_t i = 0; i < kv_dim_; ++i) keys_[at + i] = key[i], values_[at + i] = value[i];
        break;
      case weight_format::bf16:
        for (std::size_t i = 0; i < kv_dim_; ++i)
          keys16_[at + i] = detail::float_to_bf16(key[i]), values16_[at + i] = detail::float_to_bf16(value[i]);
        break;
      default:
        for (std::size_t i = 0; i < kv_dim_; ++i)
          keys16_[at + i] = detail::float_to_fp16(key[i]), values16_[at + i] = detail::float_to_fp16(value[i]);
        break;
    }
  }

  /// Copies the key and value of position `from` to position `to` in every layer (the
  /// stored bits, so the copy is exact in every format): O(layers x kv_dim). A token
  /// tree's accepted path is compacted this way.
  void copy_position(std::size_t from, std::size_t to) noexcept {
    if (from == to) return;
    for (std::size_t l = 0; l < layers_; ++l) {
      const std::size_t a = index(l, from), b = index(l, to);
      if (format_ == weight_format::fp32) {
        std::copy_n(keys_.data() + a, kv_dim_, keys_.data() + b);
        std::copy_n(values_.data() + a, kv_dim_, values_.data() + b);
      } else {
        std::copy_n(keys16_.data() + a, kv_dim_, keys16_.data() + b);
        std::copy_n(values16_.data() + a, kv_dim_, values16_.data() + b);
      }
    }
  }

  /// fp32 caches: the key / value row of (layer, pos).
  [[nodiscard]] float* key(std::size_t layer, std::size_t pos) noexcept { return keys_.data() + index(layer, pos); }
  [[nodiscard]] const float* key(std::size_t layer, std::size_t pos) const noexcept {
    return keys_.data() + index(layer, pos);
  }
  [[nodiscard]] float* value(std::size_t layer, std::size_t pos) noexcept { return values_.data() + index(layer, pos); }
  [[nodiscard]] const float* value(std::size_t layer, std::size_t pos) const noexcept {
    return values_.data() + index(layer, pos);
  }
  /// bf16 / fp16 caches: the stored 16-bit key / value row of (layer, pos).
  [[nodiscard]] const std::uint16_t* key16(std::size_t layer, std::size_t pos) const noexcept {
    return keys16_.data() + index(layer, pos);
  }
  [[nodiscard]] const std::uint16_t* value16(std::size_t layer, std::size_t pos) const noexcept {
    return values16_.data() + index(layer, pos);
  }

 private:
  /// n_layers x seq_len x kv_dim entries per tensor, or `invalid_argument` on overflow.
  static std::size_t entries(std::size_t n_layers, std::size_t seq_len, std::size_t kv_dim) {
    std::uint64_t n = 0;
    if (!detail::checked_product(n_layers, seq_len, kv_dim, std::numeric_limits<std::size_t>::max() / 4, n))
      overflow(n_layers, seq_len, kv_dim);
    return static_cast<std::size_t>(n);
  }
  [[noreturn]] static void overflow(std::size_t n_layers, std::size_t seq_len, std::size_t kv_dim) {
    throw invalid_argument("kv_cache: n_layers " + std::to_string(n_layers) + " x seq_len " +
                           std::to_string(seq_len) + " x kv_dim " + std::to_string(kv_dim) +
                           " entries overflow a size; expected a cache that fits the address space");
  }
  [[nodiscard]] std::size_t index(std::size_t layer, std::size_t pos) const noexcept {
    return (layer * capacity_ + pos) * kv_dim_;
  }
  std::size_t layers_ = 0;
  std::size_t capacity_ = 0;
  std::size_t kv_dim_ = 0;
  std::size_t length_ = 0;
  weight_format format_ = weight_format::fp32;
  detail::aligned_vector<float> keys_, values_;  // cache-line aligned, like every buffer the kernels stream
  detail::aligned_vector<std::uint16_t> keys16_, values16_;
};

}  // namespace specdec::cpu
