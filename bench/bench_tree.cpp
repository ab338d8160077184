// The verify-cost curve of token trees (issue 22): what one forward of n chain tokens or
// n tree nodes costs against one token, for n = 1..32.
//
// 1. Google Benchmark: `verify/<model>/<format>/threads:<t>/<shape>/n:<n>` for kjv-big in
//    fp32 and bf16, 1 thread, shape `chain` (forward of an n-token block) or `tree`
//    (forward_tree of an n-node binary tree: node i's parent is (i - 1) / 2), n = 1..32.
//    Each iteration runs after a 32-token prompt and truncates back, so every call runs
//    at the same position. Without a --benchmark_filter only n = 1, 8 and 32 of kjv-big
//    fp32 run.
// 2. Curve (skip with --no-curve): specdec::measure_verify_cost for each of those models
//    and formats, i.e. chain and tree interleaved in one run, every size once per round,
//    min over --repeats=R rounds (default 9) after a warm-up round. Printed as a table of
//    microseconds and of ratios t(n) / t(1 token); --curve-csv=PATH also writes CSV.
//    --curve-only skips part 1.
// 3. Decoding (--decode, or --decode-only to skip parts 1 and 2): the kjv pair
//    (kjv-little -> kjv-big fp32) and the self pair (kjv-big q8_0 -> kjv-big fp32;
//    --pairs=little or --pairs=self: only one), --threads=T (default 1), greedy and
//    temperature 1 (--temperature=T: only T), on held-out prompts
//    (models/kjv_val_openings.tsv) and on two repetitive workloads built from them (quoted
//    verses: a verse twice, then opened again; repeated lists: an opening four times),
//    --prompts=N each (default 6), --max-new=M tokens (default 160), each prompt's fastest
//    of --runs=R runs (default 3) by CPU time, the rounds interleaving every configuration
//    per prompt, each round in its own order; --only=REGEX runs only the configurations
//    whose name matches (and the autoregressive baseline). Per configuration: tokens per
//    target call, tokens per second of process CPU time (the speed compared: on a shared
//    machine it leaves out the time the process waited for a core) and of wall time,
//    speed-up over autoregressive decoding of the same run, the time split, and (greedy)
//    whether every output equals autoregressive greedy's. Configurations: the chain engine
//    (speculative_decoder, gamma 1-8), the tree decoder with fixed shapes (up to 32 nodes
//    of depth 8, the most tokens per target call) and with
//    `measure_tree_policy`'s hardware-aware sizing (and the same deciding by its model
//    alone: no realised-rate gate, no hysteresis), and on the repetitive workloads the
//    text-index drafter alone (chains, trees, hardware-aware; kjv pair only, it needs no
//    draft) and combined with the draft model. The hardware-aware policies carry what
//    they learnt across generations (`carry_over`). Each table ends with the hardware-aware
//    policy against the best chain of the same run (">= 0.97x" or "BELOW"), the
//    configuration with the most tokens per target call, the plans the policy made, what it
//    learnt (the verify-cost curve and the modelled rate of chains of 0-6 nodes too) and
//    what it would plan on a host where a 16-token block costs 1.5x one token, and the
//    run-to-run noise: how far each
//    configuration's total CPU time over the even rounds' fastest runs is from the odd
//    rounds' (two independent measurements of the same figure). With one thread the
//    process stays on the CPU it started on (--pin-cpu=off: it may move): a move starts
//    the next forwards on cold caches, which the hardware-aware policies would learn as
//    the cost of whatever size ran then.
#include <benchmark/benchmark.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "cpu_affinity.hpp"
#include "held_out_prompts.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/tree.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/tree_decoder.hpp"

