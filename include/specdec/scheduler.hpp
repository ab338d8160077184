#pragma once
/// \file scheduler.hpp
/// Length-aware scheduling of a batched decoder (Zheng et al. 2023, "Response Length
/// Perception and Sequence Scheduling"): requests carry a predicted response length; a
/// scheduler orders the waiting queue (FIFO, or grouped by predicted length); `simulate`
/// admits requests into a batched engine under a batch-size cap and a KV-memory budget,
/// handles sequences that outrun their prediction, and reports throughput, latency and
/// wasted slot-steps.
///
/// ```cpp
/// auto bm = specdec::testing::markov_batch({.vocab = 8});
/// specdec::batched_autoregressive_decoder engine(bm);
/// std::vector<specdec::scheduled_request> reqs = ...;  // request + predicted_length
/// specdec::scheduler_options o{.mode = specdec::batching_mode::static_batching, .max_batch = 8,
///                              .memory_budget_bytes = 1 << 20, .kv_bytes_per_token = 1024};
/// auto fifo = specdec::simulate(engine, specdec::fifo_scheduler{}, reqs, o);
/// auto la = specdec::simulate(engine, specdec::length_aware_scheduler{}, reqs, o);
/// std::printf("%zu vs %zu wasted slot-steps\n", fifo.wasted_slot_steps, la.wasted_slot_steps);
/// ```
///
/// ## Memory model
/// A sequence holding n tokens costs `kv_bytes_per_token * n` bytes (for the CPU backend
/// `2 * n_layers * kv_dim * sizeof(float)` per model; for speculative decoding add the
/// draft's). On admission a sequence reserves `prompt + predicted` tokens, where
/// `predicted` is its predicted remaining generation clamped to [min(g, remaining budget),
/// remaining budget] and g is the engine's `max_step_growth()`. The sum of reservations
/// never exceeds `memory_budget_bytes`, and before every step each sequence's tokens plus
/// the growth of one step fit in its reservation; so the KV memory in use, even at its peak
/// inside a step, never exceeds the budget. A request that cannot fit alone
/// (`prompt + max_new_tokens` tokens) is rejected up front.
///
/// ## Under-prediction
/// A sequence whose next step could outgrow its reservation has run past its prediction.
/// Its new total prediction is `max(generated + g, repredict_factor * old prediction)`
/// (capped at max_new_tokens). Then, per `under_prediction_policy`:
/// - `preempt_and_requeue`: it leaves the batch (its cache is freed) and goes back to the
///   queue as a new request whose prompt is the original prompt plus the tokens generated
///   so far, with the remaining token budget and the re-predicted remaining length; its
///   final output is the concatenation. (Greedy output is unchanged by preemption;
///   sampled output stays a valid sample but uses a fresh random stream, and a stop
///   sequence straddling the preemption point is not detected.)
/// - `continue_running`: it keeps running with its reservation grown to the re-predicted
///   length; if that does not fit in the budget, the most recently admitted other
///   sequences are preempted and requeued (as above) until it fits.
///
/// ## Batching modes and wasted slot-steps
/// - `static_batching`: a batch is formed only when the previous one has completely
///   finished (as in padded batch generation): the batch runs until its longest sequence
///   ends. Wasted slot-steps = sum over steps of (sequences the batch was formed with -
///   sequences still running), i.e. slots held by finished (or preempted) sequences that
///   are not released until the batch ends. Grouping similar predicted lengths recovers
///   exactly this waste, which is what Zheng et al. measure.
/// - `continuous`: sequences join whenever a slot and memory are free and leave as soon as
///   they finish. Wasted slot-steps = sum over steps of (max_batch - sequences running)
///   while requests are waiting in the queue, i.e. capacity left idle although there was
///   work (because of the memory budget or head-of-line blocking).
/// With `independent_batch` a step costs about the same per sequence, so waste shows up in
/// tokens per step, not in tokens/s; with a true batched forward (weights read once per
/// step) the step cost is nearly flat in the batch size and tokens per step becomes tokens/s.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/batch_decoder.hpp"
#include "specdec/error.hpp"

