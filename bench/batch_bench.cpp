// specdec-batch-bench: batched decoding and length-aware scheduling on the KJV models.
//
// 1. Throughput/latency curve: for each batch size B (default 1 2 4 8 16 32), B users
//    (prompts: the first words of the held-out chapter openings, cycled) generate
//    `--tokens` tokens each with batched autoregressive decoding of kjv-big and batched
//    speculative decoding kjv-little -> kjv-big (fixed gamma 4, greedy). Reports total
//    tokens/s, tokens/s per user, and p50/p95 per-token latency (each step's wall time
//    divided by the tokens it gave each user, one sample per token).
// 2. Scheduler comparison: `--requests` requests whose max_new_tokens come from a bimodal
//    distribution (short 8..16 or long 64..96, EOS ignored so the length is known), with a
//    noisy oracle prediction (true length x U[1 - noise, 1 + noise]); FIFO vs length-aware
//    under static and continuous batching, batch cap `--max-batch`, KV budget `--budget-mb`.
//    Reports tokens/s, tokens per step, wasted slot-steps, p50/p95 latency, preemptions.
//
// The batched model is a template parameter of every run (`run_curve<BM>`,
// `run_schedulers<BM>`). The curve runs twice: `cpu::batched_transformer` (the backend's
// batched forward: one weight pass per step for all sequences, so total tokens/s grows
// with the batch) and `independent_batch<cpu::transformer>` (one transformer per
// sequence, weights read once per sequence: flat total tokens/s) as the comparison; the
// summary prints total tokens/s at each batch size over batch 1 for both. The scheduler
// comparison runs on `cpu::batched_transformer`. Section 1b is the earlier projection: a
// B-token block forward of one sequence, which reads the weights once for B rows.
//
//   specdec-batch-bench [--batches 1,2,4,8,16,32] [--tokens 32] [--requests 48]
//                       [--max-batch 8] [--budget-mb 8] [--noise 0.2] [--threads 0] [--quick]
//                       [--kv-format fp32|bf16|fp16]
//                       [--csv PATH] [--no-sd] [--no-sched] [--continue | --preempt]
//                       [--no-independent] [--repeats 3] [--short-range 8,16] [--long-range 64,96]
//                       [--long-fraction 0.5]
//
// --threads: transformer_options.threads of every transformer (0 = all cores; each
// transformer of an independent_batch has its own pool).
// --no-independent: skip the independent_batch comparison curve.
// --repeats: each curve point is the best (highest decode tokens/s) of this many runs;
// the repetitions go round all batch sizes in turn, so machine drift hits them alike.
// The curve reports total tokens/s (wall time from submission, prompt prefill included)
// and decode tokens/s (after the first step, which prefills every prompt).
// --continue / --preempt: run the scheduler comparison only with under-predicted sequences
// continuing / preempted and requeued (default: both policies, one after the other).
// --short-range MIN,MAX / --long-range MIN,MAX: the scheduler mix's two length ranges
// (default 8,16 and 64,96). --long-fraction P: each request is long with probability P
// (default 0.5; real response lengths are right-skewed, most short and a few long, which
// smaller values model).
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/batch.hpp"
#include "specdec/batch_decoder.hpp"
#include "specdec/fallback.hpp"
#include "specdec/rollback.hpp"
#include "specdec/scheduler.hpp"
#include "specdec/hybrid/scheduling.hpp"

#include "args.hpp"
#include "held_out_prompts.hpp"