namespace {

using specdec::cpu::transformer;
using specdec::cpu::weight_format;

constexpr std::size_t prompt_len = 32;
constexpr std::size_t max_nodes = 32;
const weight_format formats[] = {weight_format::fp32, weight_format::bf16};

std::shared_ptr<const specdec::cpu::checkpoint> kjv_big() {
  static const auto ck = std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/kjv-big.bin"));
  return ck;
}

void bm_verify(benchmark::State& state, weight_format f, bool tree) {
  transformer m(kjv_big(), {.threads = 1, .format = f});
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  std::vector<specdec::token_id> tokens(n), prompt(prompt_len);
  std::vector<std::int32_t> parents(n);
  for (std::size_t i = 0; i < n; ++i) {
    tokens[i] = static_cast<specdec::token_id>((i * 101 + 7) % m.vocab_size());
    parents[i] = i == 0 ? specdec::no_parent : static_cast<std::int32_t>((i - 1) / 2);
  }
  for (std::size_t i = 0; i < prompt_len; ++i) prompt[i] = static_cast<specdec::token_id>((i * 37 + 5) % m.vocab_size());
  m.forward(prompt);
  for (auto _ : state) {
    auto out = tree ? m.forward_tree(tokens, parents) : m.forward(tokens);
    benchmark::DoNotOptimize(out.data);
    benchmark::ClobberMemory();
    m.truncate(prompt_len);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n));
}

void register_benchmarks() {
  for (weight_format f : formats)
    for (bool tree : {false, true}) {
      const std::string name = "verify/kjv-big/" + std::string(specdec::cpu::to_string(f)) + "/threads:1/" +
                               (tree ? "tree" : "chain");
      benchmark::RegisterBenchmark(name.c_str(), bm_verify, f, tree)
          ->ArgName("n")
          ->DenseRange(1, static_cast<int>(max_nodes))
          ->Unit(benchmark::kMicrosecond);
    }
}

int curve(std::size_t repeats, const std::string& csv_path) {
  std::ofstream csv;
  if (!csv_path.empty()) {
    csv.open(csv_path);
    csv << "model,format,threads,n,chain_us,tree_us,chain_ratio,tree_ratio\n";
  }
  for (weight_format f : formats) {
    transformer m(kjv_big(), {.threads = 1, .format = f});
    const specdec::verify_cost_curve c =
        specdec::measure_verify_cost(m, max_nodes, {.position = prompt_len, .repeats = repeats});
    const std::string fmt(specdec::cpu::to_string(f));
    std::printf("\nverify cost, kjv-big %s, 1 thread, at position %zu (min of %zu rounds)\n", fmt.c_str(), prompt_len,
                repeats);
    std::printf("%4s %10s %10s %8s %8s\n", "n", "chain_us", "tree_us", "chain_x", "tree_x");
    for (std::size_t n = 1; n <= max_nodes; ++n) {
      std::printf("%4zu %10.1f %10.1f %8.3f %8.3f\n", n, c.chain[n - 1] * 1e6, c.tree[n - 1] * 1e6, c.chain_ratio(n),
                  c.tree_ratio(n));
      if (csv.is_open())
        csv << "kjv-big," << fmt << ",1," << n << ',' << c.chain[n - 1] * 1e6 << ',' << c.tree[n - 1] * 1e6 << ','
            << c.chain_ratio(n) << ',' << c.tree_ratio(n) << '\n';
    }
  }
  return 0;
}


// ---- part 3: decoding ----

using specdec::token_id;
using prompt_set = std::vector<std::vector<token_id>>;

std::shared_ptr<const specdec::cpu::checkpoint> kjv_little() {
  static const auto ck = std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/kjv-little.bin"));
  return ck;
}

/// What a configuration is, for the comparisons: the baseline, a chain, a fixed tree, or
/// the hardware-aware policy, with a draft model or with the text index (or both);
/// model_only: the hardware-aware policy deciding by its model alone (no realised-rate gate,
/// no hysteresis), beside the real one, so the table shows what measurement adds.
enum class role { baseline, model_chain, model_tree, model_sized, model_only, text_chain, text_tree, text_sized, combined };