namespace specdec {

/// A request with its predicted response length (generated tokens).
///
/// ```cpp
/// specdec::scheduled_request r{.request = {.prompt = {1, 450}, .options = {.max_new_tokens = 64}, .id = 0},
///                              .predicted_length = 40};
/// ```
struct scheduled_request {
  batch_request request;
  double predicted_length = 0.0;  ///< predicted generated tokens (>= 0)
  std::size_t arrival_step = 0;   ///< the request may join no earlier than this step
};

/// How batches are formed; see the file comment.
enum class batching_mode { static_batching, continuous };
/// What happens to a sequence that runs past its predicted length; see the file comment.
enum class under_prediction_policy { preempt_and_requeue, continue_running };

[[nodiscard]] inline const char* to_string(batching_mode m) noexcept {
  return m == batching_mode::static_batching ? "static" : "continuous";
}
[[nodiscard]] inline const char* to_string(under_prediction_policy p) noexcept {
  return p == under_prediction_policy::preempt_and_requeue ? "preempt_and_requeue" : "continue_running";
}

/// Knobs of `simulate`.
///
/// ```cpp
/// specdec::scheduler_options o{.max_batch = 16, .memory_budget_bytes = 256e6,
///                              .kv_bytes_per_token = 2 * 6 * 128 * 4};
/// o.validate();
/// ```
struct scheduler_options {
  batching_mode mode = batching_mode::continuous;
  std::size_t max_batch = 16;           ///< sequences in the batch at most
  double memory_budget_bytes = 1e9;     ///< KV memory for all sequences of the batch
  double kv_bytes_per_token = 1.0;      ///< KV bytes one cached token costs (all models)
  under_prediction_policy on_under_prediction = under_prediction_policy::preempt_and_requeue;
  double repredict_factor = 2.0;        ///< an outrun prediction L becomes factor * L (> 1)

  void validate() const {
    if (max_batch == 0) throw invalid_argument("scheduler_options.max_batch must be >= 1, got 0");
    if (!(memory_budget_bytes > 0.0) || !std::isfinite(memory_budget_bytes))
      throw invalid_argument("scheduler_options.memory_budget_bytes must be finite and > 0, got " +
                             std::to_string(memory_budget_bytes));
    if (!(kv_bytes_per_token > 0.0) || !std::isfinite(kv_bytes_per_token))
      throw invalid_argument("scheduler_options.kv_bytes_per_token must be finite and > 0, got " +
                             std::to_string(kv_bytes_per_token));
    if (!(repredict_factor > 1.0) || !std::isfinite(repredict_factor))
      throw invalid_argument("scheduler_options.repredict_factor must be finite and > 1, got " +
                             std::to_string(repredict_factor));
  }
};

/// A waiting request as a scheduler sees it.
struct queued_request {
  std::size_t index = 0;            ///< position of the request in the simulated set
  std::size_t arrival_order = 0;    ///< order of first arrival (FIFO key)
  std::size_t prompt_tokens = 0;    ///< including tokens generated before a preemption
  double predicted_remaining = 0.0; ///< predicted tokens still to generate
};

/// `s.order(queue)` sorts the waiting requests into admission order (the simulation
/// admits from the front while the batch cap and the memory budget allow, and stops at
/// the first that does not fit); `s.name()` names the scheduler.
///
/// ```cpp
/// struct shortest_prompt_first {
///   void order(std::span<specdec::queued_request> q) const {
///     std::ranges::stable_sort(q, {}, &specdec::queued_request::prompt_tokens);
///   }
///   std::string_view name() const { return "shortest_prompt"; }
/// };
/// ```
template <class S>
concept batch_scheduler = requires(const S& s, std::span<queued_request> q) {
  s.order(q);
  { s.name() } -> std::convertible_to<std::string_view>;
};

/// First come, first served.
///
/// ```cpp
/// auto report = specdec::simulate(engine, specdec::fifo_scheduler{}, requests, options);
/// ```
struct fifo_scheduler {
  void order(std::span<queued_request> q) const {
    std::stable_sort(q.begin(), q.end(),
                     [](const queued_request& a, const queued_request& b) { return a.arrival_order < b.arrival_order; });
  }
  [[nodiscard]] std::string_view name() const noexcept { return "fifo"; }
};

/// Groups requests of similar predicted remaining length: shortest predicted first,
/// by buckets of `bucket_width` tokens (0 = exact order), FIFO within a bucket. Under
/// static batching consecutive admissions form a batch, so batches hold similar lengths.
///
/// ```cpp
/// specdec::length_aware_scheduler s{.bucket_width = 16};
/// s.validate();
/// ```
struct length_aware_scheduler {
  double bucket_width = 0.0;  ///< tokens per bucket; 0 = sort by the exact prediction