namespace {

using specdec::token_id;
using clock_type = std::chrono::steady_clock;

struct options {
  std::vector<std::size_t> batches{1, 2, 4, 8, 16, 32};
  std::size_t tokens = 32;
  std::size_t requests = 48;
  std::size_t max_batch = 8;
  std::size_t threads = 0;  ///< transformer_options.threads of every transformer (0 = all cores)
  specdec::cpu::weight_format kv_format = specdec::cpu::weight_format::fp32;  ///< every model's KV cache
  double budget_mb = 8.0;
  double noise = 0.2;
  bool sd = true;
  /// Under-prediction policies the scheduler comparison runs (default: both).
  std::vector<specdec::under_prediction_policy> policies{specdec::under_prediction_policy::preempt_and_requeue,
                                                         specdec::under_prediction_policy::continue_running};
  bool sched = true;
  bool independent = true;  ///< also run the curve on independent_batch<cpu::transformer>
  std::size_t repeats = 3;  ///< curve and schedulers: best of this many runs per point
  std::array<std::size_t, 2> short_range{8, 16};  ///< scheduler mix: short lengths, inclusive
  std::array<std::size_t, 2> long_range{64, 96};   ///< scheduler mix: long lengths, inclusive
  double long_fraction = 0.5;                       ///< scheduler mix: probability of a long request
  std::string csv;  ///< written only when given
  std::string prompts = SPECDEC_MODELS_DIR "/kjv_val_openings.tsv";
};

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

double pct(std::vector<double> v, double q) { return specdec::detail::percentile(std::move(v), q); }

struct csv_row {
  std::string section, method;
  std::size_t batch = 0, requests = 0, tokens = 0, steps = 0;
  double seconds = 0, total_tps = 0, user_tps = 0, p50_token_ms = 0, p95_token_ms = 0, tokens_per_step = 0;
  /// Curve only: tokens/s after the first step (which prefills every prompt and emits the
  /// first tokens), i.e. the steady decode rate the batch size buys.
  double decode_tps = 0;
  std::size_t wasted = 0, preemptions = 0;
  double p50_latency_steps = 0, p95_latency_steps = 0, p50_latency_s = 0, p95_latency_s = 0;
};

// ---------------------------------------------------------------------------------------
// 1. The throughput / latency curve over batch sizes.
template <class Engine>
csv_row run_users(Engine& dec, const std::vector<std::vector<token_id>>& prompts, std::size_t users,
                  std::size_t tokens, const char* method) {
  for (std::size_t u = 0; u < users; ++u)
    dec.submit({.prompt = prompts[u % prompts.size()], .options = {.max_new_tokens = tokens, .stop_at_eos = false},
                .id = u});
  std::vector<double> per_token;  // seconds, one sample per generated token
  std::map<specdec::request_id, std::size_t> before;
  std::size_t total = 0, steps = 0, first_step_tokens = 0;
  double first_step_seconds = 0;
  const auto t0 = clock_type::now();
  while (!dec.idle()) {
    const auto ts = clock_type::now();
    dec.step();
    const double dt = seconds_since(ts);
    ++steps;
    if (steps == 1) {
      first_step_seconds = dt;
      for (specdec::request_id id : dec.active_ids()) first_step_tokens += dec.generated(id);
    }
    for (specdec::request_id id : dec.active_ids()) {
      const std::size_t n = dec.generated(id) - before[id];
      for (std::size_t i = 0; i < n; ++i) per_token.push_back(dt / static_cast<double>(n));
      before[id] = dec.generated(id);
    }
    for (const auto& r : dec.take_results()) {
      const std::size_t n = r.result.tokens.size() - before[r.id];
      for (std::size_t i = 0; i < n; ++i) per_token.push_back(dt / static_cast<double>(n));
      total += r.result.tokens.size();
    }
  }
  csv_row row;
  row.section = "curve";
  row.method = method;
  row.batch = users;
  row.requests = users;
  row.tokens = total;
  row.steps = steps;
  row.seconds = seconds_since(t0);
  row.total_tps = static_cast<double>(total) / row.seconds;
  const double decode_seconds = row.seconds - first_step_seconds;
  row.decode_tps = decode_seconds > 0 ? static_cast<double>(total - first_step_tokens) / decode_seconds : 0.0;
  row.user_tps = row.total_tps / static_cast<double>(users);
  row.p50_token_ms = 1e3 * pct(per_token, 0.50);
  row.p95_token_ms = 1e3 * pct(per_token, 0.95);
  row.tokens_per_step = static_cast<double>(total) / static_cast<double>(steps);
  return row;
}

template <class BM, class MakeTarget, class MakeDraft>
std::vector<csv_row> run_curve(MakeTarget make_target, MakeDraft make_draft, const options& o,
                               const std::vector<std::vector<token_id>>& prompts, const std::string& model) {
  BM target = make_target();
  BM draft = make_draft();
  {  // warm-up (page faults on the weights, thread pool start-up), not reported
    specdec::batched_autoregressive_decoder ar(target);
    (void)run_users(ar, prompts, o.batches.front(), o.tokens, "warm-up");
  }
  // Repetitions outermost, batch sizes inside: a slow period of the shared machine then
  // hits every batch size alike instead of one point of the curve. Each point keeps its
  // best (highest decode tokens/s) repetition.
  const std::size_t per_batch = o.sd ? 2 : 1;
  std::vector<csv_row> rows(o.batches.size() * per_batch);
  auto keep = [](csv_row& best, csv_row r, bool first) {
    if (first || r.decode_tps > best.decode_tps) best = std::move(r);
  };
  for (std::size_t rep = 0; rep < o.repeats; ++rep) {
    for (std::size_t bi = 0; bi < o.batches.size(); ++bi) {
      const std::size_t b = o.batches[bi];
      specdec::batched_autoregressive_decoder ar(target);
      keep(rows[bi * per_batch], run_users(ar, prompts, b, o.tokens, "batched_ar"), rep == 0);
      if (o.sd) {
        specdec::batched_speculative_decoder sd(draft, target, specdec::fixed_gamma{.gamma = 4},
                                                specdec::greedy_match{});
        keep(rows[bi * per_batch + 1], run_users(sd, prompts, b, o.tokens, "batched_sd_gamma4"), rep == 0);
      }
    }
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    csv_row& r = rows[i];
    r.method = model + (i % per_batch == 0 ? "/ar" : "/sd_gamma4");
    std::printf("%-26s B=%2zu  %7.1f tok/s total (%7.1f decode)  %6.1f tok/s/user  per-token p50 %7.2f ms "
                "p95 %7.2f ms  %5.2f tok/step\n",
                r.method.c_str(), r.batch, r.total_tps, r.decode_tps, r.user_tps, r.p50_token_ms, r.p95_token_ms,
                r.tokens_per_step);
  }
  std::fflush(stdout);
  return rows;
}

// ---------------------------------------------------------------------------------------
// 1b. Projection for a true batched forward: one sequence's B-token block forward reads
// each weight once for B rows, like a batched step over B sequences would (attention
// differs: here the rows share one cache). B / t(B-token block) estimates the total
// tokens/s of a batched kernel of the current single-thread kernels.
std::vector<csv_row> run_projection(const std::shared_ptr<const specdec::cpu::checkpoint>& ck, const options& o) {
  specdec::cpu::transformer m(ck, specdec::cpu::transformer_options{.threads = o.threads, .kv_format = o.kv_format});
  std::vector<token_id> ctx(24), block;
  for (std::size_t i = 0; i < ctx.size(); ++i) ctx[i] = static_cast<token_id>(1 + (i * 37) % 2000);
  m.forward(ctx);
  std::vector<csv_row> rows;
  double t1 = 0.0;
  for (std::size_t b : o.batches) {
    block.assign(b, 0);
    for (std::size_t i = 0; i < b; ++i) block[i] = static_cast<token_id>(3 + (i * 101) % 2000);
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) {
      const auto ts = clock_type::now();
      m.forward(block);
      best = std::min(best, seconds_since(ts));
      m.truncate(ctx.size());
    }
    if (b == o.batches.front()) t1 = best / static_cast<double>(b);
    csv_row row;
    row.section = "projection";
    row.method = "block_forward_as_batch";
    row.batch = b;
    row.seconds = best;
    row.total_tps = static_cast<double>(b) / best;
    row.user_tps = 1.0 / best;
    row.p50_token_ms = row.p95_token_ms = 1e3 * best;
    row.tokens_per_step = static_cast<double>(b);
    std::printf("projection        B=%2zu  %7.1f tok/s total  %6.1f tok/s/user  step %6.2f ms  (%.2fx batch %zu)\n", b,
                row.total_tps, row.user_tps, 1e3 * best, row.total_tps * t1, o.batches.front());
    rows.push_back(row);
  }
  return rows;
}