/// One configuration's totals over a prompt set.
struct totals {
  std::string name;
  role kind = role::baseline;
  std::size_t tokens = 0, target_calls = 0;
  double seconds = 0, cpu_seconds = 0, target_s = 0, draft_s = 0;
  bool identical = true;
  /// CPU seconds of each prompt's fastest run among the even rounds and among the odd
  /// ones (both 0 with one round): two independent measurements.
  std::array<double, 2> half_cpu{0.0, 0.0};
  [[nodiscard]] double per_call() const { return double(tokens) / double(std::max<std::size_t>(1, target_calls)); }
  /// Tokens per second of the process's CPU time: on a shared machine the time this
  /// process was descheduled does not count (wall time: `wall_rate`).
  [[nodiscard]] double rate() const { return double(tokens) / cpu_seconds; }
  [[nodiscard]] double wall_rate() const { return double(tokens) / seconds; }
};

using generator = std::function<specdec::generation_result(const std::vector<token_id>&, std::uint64_t)>;

/// A configuration to run: its name, its role and its generator.
struct config {
  std::string name;
  role kind = role::baseline;
  generator gen;
};

/// A generator over a decoder it owns (with whatever the decoder references).
template <class Decoder, class... Owned>
generator owning(std::shared_ptr<Decoder> dec, const specdec::generation_options& opts,
                 std::shared_ptr<Owned>... owned) {
  return [dec, opts, owned...](const std::vector<token_id>& p, std::uint64_t seed) {
    dec->set_seed(seed);
    return dec->generate(p, opts);
  };
}

std::string plan_text(const specdec::tree_plan& p) {
  return std::to_string(p.nodes) + "/" + std::to_string(p.depth) + "/" + std::to_string(p.branching);
}

/// What a hardware-aware policy did over a configuration's runs: how often it planned
/// each shape, and its state when its last generation ended.
struct plan_log {
  std::map<std::string, std::size_t> plans;
  std::size_t steps = 0;
  specdec::hardware_aware_tree last;
};

/// `hardware_aware_tree`, logging its plans (a `cost_observing_policy` like it).
struct logged_policy {
  specdec::hardware_aware_tree p;
  std::shared_ptr<plan_log> log;
  void validate() const { p.validate(); }
  specdec::tree_plan plan() { return plan(0); }
  specdec::tree_plan plan(std::size_t context) {
    const specdec::tree_plan q = p.plan(context);
    ++log->plans[plan_text(q)];
    ++log->steps;
    return q;
  }
  void observe(const specdec::token_tree& t, std::span<const std::size_t> path) { p.observe(t, path); }
  void observe_cost(const specdec::tree_step_cost& c) { p.observe_cost(c); }
  void reset() {
    if (p.learnt.version > 0) log->last = p;
    p.reset();  // keeps the learnt state (carry_over)
  }
};
static_assert(specdec::cost_observing_policy<logged_policy>);

/// Runs every configuration on every prompt: per prompt, `runs` rounds of all
/// configurations in turn (so a busy phase of a shared machine hits all of them alike,
/// within seconds of each other), keeping each prompt's fastest run (with a fixed plan,
/// the same seed gives the same tokens every round). Each round runs them in its own
/// order (a seeded shuffle): a configuration that always ran right after the tree of 32
/// nodes ran up to 10 % slower in every round (its target forwards, same plans), an
/// effect of the sequence that no configuration should carry alone. Row 0 is the
/// reference for output identity when `check_identity`.
std::vector<totals> run_all(const std::vector<config>& configs, const prompt_set& prompts, std::size_t runs,
                            bool check_identity) {
  std::vector<std::vector<specdec::generation_result>> best(configs.size(),
                                                            std::vector<specdec::generation_result>(prompts.size()));
  std::vector<std::vector<double>> cpu(configs.size(), std::vector<double>(prompts.size()));
  // Each prompt's fastest run among the even rounds and among the odd ones: two
  // independent measurements whose disagreement is the run-to-run noise.
  std::vector<std::array<double, 2>> half(configs.size(), {0.0, 0.0});
  std::vector<std::size_t> order(configs.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::mt19937_64 shuffler(20261207);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    std::vector<std::array<double, 2>> fastest_half(configs.size(), {1e300, 1e300});
    for (std::size_t round = 0; round < runs; ++round) {
      std::ranges::shuffle(order, shuffler);
      for (const std::size_t c : order) {
        const double t0 = specdec::process_cpu_seconds();
        specdec::generation_result r = configs[c].gen(prompts[i], 1000 + i);
        const double t = specdec::process_cpu_seconds() - t0;
        fastest_half[c][round % 2] = std::min(fastest_half[c][round % 2], t);
        if (round == 0 || t < cpu[c][i]) {
          best[c][i] = std::move(r);
          cpu[c][i] = t;
        }
      }
    }
    for (std::size_t c = 0; c < configs.size(); ++c)
      for (std::size_t h = 0; h < 2; ++h) half[c][h] += fastest_half[c][h];
  }
  std::vector<totals> rows;
  for (std::size_t c = 0; c < configs.size(); ++c) {
    totals t{configs[c].name, configs[c].kind};
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const specdec::generation_result& r = best[c][i];
      t.tokens += r.stats.tokens_emitted;
      t.target_calls += r.stats.target_calls;
      t.seconds += r.stats.total_seconds;
      t.cpu_seconds += cpu[c][i];
      t.target_s += r.stats.target_seconds;
      t.draft_s += r.stats.draft_seconds;
      t.identical = t.identical && (!check_identity || r.tokens == best[0][i].tokens);
    }
    if (runs >= 2) t.half_cpu = half[c];
    rows.push_back(t);
  }
  return rows;
}

