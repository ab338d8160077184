#pragma once
/// \file backend/cpu/detail/aligned.hpp
/// Cache-line-aligned storage for everything the kernels stream: weights (the checkpoint's
/// fp32 tensors and the converted 16-bit / q8_0 copies), KV caches and the activation
/// scratch of a forward.
///
/// Why: `std::vector` storage comes from malloc, which aligns to 16 bytes only; a large
/// block is mmapped and starts 16 bytes into a cache line, and small ones land at any
/// 16-byte offset, so most 64-byte weight and input loads of the AVX-512 tiles straddled
/// two cache lines, which costs a second cache access per load. Alignment changes no
/// result (the same loads in the same order), only their cost (see
/// bench/bench_forward.cpp, blocks of 8-16 tokens, where the tiles are compute-bound).
///
/// The alignment is a fixed 64 bytes, not Eigen's `aligned_allocator` (which follows
/// EIGEN_MAX_ALIGN_BYTES, a setting users may lower) nor xsimd's (not a dependency of the
/// backend): C++17 aligned `operator new` does the work.
#include <cstddef>
#include <new>
#include <vector>

namespace specdec::cpu::detail {

/// Bytes of a cache line, and the alignment of every buffer the kernels stream.
inline constexpr std::size_t cache_line = 64;

/// A std::allocator that aligns every allocation to a cache line.
template <class T>
struct cache_aligned_allocator {
  using value_type = T;
  cache_aligned_allocator() noexcept = default;
  template <class U>
  cache_aligned_allocator(const cache_aligned_allocator<U>&) noexcept {}  // NOLINT: rebinding converts implicitly
  [[nodiscard]] T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{cache_line}));
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{cache_line}); }
  template <class U>
  bool operator==(const cache_aligned_allocator<U>&) const noexcept {
    return true;
  }
};

/// A vector whose data() is cache-line aligned.
template <class T>
using aligned_vector = std::vector<T, cache_aligned_allocator<T>>;

}  // namespace specdec::cpu::detail
