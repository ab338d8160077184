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
// 3. Decoding (--decode, or --decode-only to skip parts 1 and 2): kjv-little -> kjv-big
//    (fp32, --threads=T, default 1), greedy and temperature 1, on held-out prompts
//    (models/kjv_val_openings.tsv) and on two repetitive workloads built from them
//    (quoted verses: a verse twice, then opened again; repeated lists: an opening four
//    times), --prompts=N each (default 6), --max-new=M tokens (default 160), each
//    prompt's fastest of --runs=R runs (default 3), temperatures 0 and 1 (--temperature=T:
//    only T). Per configuration:
//    tokens per target call, tokens/s, speed-up over autoregressive decoding of the same
//    run, the time split, and (greedy) whether every output equals autoregressive
//    greedy's. Configurations: the chain engine (speculative_decoder, gamma 1-8), the tree
//    decoder with fixed shapes and with `measure_tree_policy`'s hardware-aware sizing,
//    and on the repetitive workload the text-index drafter alone and combined.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "held_out_prompts.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/tree.hpp"
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

/// One configuration's totals over a prompt set.
struct totals {
  std::string name;
  bool chain = false, tree = false;
  std::size_t tokens = 0, target_calls = 0;
  double seconds = 0, target_s = 0, draft_s = 0;
  bool identical = true;
  [[nodiscard]] double per_call() const { return double(tokens) / double(std::max<std::size_t>(1, target_calls)); }
  [[nodiscard]] double rate() const { return double(tokens) / seconds; }
};

using generator = std::function<specdec::generation_result(const std::vector<token_id>&, std::uint64_t)>;

/// A configuration to run: its name, whether it is a chain or a tree, and its generator.
struct config {
  std::string name;
  bool chain = false, tree = false;
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

/// Runs every configuration on every prompt: per prompt, `runs` rounds of all
/// configurations in turn (so a busy phase of a shared machine hits all of them alike,
/// within seconds of each other), keeping each prompt's fastest run (the same seed gives the same tokens every round). Row 0 is the reference
/// for output identity when `check_identity`.
std::vector<totals> run_all(const std::vector<config>& configs, const prompt_set& prompts, std::size_t runs,
                            bool check_identity) {
  std::vector<std::vector<specdec::generation_result>> best(configs.size(),
                                                            std::vector<specdec::generation_result>(prompts.size()));
  for (std::size_t i = 0; i < prompts.size(); ++i)
    for (std::size_t round = 0; round < runs; ++round)
      for (std::size_t c = 0; c < configs.size(); ++c) {
        specdec::generation_result r = configs[c].gen(prompts[i], 1000 + i);
        if (round == 0 || r.stats.total_seconds < best[c][i].stats.total_seconds) best[c][i] = std::move(r);
      }
  std::vector<totals> rows;
  for (std::size_t c = 0; c < configs.size(); ++c) {
    totals t{configs[c].name, configs[c].chain, configs[c].tree};
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const specdec::generation_result& r = best[c][i];
      t.tokens += r.stats.tokens_emitted;
      t.target_calls += r.stats.target_calls;
      t.seconds += r.stats.total_seconds;
      t.target_s += r.stats.target_seconds;
      t.draft_s += r.stats.draft_seconds;
      t.identical = t.identical && (!check_identity || r.tokens == best[0][i].tokens);
    }
    rows.push_back(t);
  }
  return rows;
}

void print_totals(const char* workload, float temperature, const std::vector<totals>& rows) {
  const double base = rows.front().rate();
  std::printf("\n%s, temperature %g (kjv-little -> kjv-big fp32)\n", workload, static_cast<double>(temperature));
  std::printf("%-34s %8s %8s %8s %7s %7s %7s %s\n", "method", "tok/call", "tok/s", "speedup", "target", "draft",
              "other", temperature == 0.0f ? "identical" : "");
  const totals* best_chain = nullptr;
  const totals* best_tree = nullptr;
  for (const totals& t : rows) {
    std::printf("%-34s %8.2f %8.1f %8.2f %6.0f%% %6.0f%% %6.0f%% %s\n", t.name.c_str(), t.per_call(), t.rate(),
                t.rate() / base, 100 * t.target_s / t.seconds, 100 * t.draft_s / t.seconds,
                100 * (t.seconds - t.target_s - t.draft_s) / t.seconds,
                temperature == 0.0f ? (t.identical ? "yes" : "NO") : "");
    if (t.chain && (!best_chain || t.rate() > best_chain->rate())) best_chain = &t;
    if (t.tree && (!best_tree || t.rate() > best_tree->rate())) best_tree = &t;
  }
  if (best_chain && best_tree)
    std::printf("best tree (%s) / best chain (%s): %.3fx tokens/s, %.2f vs %.2f tokens per target call\n",
                best_tree->name.c_str(), best_chain->name.c_str(), best_tree->rate() / best_chain->rate(),
                best_tree->per_call(), best_chain->per_call());
}