// ---------------------------------------------------------------------------------------
// 2. FIFO vs length-aware scheduling on a bimodal length mix.
template <class BM, class MakeTarget>
std::vector<csv_row> run_schedulers(MakeTarget make_target, const options& o,
                                    const std::vector<std::vector<token_id>>& prompts, double kv_bytes_per_token) {
  std::mt19937_64 rng(2023);
  std::vector<specdec::scheduled_request> reqs;
  for (std::size_t i = 0; i < o.requests; ++i) {
    // The default half-and-half mix keeps its original draw (rng() % 2) so that its
    // request set, and the step counts published for it, stay the same.
    const std::uint64_t u = rng();
    const bool long_one = o.long_fraction == 0.5 ? u % 2 == 1 : static_cast<double>(u >> 11) * 0x1.0p-53 < o.long_fraction;
    const auto& range = long_one ? o.long_range : o.short_range;
    const std::size_t len = range[0] + rng() % (range[1] - range[0] + 1);
    const double f = 1.0 - o.noise + 2.0 * o.noise * static_cast<double>(rng() % 1001) / 1000.0;
    specdec::scheduled_request r;
    r.request = {.prompt = prompts[i % prompts.size()], .options = {.max_new_tokens = len, .stop_at_eos = false},
                 .id = i};
    r.predicted_length = static_cast<double>(len) * f;
    reqs.push_back(std::move(r));
  }
  BM target = make_target();
  specdec::batched_autoregressive_decoder engine(target);
  std::vector<csv_row> rows;
  for (const auto policy : o.policies)
  for (const auto mode : {specdec::batching_mode::static_batching, specdec::batching_mode::continuous}) {
    const specdec::scheduler_options so{.mode = mode,
                                        .max_batch = o.max_batch,
                                        .memory_budget_bytes = o.budget_mb * 1e6,
                                        .kv_bytes_per_token = kv_bytes_per_token,
                                        .on_under_prediction = policy};
    std::printf("-- %s, under-prediction: %s\n", specdec::to_string(mode), specdec::to_string(policy));
    // FIFO and length-aware alternate for --repeats rounds (the schedules are
    // deterministic, only the timings vary); each keeps its fastest round.
    specdec::simulation_report best[2];
    for (std::size_t round = 0; round < o.repeats; ++round)
      for (int s = 0; s < 2; ++s) {
        auto r = s == 0 ? specdec::simulate(engine, specdec::fifo_scheduler{}, reqs, so)
                        : specdec::simulate(engine, specdec::length_aware_scheduler{}, reqs, so);
        if (round == 0 || r.tokens_per_second > best[s].tokens_per_second) best[s] = std::move(r);
      }
    for (int s = 0; s < 2; ++s) {
      const specdec::simulation_report& rep = best[s];
      csv_row row;
      row.section = std::string("scheduler_") + specdec::to_string(mode) + "_" + specdec::to_string(policy);
      row.method = rep.scheduler;
      row.batch = o.max_batch;
      row.requests = rep.requests;
      row.tokens = rep.tokens;
      row.steps = rep.steps;
      row.seconds = rep.seconds;
      row.total_tps = rep.tokens_per_second;
      row.tokens_per_step = rep.tokens_per_step;
      row.wasted = rep.wasted_slot_steps;
      row.preemptions = rep.preemptions;
      row.p50_latency_steps = rep.p50_latency_steps;
      row.p95_latency_steps = rep.p95_latency_steps;
      row.p50_latency_s = rep.p50_latency_seconds;
      row.p95_latency_s = rep.p95_latency_seconds;
      std::vector<double> step_ms;
      for (double x : rep.step_seconds) step_ms.push_back(1e3 * x);
      row.p50_token_ms = pct(step_ms, 0.5);
      row.p95_token_ms = pct(step_ms, 0.95);
      std::printf("%-10s %-12s %4zu steps %5zu tokens  %6.1f tok/s  %5.2f tok/step  wasted %5zu slot-steps  "
                  "preempted %2zu  latency p50 %5.0f / p95 %5.0f steps, %6.2f / %6.2f s  peak KV %.2f MB\n",
                  specdec::to_string(mode), rep.scheduler.c_str(), rep.steps, rep.tokens, rep.tokens_per_second,
                  rep.tokens_per_step, rep.wasted_slot_steps, rep.preemptions, rep.p50_latency_steps,
                  rep.p95_latency_steps, rep.p50_latency_seconds, rep.p95_latency_seconds,
                  rep.peak_reserved_bytes / 1e6);
      std::fflush(stdout);
      rows.push_back(row);
    }
    const auto& f = rows[rows.size() - 2];
    const auto& l = rows.back();
    std::printf("%-10s length_aware / fifo: %.2fx tokens per step, %.2fx tokens/s, wasted slot-steps %zu -> %zu\n",
                specdec::to_string(mode), l.tokens_per_step / f.tokens_per_step, l.total_tps / f.total_tps, f.wasted,
                l.wasted);
  }
  return rows;
}

