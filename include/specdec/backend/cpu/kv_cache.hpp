#pragma once
/// \file backend/cpu/kv_cache.hpp
/// The preallocated key/value cache of the CPU transformer.
#include <cstddef>
#include <vector>

namespace specdec::cpu {

/// Keys and values of every layer for up to `capacity()` positions, laid out
/// `[layer][position][kv_dim]` and allocated once. `length()` is how many positions hold
/// valid entries; shrinking it is O(1) because entries past the length are simply
/// overwritten by the next forward.
///
/// ```cpp
/// specdec::cpu::kv_cache cache(/*n_layers=*/6, /*seq_len=*/256, /*kv_dim=*/128);
/// float* k = cache.key(0, cache.length());  // where the next position's key goes
/// cache.set_length(cache.length() + 1);
/// ```
class kv_cache {
 public:
  kv_cache() = default;
  kv_cache(std::size_t n_layers, std::size_t seq_len, std::size_t kv_dim)
      : layers_(n_layers), capacity_(seq_len), kv_dim_(kv_dim),
        keys_(n_layers * seq_len * kv_dim), values_(n_layers * seq_len * kv_dim) {}

  [[nodiscard]] std::size_t length() const noexcept { return length_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] std::size_t kv_dim() const noexcept { return kv_dim_; }
  [[nodiscard]] std::size_t layers() const noexcept { return layers_; }
  /// Sets the number of valid positions; the caller keeps it <= capacity().
  void set_length(std::size_t n) noexcept { length_ = n; }

  [[nodiscard]] float* key(std::size_t layer, std::size_t pos) noexcept { return keys_.data() + index(layer, pos); }
  [[nodiscard]] const float* key(std::size_t layer, std::size_t pos) const noexcept {
    return keys_.data() + index(layer, pos);
  }
  [[nodiscard]] float* value(std::size_t layer, std::size_t pos) noexcept { return values_.data() + index(layer, pos); }
  [[nodiscard]] const float* value(std::size_t layer, std::size_t pos) const noexcept {
    return values_.data() + index(layer, pos);
  }

 private:
  [[nodiscard]] std::size_t index(std::size_t layer, std::size_t pos) const noexcept {
    return (layer * capacity_ + pos) * kv_dim_;
  }
  std::size_t layers_ = 0;
  std::size_t capacity_ = 0;
  std::size_t kv_dim_ = 0;
  std::size_t length_ = 0;
  std::vector<float> keys_;
  std::vector<float> values_;
};

}  // namespace specdec::cpu
