#pragma once
/// \file backend/cpu/detail/thread_pool.hpp
/// A small persistent thread pool for the CPU transformer (no OpenMP): `run(f)` calls
/// f(part, parts) exactly once for every part in [0, parts), parts = size(), and returns
/// when all are done. Parts are claimed dynamically: the caller claims parts too, so if a
/// worker is descheduled (a shared, oversubscribed machine) the caller simply does its
/// part as well instead of waiting for it. Which thread runs a part never changes what
/// the part computes, so results do not depend on scheduling. Workers spin briefly on the
/// ticket (the gaps between the products of one forward are a few microseconds) and then
/// block on a condition variable, so an idle pool costs no CPU.
///
/// Synchronisation (TSan-clean by construction): the job (function, context) is written
/// before a seq_cst store of `ticket_` = (generation, parts, next part) publishes it; a
/// thread reads the job only after claiming a part of that generation by CAS on the
/// ticket, and signals the part's end by incrementing `done_`; the caller returns (and
/// may overwrite the job) only after `done_` reached `parts`. A worker going to sleep
/// increments `sleepers_` under the mutex before re-checking the ticket, and the caller
/// notifies under the mutex whenever it sees a sleeper, so no wake-up is lost. Callers
/// are serialised by `run_mutex_`, so one pool can be shared by several models
/// (`shared_pool`) and used from several threads.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "specdec/backend/cpu/detail/aligned.hpp"
#include "specdec/backend/cpu/detail/shared_instance.hpp"
#include "specdec/error.hpp"

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
  /// Most threads a pool runs (the caller included): a job's part count must fit the
  /// ticket's 12-bit fields.
  static constexpr std::size_t max_threads = 4095;

  /// A pool running jobs on `threads` threads in total (the caller plus threads - 1
  /// workers); threads == 0 means std::thread::hardware_concurrency(). Throws
  /// `invalid_argument` above `max_threads` (before allocating anything), and
  /// `thread_start_error` naming how many threads did start when the system refuses one
  /// (after stopping and joining those: nothing is left waiting).
  ///
  /// ```cpp
  /// specdec::cpu::detail::thread_pool pool(2);
  /// pool.run([](std::size_t part, std::size_t parts) { /* part in [0, parts) */ });
  /// ```
  explicit thread_pool(std::size_t threads)
      : thread_pool(threads, [](auto&& body) { return std::thread(std::forward<decltype(body)>(body)); }) {}

  /// As above, with each worker started by `start(body)`, which returns the std::thread
  /// running `body` or throws (tests inject a failing start through it).
  template <class Start>
  thread_pool(std::size_t threads, Start&& start) {
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    if (threads > max_threads) {
      throw invalid_argument("thread_pool: threads = " + std::to_string(threads) + "; expected at most " +
                             std::to_string(max_threads) + " (0 = all cores)");
    }
    workers_.reserve(threads - 1);
    try {
      for (std::size_t i = 1; i < threads; ++i) workers_.push_back(start([this] { worker_loop(); }));
    } catch (const std::exception& e) {
      // The workers already started wait on sleep_cv_: stop and join them before the
      // members they use are destroyed.
      const std::size_t started = workers_.size() + 1;
      stop_workers();
      throw thread_start_error("thread_pool: could start only " + std::to_string(started) + " of " +
                               std::to_string(threads) + " threads (the caller's included): " + e.what() +
                               "; expected the system to allow " + std::to_string(threads) +
                               " threads (ask for fewer threads)");
    }
  }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;
  ~thread_pool() { stop_workers(); }

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
    done_.store(0);
    const std::uint64_t gen = ++generation_;
    ticket_.store(pack(gen, parts, 0));  // publishes the job
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      sleep_cv_.notify_all();
    }
    work_on(gen);
    for (unsigned spins = 0; done_.load() != parts; ++spins) {
      if (spins < 4096) cpu_relax();
      else std::this_thread::yield();
    }
  }

 private:
  // ticket = generation (40 bits) | parts (12 bits) | next unclaimed part (12 bits)
  static std::uint64_t pack(std::uint64_t gen, std::size_t parts, std::size_t next) noexcept {
    return (gen << 24) | (std::uint64_t(parts) << 12) | std::uint64_t(next);
  }
  static std::uint64_t gen_of(std::uint64_t t) noexcept { return t >> 24; }

  /// Wakes every worker with the stop flag set and joins them.
  void stop_workers() noexcept {
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      stop_.store(true);
      ticket_.store(pack(++generation_, 0, 0));
    }
    sleep_cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  /// Claims and runs parts of generation `gen` until none is left.
  void work_on(std::uint64_t gen) {
    std::uint64_t t = ticket_.load();
    for (;;) {
      const std::size_t parts = std::size_t((t >> 12) & 0xfffu), next = std::size_t(t & 0xfffu);
      if (gen_of(t) != gen || next >= parts) return;
      if (ticket_.compare_exchange_weak(t, t + 1)) {
        job_(job_ctx_, next, parts);
        done_.fetch_add(1);
        t = ticket_.load();
      }
    }
  }

  void worker_loop() {
    std::uint64_t seen = 0;
    for (;;) {
      std::uint64_t g = gen_of(ticket_.load());
      if (g == seen) {
        // Spin for a short while, then sleep.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
        unsigned n = 0;
        while ((g = gen_of(ticket_.load())) == seen) {
          cpu_relax();
          if ((++n & 63u) == 0 && std::chrono::steady_clock::now() > deadline) break;
        }
        if (g == seen) {
          std::unique_lock<std::mutex> lock(sleep_mutex_);
          sleepers_.fetch_add(1);
          sleep_cv_.wait(lock, [&] { return (g = gen_of(ticket_.load())) != seen; });
          sleepers_.fetch_sub(1);
        }
      }
      seen = g;
      if (stop_.load()) return;
      work_on(g);
    }
  }

  static constexpr int spin_us = 200;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;
  std::mutex sleep_mutex_;
  std::condition_variable sleep_cv_;
  std::uint64_t generation_ = 0;  ///< written by callers (under run_mutex_) and the destructor only
  std::atomic<std::uint64_t> ticket_{0};
  std::atomic<std::size_t> done_{0};
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
  return shared_instance<thread_pool>(threads, [&] { return std::make_shared<thread_pool>(threads); });
}