void write_csv(std::ostream& out, const std::vector<csv_row>& rows) {
  out << "section,method,batch,requests,tokens,steps,seconds,total_tok_s,tok_s_per_user,p50_token_ms,p95_token_ms,"
         "tokens_per_step,wasted_slot_steps,preemptions,p50_latency_steps,p95_latency_steps,p50_latency_s,"
         "p95_latency_s,decode_tok_s\n";
  for (const auto& r : rows)
    out << r.section << ',' << r.method << ',' << r.batch << ',' << r.requests << ',' << r.tokens << ',' << r.steps
        << ',' << r.seconds << ',' << r.total_tps << ',' << r.user_tps << ',' << r.p50_token_ms << ','
        << r.p95_token_ms << ',' << r.tokens_per_step << ',' << r.wasted << ',' << r.preemptions << ','
        << r.p50_latency_steps << ',' << r.p95_latency_steps << ',' << r.p50_latency_s << ',' << r.p95_latency_s
        << ',' << r.decode_tps << '\n';
}

// A text chart of total tokens/s over batch sizes.
void chart(const std::vector<csv_row>& rows) {
  double mx = 0;
  for (const auto& r : rows)
    if (r.section == "curve") mx = std::max(mx, r.total_tps);
  if (mx <= 0) return;
  std::printf("\ntotal tokens/s by batch size\n");
  for (const auto& r : rows) {
    if (r.section != "curve") continue;
    const int w = static_cast<int>(50.0 * r.total_tps / mx);
    std::printf("%-26s B=%2zu |%s %.0f\n", r.method.c_str(), r.batch, std::string(static_cast<std::size_t>(w), '#').c_str(),
                r.total_tps);
  }
}