/// The fastest row among those of the given roles (null if none).
const totals* fastest(const std::vector<totals>& rows, std::initializer_list<role> kinds) {
  const totals* best = nullptr;
  for (const totals& t : rows)
    if (std::ranges::find(kinds, t.kind) != kinds.end() && (!best || t.rate() > best->rate())) best = &t;
  return best;
}

void print_totals(const std::string& title, float temperature, const std::vector<totals>& rows) {
  const double base = rows.front().rate();
  std::printf("\n%s, temperature %g\n", title.c_str(), static_cast<double>(temperature));
  std::printf("%-34s %8s %8s %8s %8s %7s %7s %7s %s\n", "method", "tok/call", "tok/cpu-s", "tok/s", "speedup",
              "target", "draft", "other", temperature == 0.0f ? "identical" : "");
  for (const totals& t : rows)
    std::printf("%-34s %8.2f %8.1f %8.1f %8.2f %6.0f%% %6.0f%% %6.0f%% %s\n", t.name.c_str(), t.per_call(), t.rate(),
                t.wall_rate(), t.rate() / base, 100 * t.target_s / t.seconds, 100 * t.draft_s / t.seconds,
                100 * (t.seconds - t.target_s - t.draft_s) / t.seconds,
                temperature == 0.0f ? (t.identical ? "yes" : "NO") : "");
  const auto versus = [](const char* what, const totals* a, const totals* b) {
    if (!a || !b) return;
    const double r = a->rate() / b->rate();
    std::printf("%s: %s / %s = %.3fx tokens per CPU second (%.2f vs %.2f tokens per target call): %s 0.97x\n", what,
                a->name.c_str(), b->name.c_str(), r, a->per_call(), b->per_call(), r >= 0.97 ? ">=" : "BELOW");
  };
  const totals* model_chain = fastest(rows, {role::model_chain});
  versus("hardware-aware vs best model chain", fastest(rows, {role::model_sized}), model_chain);
  versus("hardware-aware by its model alone vs best model chain", fastest(rows, {role::model_only}), model_chain);
  versus("best fixed tree vs best model chain", fastest(rows, {role::model_tree}), model_chain);
  versus("text-index hardware-aware vs best text-index chain", fastest(rows, {role::text_sized}),
         fastest(rows, {role::text_chain}));
  versus("best hardware-aware vs best chain of any drafter", fastest(rows, {role::model_sized, role::text_sized}),
         fastest(rows, {role::model_chain, role::text_chain}));
  if (rows.front().half_cpu[1] > 0.0) {
    std::vector<double> noise;
    for (const totals& t : rows) noise.push_back(std::abs(t.half_cpu[0] / t.half_cpu[1] - 1.0));
    std::ranges::sort(noise);
    std::printf("run-to-run noise: the even and odd rounds' CPU times differ by %.1f%% (median configuration), "
                "%.1f%% at most\n", 100 * noise[noise.size() / 2], 100 * noise.back());
    // The best chain picked on one half of the rounds and timed on the other (and the
    // other way round): the max over many noisy chains no longer favours the chains.
    const auto held_out = [&](std::initializer_list<role> sized, std::initializer_list<role> chains) {
      double sum = 0.0;
      for (std::size_t pick = 0; pick < 2; ++pick) {
        const totals *a = nullptr, *b = nullptr;
        for (const totals& t : rows) {
          const bool is_a = std::ranges::find(sized, t.kind) != sized.end();
          const bool is_b = std::ranges::find(chains, t.kind) != chains.end();
          if (is_a && (!a || t.half_cpu[pick] < a->half_cpu[pick])) a = &t;
          if (is_b && (!b || t.half_cpu[pick] < b->half_cpu[pick])) b = &t;
        }
        if (!a || !b) return;
        sum += b->half_cpu[1 - pick] / a->half_cpu[1 - pick];
      }
      std::printf("  picked on one half of the rounds, timed on the other: %.3fx\n", sum / 2);
    };
    std::printf("hardware-aware vs best model chain,");
    held_out({role::model_sized}, {role::model_chain});
    if (fastest(rows, {role::model_only})) {
      std::printf("hardware-aware by its model alone vs best model chain,");
      held_out({role::model_only}, {role::model_chain});
    }
    if (fastest(rows, {role::text_sized})) {
      std::printf("text-index hardware-aware vs best text-index chain,");
      held_out({role::text_sized}, {role::text_chain});
    }
  }
  const auto most = std::ranges::max_element(rows, {}, &totals::per_call);
  std::printf("most tokens per target call: %s, %.2f\n", most->name.c_str(), most->per_call());
}

