#pragma once
/// \file backend/cpu/detail/thread_pool.hpp
/// A small persistent thread pool for the CPU transformer (no OpenMP): `run(f)` calls
/// f(part, parts) once for every part in [0, parts), part 0 on the calling thread and the
/// others on the pool's workers, and returns when all are done. Workers spin briefly on
/// an atomic generation counter (the gaps between the products of one forward are a few
/// microseconds) and then block on a condition variable, so an idle pool costs no CPU.
///
/// Synchronisation (TSan-clean by construction): the job is published by a seq_cst
/// increment of `generation_` after it is written, and read by workers after they observe
/// the new generation; completion is a seq_cst decrement of `remaining_` that the caller
/// waits for. A worker going to sleep increments `sleepers_` under the mutex before
/// re-checking the generation, and the caller notifies under the mutex whenever it sees a
/// sleeper, so no wake-up is lost. Callers are serialised by `run_mutex_`, so one pool can
/// be shared by several models (`shared_pool`) and used from several threads.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace specdec::cpu::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

class thread_pool {
 public:
  /// A pool running jobs on `threads` threads in total (the caller plus threads - 1
  /// workers); threads == 0 means std::thread::hardware_concurrency().
  explicit thread_pool(std::size_t threads) {
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    workers_.reserve(threads - 1);
    for (std::size_t i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
  }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;
  ~thread_pool() {
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      stop_.store(true);
      generation_.fetch_add(1);
    }
    sleep_cv_.notify_all();
    for (auto& w : workers_) w.join();
  }

  [[nodiscard]] std::size_t size() const noexcept { return workers_.size() + 1; }

  /// Calls f(part, parts) for part in [0, parts) with parts = size(), in parallel;
  /// f must not throw. With one thread it is a plain call f(0, 1).
  template <class F>
  void run(F&& f) {
    const std::size_t parts = size();
    if (parts == 1) {
      f(std::size_t{0}, std::size_t{1});
      return;
    }
    std::lock_guard<std::mutex> caller(run_mutex_);
    using Fn = std::remove_reference_t<F>;
    job_ctx_ = const_cast<void*>(static_cast<const void*>(&f));
    job_ = [](void* ctx, std::size_t part, std::size_t n) { (*static_cast<Fn*>(ctx))(part, n); };
    remaining_.store(parts - 1);
    generation_.fetch_add(1);  // publishes job_ and job_ctx_
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      sleep_cv_.notify_all();
    }
    f(std::size_t{0}, parts);
    for (unsigned spins = 0; remaining_.load() != 0; ++spins) {
      if (spins < 100000) cpu_relax();
      else std::this_thread::yield();
    }
  }

 private:
  void worker_loop(std::size_t part) {
    std::uint64_t seen = 0;
    for (;;) {
      std::uint64_t g = generation_.load();
      if (g == seen) {
        // Spin for a short while, then sleep.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
        unsigned n = 0;
        while ((g = generation_.load()) == seen) {
          cpu_relax();
          if ((++n & 63u) == 0 && std::chrono::steady_clock::now() > deadline) break;
        }
        if (g == seen) {
          std::unique_lock<std::mutex> lock(sleep_mutex_);
          sleepers_.fetch_add(1);
          sleep_cv_.wait(lock, [&] { return (g = generation_.load()) != seen; });
          sleepers_.fetch_sub(1);
        }
      }
      seen = g;
      if (stop_.load()) return;
      job_(job_ctx_, part, workers_.size() + 1);
      remaining_.fetch_sub(1);
    }
  }

  static constexpr int spin_us = 200;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;
  std::mutex sleep_mutex_;
  std::condition_variable sleep_cv_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<std::size_t> remaining_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  void (*job_)(void*, std::size_t, std::size_t) = nullptr;
  void* job_ctx_ = nullptr;
};

/// The process-wide pool with `threads` threads (0 = all cores), created on first use and
/// shared by every model asking for the same count, so that a draft and a target never
/// keep two sets of spinning workers.
inline std::shared_ptr<thread_pool> shared_pool(std::size_t threads) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  static std::mutex m;
  static std::map<std::size_t, std::weak_ptr<thread_pool>> pools;
  std::lock_guard<std::mutex> lock(m);
  auto& slot = pools[threads];
  std::shared_ptr<thread_pool> p = slot.lock();
  if (!p) slot = p = std::make_shared<thread_pool>(threads);
  return p;
}

/// [begin, end) of part `part` of `parts` over n items, boundaries rounded to multiples
/// of `align` (the last part takes the rest).
inline void split_range(std::size_t n, std::size_t part, std::size_t parts, std::size_t align, std::size_t& begin,
                        std::size_t& end) noexcept {
  const std::size_t units = (n + align - 1) / align;
  begin = std::min(n, units * part / parts * align);
  end = part + 1 == parts ? n : std::min(n, units * (part + 1) / parts * align);
}

}  // namespace specdec::cpu::detail
