#pragma once
/// \file backend/cpu/detail/shared_instance.hpp
/// Process-wide objects shared by key while anyone holds them: the thread pools
/// (`shared_pool`) and a checkpoint's converted weights (`shared_model_weights`).
#include <map>
#include <memory>
#include <mutex>

namespace specdec::cpu::detail {

/// The live object for `key`, or a new one from `make()` if there is none. Each
/// instantiation has its own cache (so each call site: every lambda `make` has its own
/// type); it holds weak references only, so an object lives as long as some caller holds
/// it, and expired entries are dropped on every call.
template <class T, class Key, class Make>
std::shared_ptr<T> shared_instance(const Key& key, Make&& make) {
  static std::mutex m;
  static std::map<Key, std::weak_ptr<T>> cache;
  std::lock_guard<std::mutex> lock(m);
  for (auto it = cache.begin(); it != cache.end();) it = it->second.expired() ? cache.erase(it) : std::next(it);
  std::weak_ptr<T>& slot = cache[key];
  std::shared_ptr<T> p = slot.lock();
  if (!p) slot = p = make();
  return p;
}

}  // namespace specdec::cpu::detail