/// A policy's plans over a configuration's runs, most frequent first.
void print_plans(const char* what, const plan_log& log) {
  std::vector<std::pair<std::size_t, std::string>> v;
  for (const auto& [plan, n] : log.plans) v.emplace_back(n, plan);
  std::ranges::sort(v, std::greater<>{});
  std::printf("%s plans (nodes/depth/branching, share of %zu steps):", what, log.steps);
  for (std::size_t i = 0; i < std::min<std::size_t>(v.size(), 6); ++i)
    std::printf(" %s %.0f%%", v[i].second.c_str(), 100.0 * double(v[i].first) / double(std::max<std::size_t>(1, log.steps)));
  std::printf("\n");
  if (log.last.verify_cost.empty()) return;  // no generation ended with learnt state
  const specdec::hardware_aware_tree& h = log.last;
  std::printf("  learnt at the end: a(d, 0) =");
  for (std::size_t d = 0; d < 5; ++d) std::printf(" %.2f", h.acceptance(d, 0));
  std::printf(", a(0, r) =");
  for (std::size_t r = 1; r < 4; ++r) std::printf(" %.2f", h.acceptance(0, r));
  std::printf(", draft forwards: a step's first %.3f, later ones %.3f, overhead %.4f per row (target tokens)\n",
              h.first_draft_cost(), h.draft_forward_cost(), h.row_overhead());
  std::printf("  realised tokens per target-token time, chains %.2f, trees %.2f (context class 0)\n",
              h.realised_rate(false), h.realised_rate(true));
  std::printf("  modelled chains (nodes: tokens per token-time):");
  for (std::size_t k = 0; k <= std::min<std::size_t>(6, h.max_nodes); ++k) std::printf(" %zu: %.3f", k, h.rate(k, 1));
  std::printf("\n");
  for (std::size_t k = 0; k < h.context_bounds.size(); ++k) {  // per context class (a text index's match length)
    std::printf("  after a match of %zu+ tokens: a(d, 0) =", h.context_bounds[k]);
    for (std::size_t d = 0; d < 12; d += d < 4 ? 1 : 4) std::printf(" %zu: %.2f", d, h.acceptance(d, 0, h.context_bounds[k]));
    const specdec::tree_plan q = h.plan(h.context_bounds[k]);
    std::printf(", plan %s\n", plan_text(q).c_str());
  }
  std::printf("  verify cost t(n)/t(1), learnt (start-up):");
  for (std::size_t n : {2, 3, 4, 5, 6, 8, 9, 13, 17})
    if (n <= h.verify_cost.size()) std::printf(" %zu: %.2f (%.2f)", n, h.verify_ratio(n), h.verify_cost[n - 1]);
  std::printf("\n");
  // The same policy on a host where a 16-token block costs 1.5x one token (the cost
  // growing linearly in the rows), with what it learnt here.
  specdec::hardware_aware_tree cheap = h;
  cheap.learn_curve = false;  // that host's curve, not the one learnt here
  cheap.realised_steps = 0;   // nor the rates realised here: the model's plan for that host
  cheap.switch_margin = 0.0;
  for (std::size_t n = 1; n <= cheap.verify_cost.size(); ++n)
    cheap.verify_cost[n - 1] = 1.0 + 0.5 * static_cast<double>(n - 1) / 15.0;
  const specdec::tree_plan q = cheap.plan();
  double chain = 0.0;
  for (std::size_t k = 0; k <= std::min(cheap.max_nodes, cheap.max_depth); ++k) chain = std::max(chain, cheap.rate(k, 1));
  std::printf("  where t(16)/t(1) = 1.5: plan %s, modelled %.2f tokens per token-time vs %.2f for the best chain "
              "(%.2fx)\n", plan_text(q).c_str(), cheap.rate(q.nodes, q.branching), chain,
              cheap.rate(q.nodes, q.branching) / chain);
}