/// [begin, end) of part `part` of `parts` over n items, boundaries rounded to multiples
/// of `align` (the last part takes the rest).
inline void split_range(std::size_t n, std::size_t part, std::size_t parts, std::size_t align, std::size_t& begin,
                        std::size_t& end) noexcept {
  const std::size_t units = (n + align - 1) / align;
  begin = std::min(n, units * part / parts * align);
  end = part + 1 == parts ? n : std::min(n, units * (part + 1) / parts * align);
}

/// Units [0, n) of one pool job, shared out among its `parts` parts. Each part owns the
/// contiguous slice split_range gives it. Static (`chunk` 0): a part computes exactly its
/// slice. Balanced (`chunk` > 0): a part takes `chunk` units at a time from the front of
/// its slice, and when that is empty takes chunks from the back of the other parts'
/// slices. So a thread that runs slower for a while (on a shared host, a busy neighbour
/// on its physical core) hands work to the others instead of making them wait at the end
/// of the product, while each thread still streams one long contiguous range. Which part
/// computes a unit never changes what the unit computes.
///
/// The caller calls `reset` before the pool publishes the job (the publishing store
/// orders it before every part's `run`).
class work_split {
 public:
  void reset(std::size_t n, std::size_t parts, std::size_t chunk) {
    if (slots_.size() < parts) slots_ = std::vector<slot>(parts);
    parts_ = parts;
    chunk_ = chunk;
    for (std::size_t p = 0; p < parts; ++p) {
      std::size_t b, e;
      split_range(n, p, parts, 1, b, e);
      slots_[p].range.store(pack(b, e), std::memory_order_relaxed);
    }
  }

  [[nodiscard]] bool chunked() const noexcept { return chunk_ != 0; }

  /// Calls body(begin, end) for part `part`'s share of the units, front to back within
  /// each of its own chunks.
  template <class Body>
  void run(std::size_t part, Body&& body) {
    std::size_t b, e;
    if (chunk_ == 0) {
      unpack(slots_[part].range.load(std::memory_order_relaxed), b, e);
      if (b < e) body(b, e);
      return;
    }
    while (take(part, /*front=*/true, b, e)) body(b, e);
    for (std::size_t i = 1; i < parts_; ++i)
      while (take((part + i) % parts_, /*front=*/false, b, e)) body(b, e);
  }

 private:
  static std::uint64_t pack(std::size_t front, std::size_t back) noexcept {
    return (std::uint64_t(front) << 32) | std::uint64_t(back);
  }
  static void unpack(std::uint64_t v, std::size_t& front, std::size_t& back) noexcept {
    front = std::size_t(v >> 32), back = std::size_t(v & 0xffffffffu);
  }
  /// Claims `chunk_` units (or what is left) from the front or the back of slice p.
  bool take(std::size_t p, bool front, std::size_t& b, std::size_t& e) noexcept {
    std::atomic<std::uint64_t>& r = slots_[p].range;
    std::uint64_t v = r.load(std::memory_order_relaxed);
    for (;;) {
      std::size_t f, k;
      unpack(v, f, k);
      if (f >= k) return false;
      const std::size_t c = std::min(chunk_, k - f);
      b = front ? f : k - c;
      e = b + c;
      if (r.compare_exchange_weak(v, front ? pack(e, k) : pack(f, b), std::memory_order_relaxed)) return true;
    }
  }
  struct alignas(cache_line) slot {  // one cache line each: owners claim without sharing a line
    std::atomic<std::uint64_t> range{0};  ///< front << 32 | back of the unclaimed units
  };
  std::vector<slot> slots_;
  std::size_t parts_ = 0, chunk_ = 0;
};

}  // namespace specdec::cpu::detail