// Total tokens/s of each curve at every batch size, and over its batch-1 (first) figure.
void summary(const std::vector<csv_row>& rows) {
  std::map<std::string, std::vector<const csv_row*>> by;
  std::vector<std::string> order;
  for (const auto& r : rows) {
    if (r.section != "curve") continue;
    if (!by.count(r.method)) order.push_back(r.method);
    by[r.method].push_back(&r);
  }
  for (int decode = 0; decode < 2; ++decode) {
    std::printf(decode ? "\nscaling: decode tokens/s, after the prefill step (x first batch size)\n"
                       : "\nscaling: total tokens/s, prefill included (x first batch size)\n");
    for (const auto& m : order) {
      const auto& v = by[m];
      std::printf("%-26s", m.c_str());
      for (const csv_row* r : v) {
        const double x = decode ? r->decode_tps : r->total_tps, x1 = decode ? v.front()->decode_tps : v.front()->total_tps;
        std::printf("  B=%zu %.0f (%.2fx)", r->batch, x, x / x1);
      }
      std::printf("\n");
    }
  }
}

// The options from argv; exits 0 after printing --help.
options parse(int argc, char** argv) {
  namespace cli = specdec::cli;
  using cli::store;
  options o;
  const auto count = cli::between<std::size_t>(1, 1 << 20), batch = cli::between<std::size_t>(1, 1024);
  const auto length_range = [](std::array<std::size_t, 2>& out) {
    return [&out](std::string_view opt, std::string_view v) {
      const auto r = cli::parse_tuple<std::size_t>(opt, v, 2, cli::between<std::size_t>(1, 1 << 20));
      if (r[1] < r[0]) cli::fail(opt, v, "is not a range", "MIN,MAX with 0 < MIN <= MAX");
      out = {r[0], r[1]};
    };
  };
  cli::parser p("specdec-batch-bench",
                "Batched decoding and scheduling on kjv-big; writes a CSV only where --csv says.");
  p.add("--batches", "1,2,4,8,16,32", "batch sizes of the curve", store(o.batches, batch))
      .add("--tokens", "N", "new tokens per user (32)", store(o.tokens, count))
      .add("--threads", "N", "threads per model (0 = all)", store(o.threads, cli::between<std::size_t>(0, 4095)))
      .add("--kv-format", "F", "KV cache: fp32, bf16, fp16", cli::store_format(o.kv_format, true))
      .add("--repeats", "N", "best of N runs per point (3)", store(o.repeats, cli::between<std::size_t>(1, 1000)))
      .flag("--no-sd", "skip the speculative curve", [&o] { o.sd = false; })
      .flag("--no-independent", "skip the independent_batch comparison curve", [&o] { o.independent = false; })
      .flag("--no-sched", "skip the scheduler comparison", [&o] { o.sched = false; })
      .add("--requests", "N", "scheduler requests (48)", store(o.requests, count))
      .add("--max-batch", "N", "batch cap (8)", store(o.max_batch, batch))
      .add("--budget-mb", "X", "KV budget in MB (8)", store(o.budget_mb, cli::above(0.0)))
      .add("--noise", "X", "prediction noise (0.2)", store(o.noise, cli::range<double>{.lo = 0, .hi = 1, .hi_open = true}))
      .add("--short-range", "MIN,MAX", "the scheduler mix's short lengths (8,16)", length_range(o.short_range))
      .add("--long-range", "MIN,MAX", "the scheduler mix's long lengths (64,96)", length_range(o.long_range))
      .add("--long-fraction", "P", "probability that a scheduler request is long (0.5)",
           store(o.long_fraction, cli::between(0.0, 1.0)))
      .flag("--continue", "only the continue policy for under-predicted sequences",
            [&o] { o.policies = {specdec::under_prediction_policy::continue_running}; })
      .flag("--preempt", "only the preempt-and-requeue policy",
            [&o] { o.policies = {specdec::under_prediction_policy::preempt_and_requeue}; })
      .flag("--quick", "batches 1,4,16, 12 tokens, 16 requests",
            [&o] {
              o.batches = {1, 4, 16};
              o.tokens = 12;
              o.requests = 16;
            })
      .add("--csv", "PATH", "write the rows as CSV", store(o.csv))
      .add("--prompts", "PATH", "held-out prompts (TSV)", store(o.prompts));
  if (!p.parse(argc, argv)) std::exit(0);
  return o;
}

}  // namespace