int decode(std::size_t threads, std::size_t n_prompts, std::size_t max_new, std::size_t runs,
           const std::vector<float>& temperatures, const std::vector<std::string>& pairs, const std::regex* only) {
  using specdec::cpu::transformer;
  transformer big(kjv_big(), {.threads = threads}), little(kjv_little(), {.threads = threads});
  transformer self(kjv_big(), {.threads = threads, .format = weight_format::q8_0});
  const specdec::cpu::tokenizer tok(std::string(SPECDEC_MODELS_DIR) + "/kjv2k-tokenizer.bin",
                                    static_cast<std::size_t>(kjv_big()->config.vocab_size));
  const std::string tsv = std::string(SPECDEC_MODELS_DIR) + "/kjv_val_openings.tsv";
  // Held-out openings; "quotes": a verse quoted twice, then opened again (as many as fit
  // the context with max_new tokens); "lists": an opening repeated four times. The first
  // is plain text; the other two repeat themselves, the text index's case.
  prompt_set plain, quotes, lists;
  for (const auto& p : specdec::bench::held_out_prompts(tsv, n_prompts, 8)) plain.push_back(tok.encode(p));
  for (const auto& p : specdec::bench::held_out_prompts(tsv, n_prompts, 6))
    lists.push_back(tok.encode(p + "; " + p + "; " + p + "; " + p));
  const std::size_t ctx = static_cast<std::size_t>(big.context_length());
  for (const std::string& a : specdec::bench::held_out_prompts(tsv, n_prompts, 1000)) {
    auto ids = tok.encode(a + "\n" + a + "\n" + a.substr(0, a.find(' ', 20)));
    if (ids.size() + max_new < ctx) quotes.push_back(std::move(ids));
  }
  std::printf("\ndecoding: %zu held-out, %zu quote and %zu list prompts, %zu new tokens each, %zu thread(s), "
              "context %zu\n", plain.size(), quotes.size(), lists.size(), max_new, threads, ctx);

  // carry_over: a policy keeps what it learnt from one generation to the next, as a
  // server's would; a generation of 160 tokens is only 20-60 steps, most of which it
  // would otherwise spend leaving the prior.
  const specdec::hardware_aware_tree knobs{.max_nodes = 24, .max_depth = 8, .max_branching = 4, .carry_over = true};
  const specdec::hardware_aware_tree sized_text = specdec::measure_tree_policy(
      big, {.max_nodes = 24, .max_depth = 24, .max_branching = 3, .carry_over = true}, {.repeats = 15});
  std::printf("measured: t(5)/t(1) = %.2f, t(8)/t(1) = %.2f, t(9)/t(1) = %.2f, t(17)/t(1) = %.2f (tree forwards)\n",
              sized_text.verify_cost[4], sized_text.verify_cost[7], sized_text.verify_cost[8],
              sized_text.verify_cost[16]);

  for (const std::string& pair : pairs) {
    transformer& draft = pair == "self" ? self : little;
    const char* pair_name = pair == "self" ? "kjv-big q8_0 -> kjv-big fp32" : "kjv-little -> kjv-big fp32";
    const specdec::hardware_aware_tree sized = specdec::measure_tree_policy(big, draft, knobs, {.repeats = 15});
    std::printf("\n== pair %s: a draft forward = %.3f target tokens (measured at start-up); first plans: "
                "model %s, text index %s\n", pair_name, sized.draft_cost, plan_text(sized.plan()).c_str(),
                plan_text(sized_text.plan()).c_str());
    for (float temperature : temperatures) {
      const specdec::sampling_params params{.temperature = temperature};
      const bool greedy = temperature == 0.0f;
      const specdec::generation_options opts{.max_new_tokens = max_new, .stop_at_eos = false};
      const char* names[] = {"held-out prompts", "quoted verses", "repeated lists"};
      for (int workload = 0; workload < 3; ++workload) {
        const prompt_set& prompts = workload == 0 ? plain : workload == 1 ? quotes : lists;
        const bool text = workload > 0 && pair != "self";  // the text index needs no draft: once
        std::vector<config> configs;
        configs.push_back({"autoregressive", role::baseline,
                           owning(std::make_shared<specdec::autoregressive_decoder<transformer>>(big, params), opts)});
        for (std::size_t g = 1; g <= 8; ++g) {
          const std::string name = "chain gamma " + std::to_string(g);
          const specdec::fixed_gamma fg{.gamma = g};
          const auto chain = [&](auto rollback) {
            using decoder_t =
                specdec::speculative_decoder<transformer, transformer, specdec::fixed_gamma, decltype(rollback)>;
            configs.push_back({name, role::model_chain,
                               owning(std::make_shared<decoder_t>(draft, big, fg, rollback, params), opts)});
          };
          if (greedy) chain(specdec::greedy_match{});
          else chain(specdec::rejection_sampling{});
        }
        const auto tree_config = [&](const std::string& name, auto drafter, auto policy, role kind) {
          using drafter_t = typename decltype(drafter)::element_type;
          auto dec = std::make_shared<specdec::tree_decoder<drafter_t, transformer, decltype(policy)>>(
              *drafter, big, policy, params);
          configs.push_back({name, kind, owning(dec, opts, drafter)});
        };
        const auto model = [&] { return std::make_shared<specdec::model_tree_drafter<transformer>>(draft); };
        for (const specdec::fixed_tree shape :
             {specdec::fixed_tree{4, 4, 1}, specdec::fixed_tree{7, 7, 1}, specdec::fixed_tree{6, 4, 2},
              specdec::fixed_tree{7, 4, 2}, specdec::fixed_tree{7, 3, 3}, specdec::fixed_tree{12, 6, 3},
              specdec::fixed_tree{24, 8, 4}, specdec::fixed_tree{32, 8, 4}})
          tree_config("tree " + plan_text(shape.plan()), model(), shape,
                      shape.branching > 1 ? role::model_tree : role::model_chain);
        const auto log = std::make_shared<plan_log>();
        tree_config("tree hardware-aware", model(), logged_policy{sized, log}, role::model_sized);
        specdec::hardware_aware_tree model_only = sized;
        model_only.realised_steps = 0;
        model_only.switch_margin = 0.0;
        const auto model_only_log = std::make_shared<plan_log>();
        tree_config("tree hardware-aware, model alone", model(), logged_policy{model_only, model_only_log},
                    role::model_only);
        const auto text_log = std::make_shared<plan_log>();
        if (text) {
          const auto index = [&] { return std::make_shared<specdec::text_index_drafter>(big.vocab_size()); };
          for (const specdec::fixed_tree shape : {specdec::fixed_tree{4, 4, 1}, specdec::fixed_tree{7, 7, 1},
                                                  specdec::fixed_tree{12, 12, 1}})
            tree_config("text index chain " + plan_text(shape.plan()), index(), shape, role::text_chain);
          tree_config("text index tree 7/5/2", index(), specdec::fixed_tree{7, 5, 2}, role::text_tree);
          tree_config("text index tree 16/8/3", index(), specdec::fixed_tree{16, 8, 3}, role::text_tree);
          tree_config("text index hardware-aware", index(), logged_policy{sized_text, text_log}, role::text_sized);
        }
        if (workload > 0) {
          const auto both = [&] { return std::make_shared<specdec::combined_tree_drafter<transformer>>(draft); };
          tree_config("combined 7/5/2", both(), specdec::fixed_tree{7, 5, 2}, role::combined);
          tree_config("combined 16/8/3", both(), specdec::fixed_tree{16, 8, 3}, role::combined);
        }
        if (only)  // the baseline (row 0) always runs
          configs.erase(std::remove_if(configs.begin() + 1, configs.end(),
                                       [&](const config& c) { return !std::regex_search(c.name, *only); }),
                        configs.end());
        const std::vector<totals> rows = run_all(configs, prompts, runs, greedy);
        print_totals(std::string(names[workload]) + " (" + pair_name + ")", temperature, rows);
        print_plans("  hardware-aware", *log);
        print_plans("  hardware-aware by its model alone", *model_only_log);
        if (text) print_plans("  text-index hardware-aware", *text_log);
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool run_curve = true, run_benchmarks = true, has_filter = false, run_decode = false, pin = true;
  std::size_t repeats = 9, threads = 1, prompts = 6, max_new = 160, runs = 3;
  std::vector<float> temperatures{0.0f, 1.0f};
  std::vector<std::string> pairs{"little", "self"};
  std::string csv;
  std::optional<std::regex> only;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--no-curve") run_curve = false;
    else if (a == "--curve-only") run_benchmarks = false;
    else if (a == "--decode") run_decode = true;
    else if (a == "--decode-only") run_decode = true, run_curve = false, run_benchmarks = false;
    else if (a.rfind("--threads=", 0) == 0) threads = std::stoul(a.substr(10));
    else if (a.rfind("--prompts=", 0) == 0) prompts = std::stoul(a.substr(10));
    else if (a.rfind("--max-new=", 0) == 0) max_new = std::stoul(a.substr(10));
    else if (a.rfind("--temperature=", 0) == 0) temperatures = {std::stof(a.substr(14))};
    else if (a == "--pairs=little" || a == "--pairs=self") pairs = {a.substr(8)};
    else if (a.rfind("--runs=", 0) == 0) runs = std::max<std::size_t>(1, std::stoul(a.substr(7)));
    else if (a.rfind("--curve-csv=", 0) == 0) csv = a.substr(12);
    else if (a.rfind("--repeats=", 0) == 0) repeats = std::stoul(a.substr(10));
    else if (a.rfind("--only=", 0) == 0) only = std::regex(a.substr(7));
    else if (a == "--pin-cpu=off") pin = false;
    else {
      if (a.rfind("--benchmark_filter", 0) == 0) has_filter = true;
      args.push_back(argv[i]);
    }
  }
  std::string default_filter = "--benchmark_filter=^verify/kjv-big/fp32/threads:1/(chain|tree)/n:(1|8|32)$";
  if (!has_filter) args.push_back(default_filter.data());
  int n = static_cast<int>(args.size());
  register_benchmarks();
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  if (run_benchmarks) benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (run_curve && curve(repeats, csv) != 0) return 1;
  if (const int cpu = sched_getcpu(); run_decode && pin && threads == 1 && cpu >= 0) {
    try {
      specdec::bench::pin_to(cpu);
      std::printf("decoding pinned to CPU %d\n", cpu);
    } catch (const specdec::error&) {  // unpinned, as with --pin-cpu=off
    }
  }
  return run_decode ? decode(threads, prompts, max_new, runs, temperatures, pairs, only ? &*only : nullptr) : 0;
}
