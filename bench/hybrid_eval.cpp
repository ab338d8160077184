// specdec-hybrid-eval: device/cloud routing on one virtual clock.
//
// Over the held-out KJV prompts (the first words of the first verse of each held-out
// chapter, models/kjv_val_openings.tsv), with the device = kjv-little and the cloud =
// kjv-big, it sweeps arbiters x link presets and writes JSON and CSV with, per
// configuration: quality (token agreement with the cloud-only greedy output; kjv-big
// perplexity of the generated text), cloud fraction (requests and tokens), p50/p95/p99
// end-to-end virtual latency, mean time to first token, bytes and round trips per token;
// plus the length predictor's error.
//
// Protocol. A response is the rest of the first sentence: generation stops at the first
// token containing '.', '?' or '!' (or EOS, or --tokens). Greedy decoding. Learned parts
// are cross-fitted over two folds (even / odd prompts): the length predictor, the
// difficulty predictor, the logistic arbiter and the budget calibrations of the random and
// confidence arbiters are fitted on one fold and applied to the other, so every prompt is
// routed by a model that never saw it. A prompt's label ("device ok") is: the device's
// greedy output agrees with the cloud's on >= --agree of the cloud's tokens (position by
// position; free-running greedy outputs drift apart after a few tokens, so position-wise
// agreement is low and the default --agree 0.15 labels about a third of these prompts ok).
// Compute time is charged from a per-model linear cost (per call + per token) measured at
// start-up on this machine (minimum over repeats, robust to other load; --device-cost /
// --cloud-cost pin it, --measured charges live wall times instead), scaled by
// --device-scale and --cloud-scale. Arbiters that read request
// features pay the device probe (one device forward of the prompt, charged from the linear
// device cost even with --measured) on the clock; the fixed
// baselines do not. `confidence_seg16` is the confidence arbiter also used as a segment
// arbiter: every 16 device tokens it re-reads the device's recent confidence and may hand
// the rest of the generation to the cloud. Executions are cached per (prompt, route, link), so arbiters that
// agree on a route share one run.
//
//   specdec-hybrid-eval [--quick] [--json PATH] [--csv PATH] [--tokens 48] [--words 8]
//                       [--device-scale 3] [--cloud-scale 0.5] [--agree 0.15] [--gamma 4]
//                       [--prefix 4] [--cloud-fraction 0.3] [--lambda 0.05] [--seed 1]
//                       [--measured] [--device-cost MS,MS] [--cloud-cost MS,MS]
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/arbiter.hpp"
#include "specdec/hybrid/predictor.hpp"
#include "specdec/hybrid/session.hpp"

#include "args.hpp"
#include "held_out_prompts.hpp"