int main(int argc, char** argv) try {
  const options o = parse(argc, argv);
  std::ofstream csv;
  specdec::cli::open_output("--csv", o.csv, csv);
  const auto big = std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(SPECDEC_MODELS_DIR "/kjv-big.bin"));
  const auto little = std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(SPECDEC_MODELS_DIR "/kjv-little.bin"));
  const specdec::cpu::tokenizer tok(SPECDEC_MODELS_DIR "/kjv2k-tokenizer.bin",
                                    static_cast<std::size_t>(big->config.vocab_size));
  std::vector<std::vector<token_id>> prompts;
  for (const auto& p : specdec::bench::held_out_prompts(o.prompts, SIZE_MAX, 8)) prompts.push_back(tok.encode(p));

  // The batched models: the backend's batched forward, and one transformer per sequence.
  using batched = specdec::cpu::batched_transformer;
  using independent = specdec::independent_batch<specdec::cpu::transformer>;
  const specdec::cpu::transformer_options topts{.threads = o.threads, .kv_format = o.kv_format};
  auto make_big = [&] { return batched(big, topts); };
  auto make_little = [&] { return batched(little, topts); };
  auto make_big_ind = [&] {
    return independent([&] { return std::make_unique<specdec::cpu::transformer>(big, topts); });
  };
  auto make_little_ind = [&] {
    return independent([&] { return std::make_unique<specdec::cpu::transformer>(little, topts); });
  };

  const auto& c = big->config;
  const double kv_bytes_per_token = static_cast<double>(specdec::cpu::kv_cache::bytes_per_position(
      static_cast<std::size_t>(c.n_layers), static_cast<std::size_t>(c.kv_dim()), o.kv_format));
  std::printf("kjv-big: dim %d, %d layers, kv_dim %d, context %d; %.0f KV bytes per token (%s cache); model %s\n",
              c.dim, c.n_layers, c.kv_dim(), c.seq_len, kv_bytes_per_token,
              std::string(specdec::cpu::to_string(o.kv_format)).c_str(), "cpu::batched_transformer");

  const auto t0 = clock_type::now();
  std::vector<csv_row> rows = run_curve<batched>(make_big, make_little, o, prompts, "batched_transformer");
  if (o.independent) {
    auto ind = run_curve<independent>(make_big_ind, make_little_ind, o, prompts, "independent_batch");
    rows.insert(rows.end(), ind.begin(), ind.end());
  }
  chart(rows);
  summary(rows);
  std::printf("\nprojection for a batched forward (a B-token block forward of one sequence as a proxy for one "
              "batched step of B sequences)\n");
  {
    auto p = run_projection(big, o);
    rows.insert(rows.end(), p.begin(), p.end());
  }
  if (o.sched) {
    std::printf("\nscheduler comparison: %zu requests, bimodal lengths (%zu..%zu | %zu..%zu, %.0f%% long), prediction "
                "noise %.0f%%, max batch %zu, KV budget %.1f MB, best of %zu rounds\n",
                o.requests, o.short_range[0], o.short_range[1], o.long_range[0], o.long_range[1], 100 * o.long_fraction,
                100 * o.noise, o.max_batch, o.budget_mb, o.repeats);
    auto s = run_schedulers<batched>(make_big, o, prompts, kv_bytes_per_token);
    rows.insert(rows.end(), s.begin(), s.end());
  }
  if (csv.is_open()) {
    write_csv(csv, rows);
    std::printf("\nwrote %s (%zu rows) in %.1f s\n", o.csv.c_str(), rows.size(), seconds_since(t0));
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "specdec-batch-bench: %s\n", e.what());
  return 1;
}