  void validate() const {
    if (!(bucket_width >= 0.0) || !std::isfinite(bucket_width))
      throw invalid_argument("length_aware_scheduler.bucket_width must be finite and >= 0, got " +
                             std::to_string(bucket_width));
  }
  [[nodiscard]] double key(double predicted) const noexcept {
    return bucket_width > 0.0 ? std::floor(predicted / bucket_width) : predicted;
  }
  void order(std::span<queued_request> q) const {
    std::stable_sort(q.begin(), q.end(), [&](const queued_request& a, const queued_request& b) {
      const double ka = key(a.predicted_remaining), kb = key(b.predicted_remaining);
      if (ka != kb) return ka < kb;
      return a.arrival_order < b.arrival_order;
    });
  }
  [[nodiscard]] std::string_view name() const noexcept { return "length_aware"; }
};

/// What `simulate` drives: a batched decoder with continuous batching
/// (`batched_autoregressive_decoder`, `batched_speculative_decoder`).
template <class E>
concept batch_engine = requires(E& e, const E& ce, batch_request r, request_id id) {
  e.submit(std::move(r));
  { e.step() } -> std::convertible_to<std::size_t>;
  { e.take_results() } -> std::same_as<std::vector<batch_result>>;
  { e.preempt(id) } -> std::same_as<batch_result>;
  { ce.generated(id) } -> std::convertible_to<std::size_t>;
  { ce.active_count() } -> std::convertible_to<std::size_t>;
  { ce.max_step_growth() } -> std::convertible_to<std::size_t>;
  { ce.context_length() } -> std::convertible_to<std::size_t>;
  { ce.idle() } -> std::convertible_to<bool>;
};

/// What `simulate` measured.
struct simulation_report {
  std::string scheduler;
  batching_mode mode = batching_mode::continuous;
  std::size_t requests = 0;
  std::size_t steps = 0;                 ///< engine steps
  std::size_t tokens = 0;                ///< generated tokens, all requests
  std::size_t occupied_slot_steps = 0;   ///< sum over steps of sequences running
  std::size_t wasted_slot_steps = 0;     ///< see the file comment (depends on the mode)
  std::size_t preemptions = 0;
  std::size_t max_batch_seen = 0;
  double seconds = 0.0;                  ///< wall time of the whole simulation
  double tokens_per_second = 0.0;
  double tokens_per_step = 0.0;
  double p50_latency_steps = 0.0, p95_latency_steps = 0.0;      ///< arrival -> finished
  double p50_latency_seconds = 0.0, p95_latency_seconds = 0.0;
  double peak_reserved_bytes = 0.0;      ///< largest sum of reservations
  double peak_used_bytes = 0.0;          ///< largest KV bound in use (tokens + one step's growth)
  std::vector<batch_result> results;     ///< one per request, in the input order (outputs joined across preemptions)
  std::vector<double> step_seconds;      ///< wall time of each engine step
  std::vector<std::size_t> step_batch;   ///< sequences running in each engine step
};

namespace detail {
/// Nearest-rank percentile (q in [0, 1]) of unsorted values; 0 for none.
[[nodiscard]] inline double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = std::ceil(q * static_cast<double>(v.size()));
  const std::size_t i = rank <= 1.0 ? 0 : static_cast<std::size_t>(rank) - 1;
  return v[std::min(i, v.size() - 1)];
}
}  // namespace detail