int decode(std::size_t threads, std::size_t n_prompts, std::size_t max_new, std::size_t runs,
           const std::vector<float>& temperatures) {
  using specdec::cpu::transformer;
  transformer big(kjv_big(), {.threads = threads}), little(kjv_little(), {.threads = threads});
  const specdec::cpu::tokenizer tok(std::string(SPECDEC_MODELS_DIR) + "/kjv2k-tokenizer.bin",
                                    static_cast<std::size_t>(kjv_big()->config.vocab_size));
  const std::string tsv = std::string(SPECDEC_MODELS_DIR) + "/kjv_val_openings.tsv";
  // Held-out openings; "quotes": a verse quoted twice, then opened again (as many as
  // fit the context with max_new tokens); "lists": an opening repeated four times. The first two are plain
  // text; the last two repeat themselves, the text index's case.
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

  const specdec::hardware_aware_tree sized =
      specdec::measure_tree_policy(big, little, {.max_nodes = 24, .max_depth = 8, .max_branching = 4},
                                   {.repeats = 15});
  const specdec::hardware_aware_tree sized_text =
      specdec::measure_tree_policy(big, {.max_nodes = 24, .max_depth = 12, .max_branching = 3}, {.repeats = 15});
  std::printf("measured: draft forward = %.3f target tokens; t(9)/t(1) = %.2f, t(17)/t(1) = %.2f\n", sized.draft_cost,
              sized.verify_cost[8], sized.verify_cost[16]);
  const auto plan_text = [](const specdec::tree_plan& p) {
    return std::to_string(p.nodes) + "/" + std::to_string(p.depth) + "/" + std::to_string(p.branching);
  };
  std::printf("hardware-aware first plan (nodes/depth/branching): model %s, text index %s\n",
              plan_text(sized.plan()).c_str(), plan_text(sized_text.plan()).c_str());

  for (float temperature : temperatures) {
    const specdec::sampling_params params{.temperature = temperature};
    const bool greedy = temperature == 0.0f;
    const specdec::generation_options opts{.max_new_tokens = max_new, .stop_at_eos = false};
    const char* names[] = {"held-out prompts", "quoted verses", "repeated lists"};
    for (int workload = 0; workload < 3; ++workload) {
      const prompt_set& prompts = workload == 0 ? plain : workload == 1 ? quotes : lists;
      std::vector<config> configs;
      configs.push_back({"autoregressive", false, false,
                         owning(std::make_shared<specdec::autoregressive_decoder<transformer>>(big, params), opts)});
      for (std::size_t g = 1; g <= 8; ++g) {
        const std::string name = "chain gamma " + std::to_string(g);
        const specdec::fixed_gamma fg{.gamma = g};
        const auto chain = [&](auto rollback) {
          using decoder_t = specdec::speculative_decoder<transformer, transformer, specdec::fixed_gamma, decltype(rollback)>;
          configs.push_back({name, true, false, owning(std::make_shared<decoder_t>(little, big, fg, rollback, params), opts)});
        };
        if (greedy) chain(specdec::greedy_match{});
        else chain(specdec::rejection_sampling{});
      }
      const auto tree_config = [&](const std::string& name, auto drafter, auto policy, bool is_tree) {
        using drafter_t = typename decltype(drafter)::element_type;
        auto dec = std::make_shared<specdec::tree_decoder<drafter_t, transformer, decltype(policy)>>(
            *drafter, big, policy, params);
        configs.push_back({name, !is_tree, is_tree, owning(dec, opts, drafter)});
      };
      const auto model = [&] { return std::make_shared<specdec::model_tree_drafter<transformer>>(little); };
      for (const specdec::fixed_tree shape :
           {specdec::fixed_tree{4, 4, 1}, specdec::fixed_tree{6, 4, 2}, specdec::fixed_tree{7, 4, 2},
            specdec::fixed_tree{7, 3, 3}, specdec::fixed_tree{12, 6, 3}, specdec::fixed_tree{16, 6, 4},
            specdec::fixed_tree{24, 8, 4}})
        tree_config("tree " + plan_text(shape.plan()), model(), shape, shape.branching > 1);
      tree_config("tree hardware-aware", model(), sized, true);
      if (workload > 0) {
        const auto text = [&] { return std::make_shared<specdec::text_index_drafter>(big.vocab_size()); };
        tree_config("text index chain 7/7/1", text(), specdec::fixed_tree{7, 7, 1}, false);
        tree_config("text index tree 7/5/2", text(), specdec::fixed_tree{7, 5, 2}, true);
        tree_config("text index tree 16/8/3", text(), specdec::fixed_tree{16, 8, 3}, true);
        tree_config("text index hardware-aware", text(), sized_text, true);
        const auto both = [&] { return std::make_shared<specdec::combined_tree_drafter<transformer>>(little); };
        tree_config("combined 7/5/2", both(), specdec::fixed_tree{7, 5, 2}, true);
        tree_config("combined 16/8/3", both(), specdec::fixed_tree{16, 8, 3}, true);
      }
      const std::vector<totals> rows = run_all(configs, prompts, runs, greedy);
      print_totals(names[workload], temperature, rows);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool run_curve = true, run_benchmarks = true, has_filter = false, run_decode = false;
  std::size_t repeats = 9, threads = 1, prompts = 6, max_new = 160, runs = 3;
  std::vector<float> temperatures{0.0f, 1.0f};
  std::string csv;
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
    else if (a.rfind("--runs=", 0) == 0) runs = std::max<std::size_t>(1, std::stoul(a.substr(7)));
    else if (a.rfind("--curve-csv=", 0) == 0) csv = a.substr(12);
    else if (a.rfind("--repeats=", 0) == 0) repeats = std::stoul(a.substr(10));
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
  return run_decode ? decode(threads, prompts, max_new, runs, temperatures) : 0;
}