namespace {

using specdec::token_id;
using specdec::cpu::transformer;
namespace hy = specdec::hybrid;

struct eval_options {
  std::string device = SPECDEC_MODELS_DIR "/kjv-little.bin";
  std::string cloud = SPECDEC_MODELS_DIR "/kjv-big.bin";
  std::string tokenizer = SPECDEC_MODELS_DIR "/kjv2k-tokenizer.bin";
  std::string prompts = SPECDEC_MODELS_DIR "/kjv_val_openings.tsv";
  std::string json, csv;  // written only when given
  std::size_t tokens = 48;
  std::size_t words = 8;
  std::size_t count = 24;
  double device_scale = 3.0;
  double cloud_scale = 0.5;
  double agree = 0.15;
  std::size_t gamma = 4;
  std::size_t prefix = 4;
  double cloud_fraction = 0.3;
  double lambda = 0.05;
  std::uint64_t seed = 1;
  bool measured = false;
  std::string device_cost, cloud_cost;  // "A,B" ms overrides of the measured costs
  int cost_reps = 40;
  std::size_t segment = 16;  // tokens per segment of the confidence_seg configuration
};

// Per-model linear cost (seconds per call + per token), measured on this machine: a
// single-token forward and a 16-token block forward after a 16-token context, alternated,
// keeping the minimum of each (the uncontended cost: other processes only add time).
hy::linear_cost measure_cost(transformer& m, int reps) {
  std::vector<token_id> ctx(16, 300), one{301}, block(16, 302);
  auto time_block = [&](const std::vector<token_id>& b) {
    m.truncate(0);
    (void)m.forward(ctx);
    const auto t0 = std::chrono::steady_clock::now();
    (void)m.forward(b);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  (void)time_block(one);  // warm-up
  double t1 = 1e30, t16 = 1e30;
  for (int r = 0; r < reps; ++r) {
    t1 = std::min(t1, time_block(one));
    t16 = std::min(t16, time_block(block));
  }
  const double per_token = std::max(0.0, (t16 - t1) / 15.0);
  const double per_call = std::max(0.0, t1 - per_token);
  m.truncate(0);
  return {.per_call = per_call, .per_token = per_token};
}

// "A,B" in milliseconds -> linear_cost{A ms per call, B ms per token}.
hy::linear_cost parse_cost(std::string_view flag, std::string_view v) {
  const auto ms = specdec::cli::parse_tuple<double>(flag, v, 2, specdec::cli::non_negative<double>());
  hy::linear_cost c{.per_call = ms[0] * 1e-3, .per_token = ms[1] * 1e-3};
  c.validate();
  return c;
}

// Parses argv into `o`; false when --help was printed.
bool parse(int argc, char** argv, eval_options& o) {
  namespace cli = specdec::cli;
  using cli::store;
  const auto count = cli::between<std::size_t>(1, 1 << 20);
  const auto cost = [](std::string& out) {
    return [&out](std::string_view opt, std::string_view v) {
      (void)parse_cost(opt, v);  // checked now, used after the models are loaded
      out = std::string(v);
    };
  };
  cli::parser p("specdec-hybrid-eval",
                "Device/cloud routing (arbiters x link presets) on one virtual clock; writes files only where\n"
                "--json / --csv say.");
  p.flag("--quick", "4 prompts", [&o] { o.count = 4; })
      .add("--json", "PATH", "write the results as JSON", store(o.json))
      .add("--csv", "PATH", "write one CSV row per configuration", store(o.csv))
      .add("--tokens", "N", "max new tokens (48)", store(o.tokens, count))
      .add("--words", "N", "prompt words (8)", store(o.words, count))
      .add("--device-scale", "S", "device compute time scale (3)", store(o.device_scale, cli::above(0.0)))
      .add("--cloud-scale", "S", "cloud compute time scale (0.5)", store(o.cloud_scale, cli::above(0.0)))
      .add("--agree", "X", "agreement that labels a prompt device-ok (0.15)", store(o.agree, cli::between(0.0, 1.0)))
      .add("--gamma", "G", "draft length of the speculative route (4)", store(o.gamma, cli::between<std::size_t>(1, 1024)))
      .add("--prefix", "K", "cloud tokens of the cloud_prefix route (4)", store(o.prefix, count))
      .add("--cloud-fraction", "F", "cloud budget of the calibrated arbiters (0.3)",
           store(o.cloud_fraction, cli::between(0.0, 1.0)))
      .add("--lambda", "SECONDS", "latency arbiter's price of quality (0.05)", store(o.lambda, cli::non_negative<double>()))
      .add("--seed", "S", "seed of the random arbiter and the links (1)", store(o.seed))
      .flag("--measured", "charge live wall times instead of the linear costs", o.measured)
      .add("--segment", "N", "tokens per segment of confidence_seg (16)", store(o.segment, count))
      .add("--device-cost", "MS,MS", "per-call and per-token device cost (default: measured)", cost(o.device_cost))
      .add("--cloud-cost", "MS,MS", "per-call and per-token cloud cost (default: measured)", cost(o.cloud_cost))
      .add("--prompts", "TSV", "held-out prompts", store(o.prompts))
      .add("--device", "PATH", "device checkpoint", store(o.device))
      .add("--cloud", "PATH", "cloud checkpoint", store(o.cloud))
      .add("--tokenizer", "PATH", "tokenizer", store(o.tokenizer));
  return p.parse(argc, argv);
}

double agreement(const std::vector<token_id>& out, const std::vector<token_id>& ref, std::size_t& same) {
  same = 0;
  for (std::size_t j = 0; j < ref.size(); ++j)
    if (j < out.size() && out[j] == ref[j]) ++same;
  return ref.empty() ? 1.0 : static_cast<double>(same) / static_cast<double>(ref.size());
}

// Summed negative log-likelihood of `gen` after `prompt` under `model`.
double nll_sum(transformer& model, const std::vector<token_id>& prompt, const std::vector<token_id>& gen) {
  if (gen.empty()) return 0.0;
  std::vector<token_id> all(prompt);
  all.insert(all.end(), gen.begin(), gen.end());
  all.resize(std::min(all.size(), model.context_length()));
  model.truncate(0);
  const specdec::logits_block out = model.forward(all);
  std::vector<float> p(model.vocab_size());
  double nll = 0.0;
  for (std::size_t i = prompt.size() - 1; i + 1 < all.size(); ++i) {
    specdec::softmax(out.row(i), p);
    nll -= std::log(std::max(1e-30, static_cast<double>(p[static_cast<std::size_t>(all[i + 1])])));
  }
  model.truncate(0);
  return nll;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

std::string route_name(const hy::route& r) {
  std::string s(hy::to_string(r.kind));
  if (r.kind == hy::route_kind::speculative) s += "(" + std::to_string(r.gamma) + ")";
  if (r.kind == hy::route_kind::cloud_prefix) s += "(" + std::to_string(r.prefix_tokens) + ")";
  return s;
}

struct prompt_data {
  std::string text;
  std::vector<token_id> ids;
  hy::request_features features;  // probe + cross-fitted predictions
  std::vector<token_id> cloud_out, device_out;
  double device_agreement = 0.0;
  int device_ok = 0;
  double probe_seconds = 0.0;  // virtual device seconds of the probe
  int fold = 0;
};

struct config_result {
  std::string arbiter, link;
  std::size_t requests = 0, cloud_requests = 0, tokens = 0, cloud_tokens = 0, same = 0, ref_tokens = 0;
  std::size_t cloud_forward_tokens = 0, bytes = 0, round_trips = 0, fell_back = 0;
  double nll = 0.0;
  std::vector<double> latency, ttft;
  std::map<std::string, std::size_t> routes;

  [[nodiscard]] double quality() const { return ref_tokens ? double(same) / double(ref_tokens) : 0.0; }
  [[nodiscard]] double perplexity() const { return tokens ? std::exp(nll / double(tokens)) : 0.0; }
  [[nodiscard]] double cloud_request_fraction() const { return requests ? double(cloud_requests) / double(requests) : 0.0; }
  [[nodiscard]] double cloud_token_fraction() const { return tokens ? double(cloud_tokens) / double(tokens) : 0.0; }
  [[nodiscard]] double per_token(std::size_t x) const { return tokens ? double(x) / double(tokens) : 0.0; }
  [[nodiscard]] double mean_ttft() const {
    return ttft.empty() ? 0.0 : std::accumulate(ttft.begin(), ttft.end(), 0.0) / double(ttft.size());
  }
};

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      o += ' ';
      continue;
    }
    o += c;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) try {
  eval_options o;
  if (!parse(argc, argv, o)) return 0;
  // Output files are opened before the evaluation runs, so a bad path fails at once.
  std::ofstream js, csv;
  specdec::cli::open_output("--json", o.json, js);
  specdec::cli::open_output("--csv", o.csv, csv);
  const hy::compute_model cm{.device_scale = o.device_scale, .cloud_scale = o.cloud_scale};
  cm.validate();
  const auto wall0 = std::chrono::steady_clock::now();

  transformer little(o.device), big(o.cloud);
  const specdec::cpu::tokenizer tok(o.tokenizer, little.vocab_size());

  // Compute costs.
  const hy::linear_cost device_cost =
      o.device_cost.empty() ? measure_cost(little, o.cost_reps) : parse_cost("--device-cost", o.device_cost);
  const hy::linear_cost cloud_cost =
      o.cloud_cost.empty() ? measure_cost(big, o.cost_reps) : parse_cost("--cloud-cost", o.cloud_cost);
  std::cerr << "measured costs: device " << device_cost.per_call * 1e3 << " ms/call + " << device_cost.per_token * 1e3
            << " ms/token, cloud " << cloud_cost.per_call * 1e3 << " ms/call + " << cloud_cost.per_token * 1e3
            << " ms/token (before scaling)\n";

  // Responses end at the first sentence end.
  specdec::generation_options gen{.max_new_tokens = o.tokens};
  for (std::size_t id = 3; id < little.vocab_size(); ++id) {
    const std::string piece = tok.decode_piece(-1, static_cast<token_id>(id));
    if (piece.find_first_of(".?!") != std::string::npos) gen.stop_sequences.push_back({static_cast<token_id>(id)});
  }

  // Prompts, references, features.
  std::vector<prompt_data> P;
  for (const auto& text : specdec::bench::held_out_prompts(o.prompts, o.count, o.words)) {
    prompt_data d;
    d.text = text;
    d.ids = tok.encode(text);
    P.push_back(std::move(d));
  }
  for (std::size_t i = 0; i < P.size(); ++i) {
    auto& d = P[i];
    d.fold = static_cast<int>(i % 2);
    specdec::autoregressive_decoder cloud_dec(big), device_dec(little);
    d.cloud_out = cloud_dec.generate(d.ids, gen).tokens;
    d.device_out = device_dec.generate(d.ids, gen).tokens;
    std::size_t same = 0;
    d.device_agreement = agreement(d.device_out, d.cloud_out, same);
    d.device_ok = d.device_agreement >= o.agree ? 1 : 0;
    d.features = hy::probe_request(little, d.ids);
    d.features.request_id = i;
    d.probe_seconds = cm.device(device_cost(d.ids.size(), 0));
  }

  // Cross-fitted predictors: fit on one fold, predict the other.
  std::vector<double> predicted_length(P.size()), actual_length(P.size()), constant_length(P.size());
  std::vector<std::string> difficulty_fit(2, "fitted");
  std::array<hy::logistic_arbiter, 2> logistic{};
  std::array<hy::random_arbiter, 2> random_arb{};
  std::array<hy::confidence_arbiter, 2> confidence{};
  for (int f = 0; f < 2; ++f) {
    std::vector<hy::request_features> train;
    std::vector<double> lengths, entropies;
    std::vector<int> ok, hard;
    for (const auto& d : P)
      if (d.fold != f) {
        train.push_back(d.features);
        lengths.push_back(static_cast<double>(d.cloud_out.size()));
        entropies.push_back(d.features.draft_mean_entropy);
        ok.push_back(d.device_ok);
        hard.push_back(1 - d.device_ok);
      }
    if (train.empty()) train.push_back(P.front().features), lengths.push_back(double(P.front().cloud_out.size())),
        entropies.push_back(P.front().features.draft_mean_entropy), ok.push_back(P.front().device_ok),
        hard.push_back(1 - P.front().device_ok);
    hy::linear_length_predictor lp;
    try {
      lp = hy::linear_length_predictor::fit(train, lengths, 1.0);  // ridge 1: a dozen samples
    } catch (const specdec::invalid_argument&) {
      lp = {};
    }
    const auto cp = hy::constant_length_predictor::fit(lengths);
    hy::entropy_difficulty_predictor dp;
    try {
      dp = hy::entropy_difficulty_predictor::fit(entropies, hard);
    } catch (const specdec::invalid_argument&) {
      difficulty_fit[static_cast<std::size_t>(f)] = "default (fit failed: slope not positive or one class)";
    }
    for (std::size_t i = 0; i < P.size(); ++i)
      if (P[i].fold == f) {
        auto& feat = P[i].features;
        feat.predicted_length = lp.coefficients.empty() ? cp.predict(feat) : lp.predict(feat);
        feat.predicted_difficulty = dp.predict(feat);
        predicted_length[i] = feat.predicted_length;
        constant_length[i] = cp.predict(feat);
        actual_length[i] = static_cast<double>(P[i].cloud_out.size());
      }
    // Arbiters trained / calibrated on the other fold (features there carry their own
    // cross-fitted predictions only after both folds are done, so train on probe
    // features + the predictions of this fold's predictors).
    for (auto& t : train) {
      t.predicted_length = lp.coefficients.empty() ? cp.predict(t) : lp.predict(t);
      t.predicted_difficulty = dp.predict(t);
    }
    logistic[static_cast<std::size_t>(f)].train(train, ok, 500, 0.5, 1e-2);
    const hy::budget b{.max_cloud_fraction = o.cloud_fraction};
    random_arb[static_cast<std::size_t>(f)] = hy::random_arbiter{.seed = o.seed}.calibrated(train, {}, b);
    confidence[static_cast<std::size_t>(f)] = hy::confidence_arbiter{}.calibrated(train, {}, b);
  }
  const auto length_error = hy::prediction_error::of(predicted_length, actual_length);
  const auto constant_error = hy::prediction_error::of(constant_length, actual_length);
  std::vector<int> labels;
  for (const auto& d : P) labels.push_back(d.device_ok);
  const auto oracle = hy::oracle_arbiter::from_labels(labels);

  // Latency arbiter's per-token costs: the measured costs, scaled.
  const hy::latency_arbiter latency{
      .costs = {.t_device_per_token = cm.device(device_cost(1, 0)),
                .t_cloud_per_token = cm.cloud(cloud_cost(1, 0)),
                .cloud_prefill_seconds_per_token = cm.cloud(cloud_cost.per_token)},
      .lambda = o.lambda,
      .max_gamma = 8};
  latency.validate();

  // The arbiters: name, whether they read features (pay the probe), route per prompt.
  struct arbiter_entry {
    std::string name;
    bool probes;
    std::function<hy::route(const prompt_data&, const hy::link_estimate&)> decide;
    bool segments = false;  // executed with the fold's confidence arbiter as a segment arbiter
  };
  const hy::budget open{};
  auto fold_of = [](const prompt_data& d) { return static_cast<std::size_t>(d.fold); };
  std::vector<arbiter_entry> arbiters{
      {"device_only", false, [](const prompt_data&, const hy::link_estimate&) { return hy::route::on_device(); }},
      {"cloud_only", false, [](const prompt_data&, const hy::link_estimate&) { return hy::route::in_cloud(); }},
      {"random_" + std::to_string(int(std::lround(o.cloud_fraction * 100))), true,
       [&](const prompt_data& d, const hy::link_estimate& l) { return random_arb[fold_of(d)].decide(d.features, l, open); }},
      {"confidence", true,
       [&](const prompt_data& d, const hy::link_estimate& l) { return confidence[fold_of(d)].decide(d.features, l, open); }},
      {"confidence_seg" + std::to_string(o.segment), true,
       [&](const prompt_data& d, const hy::link_estimate& l) { return confidence[fold_of(d)].decide(d.features, l, open); },
       true},
      {"latency", true, [&](const prompt_data& d, const hy::link_estimate& l) { return latency.decide(d.features, l, open); }},
      {"logistic", true,
       [&](const prompt_data& d, const hy::link_estimate& l) { return logistic[fold_of(d)].decide(d.features, l, open); }},
      {"oracle", true, [&](const prompt_data& d, const hy::link_estimate& l) { return oracle.decide(d.features, l, open); }},
      {"speculative_" + std::to_string(o.gamma), false,
       [&](const prompt_data&, const hy::link_estimate&) { return hy::route::speculative(o.gamma); }},
      {"cloud_prefix_" + std::to_string(o.prefix), false,
       [&](const prompt_data&, const hy::link_estimate&) { return hy::route::cloud_prefix(o.prefix); }},
  };

  // Perplexity cache by output.
  std::map<std::pair<std::size_t, std::vector<token_id>>, double> nll_cache;
  auto nll_of = [&](std::size_t i, const std::vector<token_id>& out) {
    auto key = std::make_pair(i, out);
    auto it = nll_cache.find(key);
    if (it != nll_cache.end()) return it->second;
    const double v = nll_sum(big, P[i].ids, out);
    nll_cache.emplace(std::move(key), v);
    return v;
  };

  hy::session_options so{.compute = cm};
  if (!o.measured) {
    so.device_cost = device_cost;
    so.cloud_cost = cloud_cost;
  }
  so.charge_probe = false;  // execute() does not probe; the probe cost is added per arbiter below

  std::vector<config_result> results;
  const std::vector<std::string> presets{"lan", "wan", "lte", "degraded"};
  std::size_t executions = 0;
  for (std::size_t li = 0; li < presets.size(); ++li) {
    const auto cfg = hy::link_config::preset(presets[li]);
    const auto est = hy::link_estimate::of(cfg);
    hy::simulated_link link(cfg, o.seed * 1000 + li);
    hy::session s(little, big, hy::fixed_arbiter{}, link, so);
    // The confidence arbiter of each fold, also consulted every --segment device tokens.
    auto seg_opts = so;
    seg_opts.segment_tokens = o.segment;
    std::array<hy::session<transformer, transformer, hy::confidence_arbiter>, 2> seg{
        hy::session(little, big, confidence[0], link, seg_opts), hy::session(little, big, confidence[1], link, seg_opts)};
    std::map<std::pair<std::size_t, std::string>, hy::request_result> cache;
    for (const auto& a : arbiters) {
      config_result c;
      c.arbiter = a.name;
      c.link = presets[li];
      for (std::size_t i = 0; i < P.size(); ++i) {
        const hy::route r = a.decide(P[i], est);
        const auto key = std::make_pair(i, (a.segments ? "seg/" + std::to_string(P[i].fold) + "/" : "") + route_name(r));
        auto it = cache.find(key);
        if (it == cache.end()) {
          it = cache.emplace(key, a.segments ? seg[fold_of(P[i])].execute(P[i].ids, gen, r, P[i].features)
                                             : s.execute(P[i].ids, gen, r, P[i].features))
                   .first;
          ++executions;
        }
        const hy::request_result& res = it->second;
        const double probe = a.probes ? P[i].probe_seconds : 0.0;
        ++c.requests;
        c.cloud_requests += std::any_of(res.legs.begin(), res.legs.end(), [](const hy::route& l) { return l.uses_cloud(); });
        c.routes[res.route_trace()] += 1;
        c.tokens += res.tokens.size();
        c.cloud_tokens += res.cloud_tokens;
        c.cloud_forward_tokens += res.cloud_forward_tokens;
        c.bytes += res.bytes_up + res.bytes_down;
        c.round_trips += res.round_trips;
        c.fell_back += res.fell_back_to_device ? 1 : 0;
        std::size_t same = 0;
        (void)agreement(res.tokens, P[i].cloud_out, same);
        c.same += same;
        c.ref_tokens += P[i].cloud_out.size();
        c.nll += nll_of(i, res.tokens);
        c.latency.push_back(res.latency_seconds + probe);
        if (!res.tokens.empty()) c.ttft.push_back(res.ttft_seconds + probe);
      }
      results.push_back(std::move(c));
    }
  }

  // Report.
  js << std::setprecision(6);
  js << "{\n  \"tool\": \"specdec-hybrid-eval\",\n  \"prompts\": " << P.size() << ",\n  \"max_new_tokens\": " << o.tokens
     << ",\n  \"stop\": \"first token containing . ? or !, or EOS\",\n  \"device_scale\": " << o.device_scale
     << ",\n  \"cloud_scale\": " << o.cloud_scale << ",\n  \"timing\": \""
     << (o.measured ? "measured per forward" : (o.device_cost.empty() && o.cloud_cost.empty()) ? "linear cost measured at start-up" : "linear cost given on the command line")
     << "\",\n  \"device_cost\": {\"per_call_s\": " << device_cost.per_call << ", \"per_token_s\": " << device_cost.per_token
     << "},\n  \"cloud_cost\": {\"per_call_s\": " << cloud_cost.per_call << ", \"per_token_s\": " << cloud_cost.per_token
     << "},\n  \"agree_threshold\": " << o.agree << ",\n  \"device_ok_fraction\": "
     << double(std::accumulate(labels.begin(), labels.end(), 0)) / double(labels.size())
     << ",\n  \"length_predictor\": {\"kind\": \"linear (cross-fitted, ridge 1)\", \"mae\": " << length_error.mean_absolute_error
     << ", \"within_20_percent\": " << length_error.within_20_percent
     << ", \"constant_baseline_mae\": " << constant_error.mean_absolute_error
     << ", \"constant_baseline_within_20_percent\": " << constant_error.within_20_percent
     << "},\n  \"difficulty_fit\": [\"" << json_escape(difficulty_fit[0]) << "\", \"" << json_escape(difficulty_fit[1])
     << "\"],\n  \"executions\": " << executions << ",\n  \"per_prompt\": [\n";
  for (std::size_t i = 0; i < P.size(); ++i) {
    const auto& d = P[i];
    js << "    {\"prompt\": \"" << json_escape(d.text) << "\", \"cloud_tokens\": " << d.cloud_out.size()
       << ", \"device_agreement\": " << d.device_agreement << ", \"device_ok\": " << d.device_ok
       << ", \"draft_mean_entropy\": " << d.features.draft_mean_entropy
       << ", \"draft_max_prob_mean\": " << d.features.draft_max_prob_mean
       << ", \"predicted_length\": " << d.features.predicted_length
       << ", \"predicted_difficulty\": " << d.features.predicted_difficulty << ", \"cloud_text\": \""
       << json_escape(tok.decode(d.cloud_out)) << "\", \"device_text\": \"" << json_escape(tok.decode(d.device_out))
       << "\"}" << (i + 1 < P.size() ? "," : "") << "\n";
  }
  js << "  ],\n  \"configs\": [\n";
  csv << std::setprecision(6);
  csv << "arbiter,link,requests,quality_agreement,perplexity,cloud_request_fraction,cloud_token_fraction,"
         "cloud_forward_tokens_per_token,latency_p50_s,latency_p95_s,latency_p99_s,ttft_mean_s,bytes_per_token,"
         "round_trips_per_token,fell_back,length_mae,length_within_20pct\n";
  for (std::size_t k = 0; k < results.size(); ++k) {
    const auto& c = results[k];
    const double p50 = percentile(c.latency, 0.5), p95 = percentile(c.latency, 0.95), p99 = percentile(c.latency, 0.99);
    js << "    {\"arbiter\": \"" << c.arbiter << "\", \"link\": \"" << c.link << "\", \"requests\": " << c.requests
       << ", \"quality_agreement\": " << c.quality() << ", \"perplexity\": " << c.perplexity()
       << ", \"cloud_request_fraction\": " << c.cloud_request_fraction()
       << ", \"cloud_token_fraction\": " << c.cloud_token_fraction()
       << ", \"cloud_forward_tokens_per_token\": " << c.per_token(c.cloud_forward_tokens)
       << ", \"latency_p50_s\": " << p50 << ", \"latency_p95_s\": " << p95 << ", \"latency_p99_s\": " << p99
       << ", \"ttft_mean_s\": " << c.mean_ttft() << ", \"bytes_per_token\": " << c.per_token(c.bytes)
       << ", \"round_trips_per_token\": " << c.per_token(c.round_trips) << ", \"fell_back\": " << c.fell_back
       << ", \"tokens\": " << c.tokens << ", \"routes\": {";
    std::size_t n = 0;
    for (const auto& [name, count] : c.routes) js << (n++ ? ", " : "") << "\"" << name << "\": " << count;
    js << "}}" << (k + 1 < results.size() ? "," : "") << "\n";
    csv << c.arbiter << ',' << c.link << ',' << c.requests << ',' << c.quality() << ',' << c.perplexity() << ','
        << c.cloud_request_fraction() << ',' << c.cloud_token_fraction() << ',' << c.per_token(c.cloud_forward_tokens)
        << ',' << p50 << ',' << p95 << ',' << p99 << ',' << c.mean_ttft() << ',' << c.per_token(c.bytes) << ','
        << c.per_token(c.round_trips) << ',' << c.fell_back << ',' << length_error.mean_absolute_error << ','
        << length_error.within_20_percent << '\n';
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  js << "  ],\n  \"wall_seconds\": " << wall << "\n}\n";

  // Console summary.
  std::printf("%zu prompts, device ok (agreement >= %.2f) on %.0f%%; length predictor MAE %.2f tokens, %.0f%% within 20%% "
              "(constant baseline MAE %.2f, %.0f%%)\n",
              P.size(), o.agree, 100.0 * double(std::accumulate(labels.begin(), labels.end(), 0)) / double(labels.size()),
              length_error.mean_absolute_error, 100.0 * length_error.within_20_percent,
              constant_error.mean_absolute_error, 100.0 * constant_error.within_20_percent);
  std::printf("%-16s %-9s %7s %7s %7s %9s %9s %9s %9s %8s %7s\n", "arbiter", "link", "quality", "ppl", "cloud%",
              "p50 ms", "p95 ms", "p99 ms", "ttft ms", "B/token", "rt/tok");
  for (const auto& c : results)
    std::printf("%-16s %-9s %7.3f %7.2f %7.1f %9.1f %9.1f %9.1f %9.1f %8.1f %7.3f\n", c.arbiter.c_str(), c.link.c_str(),
                c.quality(), c.perplexity(), 100.0 * c.cloud_request_fraction(), 1e3 * percentile(c.latency, 0.5),
                1e3 * percentile(c.latency, 0.95), 1e3 * percentile(c.latency, 0.99), 1e3 * c.mean_ttft(),
                c.per_token(c.bytes), c.per_token(c.round_trips));
  std::printf("%zu executions, %.1f s wall%s%s%s%s\n", executions, wall, o.json.empty() ? "" : "; wrote ",
              o.json.c_str(), o.csv.empty() ? "" : "; wrote ", o.csv.c_str());
  return 0;
} catch (const std::exception& e) {
  std::cerr << "specdec-hybrid-eval: " << e.what() << '\n';
  return 1;
}