/// Runs `requests` through `engine` (which must be idle) under `scheduler` and `o`, and
/// reports throughput, latency, wasted slot-steps, memory peaks and every request's
/// output. `requests` are in arrival order (non-decreasing `arrival_step`). Deterministic in everything but the wall times. Throws `invalid_argument` for
/// bad options, duplicate ids, or a request that cannot fit in the budget alone.
template <batch_engine E, batch_scheduler S>
simulation_report simulate(E& engine, const S& scheduler, const std::vector<scheduled_request>& requests,
                           const scheduler_options& o) {
  o.validate();
  if constexpr (requires { scheduler.validate(); }) scheduler.validate();
  if (!engine.idle()) throw invalid_argument("simulate: the engine is not idle; expected no pending or active request");
  using clock = std::chrono::steady_clock;
  const std::size_t growth = std::max<std::size_t>(1, static_cast<std::size_t>(engine.max_step_growth()));
  const double budget_tokens = o.memory_budget_bytes / o.kv_bytes_per_token;
  const std::size_t ctx = static_cast<std::size_t>(engine.context_length());

  struct entry {
    batch_request original;
    std::vector<token_id> prompt;   // original prompt + tokens generated before preemptions
    std::size_t generated_before = 0;
    double predicted_total = 0.0;   // predicted generated tokens of the whole request
    std::size_t arrival_step = 0;
    bool eligible_seen = false;
    clock::time_point eligible_at{};
    batch_result merged;
    bool done = false;
  };
  struct running {
    std::size_t index;
    std::size_t reserved_tokens;   // prompt + predicted generation
    std::size_t predicted_tokens;  // generation this admission may do without re-prediction
    std::size_t admit_order;
  };

  std::vector<entry> e(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const auto& r = requests[i];
    for (std::size_t j = 0; j < i; ++j)
      if (requests[j].request.id == r.request.id)
        throw invalid_argument("simulate: request id " + std::to_string(r.request.id) + " appears twice");
    if (!(r.predicted_length >= 0.0) || !std::isfinite(r.predicted_length))
      throw invalid_argument("simulate: request " + std::to_string(r.request.id) +
                             " has predicted_length " + std::to_string(r.predicted_length) + "; expected finite and >= 0");
    if (i > 0 && r.arrival_step < requests[i - 1].arrival_step)
      throw invalid_argument("simulate: request " + std::to_string(i) + " arrives at step " +
                             std::to_string(r.arrival_step) + ", before request " + std::to_string(i - 1) +
                             "; expected requests in arrival order");
    const double need = static_cast<double>(r.request.prompt.size() + r.request.options.max_new_tokens);
    if (need > budget_tokens)
      throw invalid_argument("simulate: request " + std::to_string(r.request.id) + " needs " +
                             std::to_string(need * o.kv_bytes_per_token) + " bytes (prompt + max_new_tokens) but "
                             "scheduler_options.memory_budget_bytes is " + std::to_string(o.memory_budget_bytes) +
                             "; expected every request to fit alone");
    e[i].original = r.request;
    e[i].prompt = r.request.prompt;
    e[i].predicted_total = r.predicted_length;
    e[i].arrival_step = r.arrival_step;
    e[i].merged.id = r.request.id;
  }

  simulation_report rep;
  rep.scheduler = std::string(scheduler.name());
  rep.mode = o.mode;
  rep.requests = requests.size();
  std::vector<std::size_t> waiting(requests.size());
  for (std::size_t i = 0; i < waiting.size(); ++i) waiting[i] = i;
  std::vector<running> active;
  std::size_t reserved_total = 0;
  std::size_t admit_counter = 0;
  std::size_t static_width = 0;
  std::size_t step = 0;
  std::size_t finished = 0;
  std::vector<double> lat_steps, lat_seconds;
  const auto t0 = clock::now();

  auto remaining_max = [&](std::size_t i) { return e[i].original.options.max_new_tokens - e[i].generated_before; };
  // Most tokens sequence i (g generated since it joined) can add in the next step: a
  // sequence at the context edge stops without growing.
  auto step_growth = [&](std::size_t i, std::size_t g) -> std::size_t {
    const std::size_t len = e[i].prompt.size() + g;
    if (len >= ctx) return 0;
    return std::min({growth, remaining_max(i) - g, ctx - len});
  };
  auto plan = [&](std::size_t i, std::size_t& predicted_tokens) {
    const std::size_t rem = remaining_max(i);
    const double pr = std::ceil(e[i].predicted_total) - static_cast<double>(e[i].generated_before);
    std::size_t p = pr <= 0.0 ? 0 : static_cast<std::size_t>(std::min(pr, static_cast<double>(rem)));
    p = std::clamp(p, std::min(growth, rem), rem);
    predicted_tokens = p;
    return e[i].prompt.size() + p;
  };
  auto repredict = [&](std::size_t i, std::size_t generated_now) {
    const double total_now = static_cast<double>(e[i].generated_before + generated_now);
    e[i].predicted_total =
        std::min(static_cast<double>(e[i].original.options.max_new_tokens),
                 std::max(total_now + static_cast<double>(growth), std::ceil(o.repredict_factor * e[i].predicted_total)));
  };
  auto merge_partial = [&](std::size_t i, batch_result&& part) {
    auto& m = e[i].merged;
    m.result.tokens.insert(m.result.tokens.end(), part.result.tokens.begin(), part.result.tokens.end());
    m.result.stop_reason = part.result.stop_reason;
    m.result.stats.merge(part.result.stats);
    m.result.stats.prompt_tokens = e[i].original.prompt.size();
    m.timing.steps_in_batch += part.timing.steps_in_batch;
    m.timing.max_batch_size = std::max(m.timing.max_batch_size, part.timing.max_batch_size);
  };
  // Takes sequence a out of the engine and puts it back in the queue with its progress.
  auto requeue = [&](std::size_t pos) {
    const running a = active[pos];
    active.erase(active.begin() + static_cast<std::ptrdiff_t>(pos));
    reserved_total -= a.reserved_tokens;
    batch_result part = engine.preempt(e[a.index].original.id);
    const std::size_t n = part.result.tokens.size();
    e[a.index].prompt.insert(e[a.index].prompt.end(), part.result.tokens.begin(), part.result.tokens.end());
    e[a.index].generated_before += n;
    merge_partial(a.index, std::move(part));
    waiting.push_back(a.index);
    ++rep.preemptions;
  };

  while (finished < requests.size()) {
    // ---- admission ----
    const bool may_admit = o.mode == batching_mode::continuous || active.empty();
    if (o.mode == batching_mode::static_batching && active.empty()) static_width = 0;
    std::vector<queued_request> q;
    for (std::size_t i : waiting) {
      if (e[i].arrival_step > step) continue;
      if (!e[i].eligible_seen) {
        e[i].eligible_seen = true;
        e[i].eligible_at = clock::now();
      }
      q.push_back({i, i, e[i].prompt.size(),
                   std::max(0.0, e[i].predicted_total - static_cast<double>(e[i].generated_before))});
    }
    if (may_admit && !q.empty()) {
      scheduler.order(q);
      for (const auto& c : q) {
        if (active.size() >= o.max_batch) break;
        std::size_t predicted_tokens = 0;
        const std::size_t need = plan(c.index, predicted_tokens);
        if (static_cast<double>(reserved_total + need) > budget_tokens) break;
        batch_request r = e[c.index].original;
        r.prompt = e[c.index].prompt;
        r.options.max_new_tokens = remaining_max(c.index);
        engine.submit(std::move(r));
        active.push_back({c.index, need, predicted_tokens, admit_counter++});
        reserved_total += need;
        ++static_width;
        waiting.erase(std::find(waiting.begin(), waiting.end(), c.index));
      }
    }
    if (active.empty()) {
      if (waiting.empty()) break;  // unreachable: finished < size implies work left
      ++step;                      // nothing has arrived yet: an idle step
      continue;
    }

    // ---- under-prediction, before the step ----
    for (std::size_t pos = 0; pos < active.size();) {
      running& a = active[pos];
      const std::size_t g = engine.generated(e[a.index].original.id);
      if (g + step_growth(a.index, g) <= a.predicted_tokens) {
        ++pos;
        continue;
      }
      repredict(a.index, g);
      if (o.on_under_prediction == under_prediction_policy::preempt_and_requeue) {
        requeue(pos);
        continue;
      }
      // continue_running: grow the reservation, preempting the youngest others if needed.
      const std::size_t idx = a.index;
      std::size_t predicted_tokens = 0;
      const std::size_t old_reserved = a.reserved_tokens;
      // Plan relative to this admission: generated_before is unchanged while it runs.
      const std::size_t need = plan(idx, predicted_tokens);
      while (static_cast<double>(reserved_total - old_reserved + need) > budget_tokens) {
        std::size_t youngest = active.size();
        for (std::size_t j = 0; j < active.size(); ++j)
          if (active[j].index != idx && (youngest == active.size() || active[j].admit_order > active[youngest].admit_order))
            youngest = j;
        if (youngest == active.size()) break;  // alone: it fits (checked up front)
        requeue(youngest);
      }
      for (std::size_t j = 0; j < active.size(); ++j) {
        if (active[j].index != idx) continue;
        reserved_total = reserved_total - old_reserved + need;
        active[j].reserved_tokens = need;
        active[j].predicted_tokens = predicted_tokens;
        pos = j + 1;
        break;
      }
      // Positions before `pos` may have shifted by the preemptions: re-check from the start.
      pos = 0;
      // Every sequence re-checked now satisfies its bound, so this terminates.
    }
    if (active.empty()) continue;

    // ---- memory accounting, the step, waste ----
    std::size_t used = 0;
    for (const auto& a : active) {
      const std::size_t g = engine.generated(e[a.index].original.id);
      used += e[a.index].prompt.size() + g + step_growth(a.index, g);
    }
    rep.peak_used_bytes = std::max(rep.peak_used_bytes, static_cast<double>(used) * o.kv_bytes_per_token);
    rep.peak_reserved_bytes =
        std::max(rep.peak_reserved_bytes, static_cast<double>(reserved_total) * o.kv_bytes_per_token);
    const std::size_t running_now = active.size();
    rep.max_batch_seen = std::max(rep.max_batch_seen, running_now);
    rep.occupied_slot_steps += running_now;
    if (o.mode == batching_mode::static_batching) {
      rep.wasted_slot_steps += static_width - running_now;
    } else {
      bool someone_waits = false;
      for (std::size_t i : waiting)
        if (e[i].arrival_step <= step) someone_waits = true;
      if (someone_waits) rep.wasted_slot_steps += o.max_batch - running_now;
    }
    const auto ts = clock::now();
    engine.step();
    rep.step_seconds.push_back(std::chrono::duration<double>(clock::now() - ts).count());
    rep.step_batch.push_back(running_now);
    ++step;

    // ---- finished requests leave ----
    for (batch_result& r : engine.take_results()) {
      std::size_t pos = 0;
      while (pos < active.size() && e[active[pos].index].original.id != r.id) ++pos;
      if (pos == active.size()) throw error("simulate: the engine finished unknown request " + std::to_string(r.id));
      const std::size_t i = active[pos].index;
      reserved_total -= active[pos].reserved_tokens;
      active.erase(active.begin() + static_cast<std::ptrdiff_t>(pos));
      merge_partial(i, std::move(r));
      e[i].done = true;
      ++finished;
      const auto now = clock::now();
      auto& t = e[i].merged.timing;
      t.submitted_step = e[i].arrival_step;
      t.finished_step = step;
      t.wall_seconds = std::chrono::duration<double>(now - e[i].eligible_at).count();
      lat_steps.push_back(static_cast<double>(step - e[i].arrival_step));
      lat_seconds.push_back(t.wall_seconds);
    }
  }

  rep.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  rep.steps = rep.step_seconds.size();
  for (auto& x : e) {
    rep.tokens += x.merged.result.tokens.size();
    rep.results.push_back(std::move(x.merged));
  }
  rep.tokens_per_second = rep.seconds > 0.0 ? static_cast<double>(rep.tokens) / rep.seconds : 0.0;
  rep.tokens_per_step = rep.steps > 0 ? static_cast<double>(rep.tokens) / static_cast<double>(rep.steps) : 0.0;
  rep.p50_latency_steps = detail::percentile(lat_steps, 0.50);
  rep.p95_latency_steps = detail::percentile(lat_steps, 0.95);
  rep.p50_latency_seconds = detail::percentile(lat_seconds, 0.50);
  rep.p95_latency_seconds = detail::percentile(lat_seconds, 0.95);
  return rep;
}

}  // namespace specdec
