// specdec-hybrid-eval: does routing beat chance? A RouteLLM-style evaluation of the hybrid
// arbiters and predictors on held-out KJV verses (docs/hybrid_routing.md).
//
// Requests. Every verse of the 24 held-out chapters (models/kjv_val_verses.tsv) with more
// than --words words gives one request: the previous verse of its chapter (if any) plus the
// first --words words of the verse; the answer is the rest of the sentence (generation
// stops after the first token containing '.', '?' or '!', at EOS, or after --tokens).
// Chapters alternate between the calibration fold (0) and the test fold (1).
//
// Per request, with device = kjv-little and cloud = kjv-big, greedy: the device's answer,
// the cloud's, the cloud-prefix answer (the cloud's first --prefix tokens, the device
// completes), the rounds of greedy speculative decoding (gamma --gamma; its answer is the
// cloud's), the device's trajectory probe (probe.hpp, --lookahead tokens). Quality of an
// answer = the cloud model's mean log-likelihood per token of it. The device is good
// enough when the cloud finds its answer no more surprising than its own typical output:
// mean -log p_cloud(device token) <= the cloud's mean entropy at those positions.
// These go to routing_log.csv (routing_log.hpp); the committed copy is
// models/kjv_routing_log.csv.
//
// Analysis (also alone, from a log: --from-log PATH): predictors fitted on the calibration
// fold, arbiters calibrated there to budgets 0, 0.05, ..., 1 and evaluated on the test
// fold: curves (routing_curves.csv), APGR / CPT(50%) / CPT(80%) / AUC with bootstrap
// intervals, length and difficulty predictor errors, the latency arbiter on the
// device/edge/cloud tier profiles (routing_latency.csv, routing_tradeoff.csv), all in
// routing_summary.json. With the models loaded it also runs the length-aware scheduler
// on the test fold with true, predicted and constant lengths.
//
// Length workloads, where answer lengths vary for a reason: "finish the verse" (a held-out
// verse's first k words, k random in 1 .. n-1, after the previous verse; the answer is
// kjv-big's greedy continuation to its first sentence end, predicted from kjv-little's
// probe, k and kjv-little's own answer length) and "finish the story" (a prefix of a story
// stories260K sampled itself; the answer is its greedy continuation to the story's end).
// Each gets a log (kjv_verses_length_log.csv, stories260K_length_log.csv; committed as
// models/kjv_length_log.csv and models/stories260K_length_log.csv), linear predictors
// fitted on the calibration fold against the constant on the test fold, and the
// length-aware scheduler fed true, predicted and constant lengths.
//
//   specdec-hybrid-eval [--out DIR] [--from-log CSV [--length-log CSV] [--story-log CSV]]
//                       [--length-only] [--limit N] [--words 6] [--tokens 48] [--prefix 4]
//                       [--gamma 4] [--lookahead 8] [--bootstrap 2000] [--seed 1]
//                       [--length-tokens 64] [--length-stops .?!] [--stories 2400]
//                       [--story-tokens 300] [--prompts TSV] [--device PATH] [--cloud PATH]
//                       [--tokenizer PATH]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/batch_decoder.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/arbiter.hpp"
#include "specdec/hybrid/predictor.hpp"
#include "specdec/hybrid/probe.hpp"
#include "specdec/hybrid/routing_log.hpp"
#include "specdec/hybrid/routing_metrics.hpp"
#include "specdec/scheduler.hpp"

#include "args.hpp"

#ifndef SPECDEC_HYBRID_EVAL_OUT
#define SPECDEC_HYBRID_EVAL_OUT "."
#endif

namespace {

using specdec::token_id;
using specdec::cpu::transformer;
namespace hy = specdec::hybrid;
using json = nlohmann::ordered_json;

struct eval_options {
  std::string device = SPECDEC_MODELS_DIR "/kjv-little.bin";
  std::string cloud = SPECDEC_MODELS_DIR "/kjv-big.bin";
  std::string tokenizer = SPECDEC_MODELS_DIR "/kjv2k-tokenizer.bin";
  std::string prompts = SPECDEC_MODELS_DIR "/kjv_val_verses.tsv";
  std::string out = SPECDEC_HYBRID_EVAL_OUT;
  std::string from_log;
  std::size_t limit = 0;  // 0 = every verse
  std::size_t words = 6;
  std::size_t tokens = 48;
  std::size_t prefix = 4;
  std::size_t gamma = 4;
  std::size_t lookahead = 8;
  std::size_t bootstrap = 2000;
  std::uint64_t seed = 1;
  std::string length_log;        // --from-log mode: the length workload's committed log
  std::size_t length_tokens = 64;  // cap of a "finish the sentence" answer
  bool length_only = false;        // skip the routing requests
  std::string length_stops = ".?!";  // characters that end a KJV length-workload answer
  std::string story_model = SPECDEC_MODELS_DIR "/stories260K.bin";
  std::string story_tokenizer = SPECDEC_MODELS_DIR "/tok512.bin";
  std::size_t stories = 2400;        // stories sampled for the stories260K length workload
  std::size_t story_tokens = 300;    // cap of a sampled story (its continuation gets the rest of the context)
  std::string story_log;             // --from-log mode: the stories workload's committed log
};

// ---------------------------------------------------------------------------------------
// Requests from the held-out verses

struct verse {
  std::string chapter, reference;
  int number = 0;
  std::string text;
};

std::vector<verse> read_verses(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw specdec::invalid_argument("--prompts file '" + path + "' cannot be opened");
  std::vector<verse> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> f;
    std::istringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, '\t')) f.push_back(cell);
    if (f.size() != 4) throw specdec::invalid_argument("--prompts file '" + path + "': expected 4 tab-separated fields in '" + line + "'");
    out.push_back({f[0], f[1], std::stoi(f[2]), f[3]});
  }
  if (out.empty()) throw specdec::invalid_argument("--prompts file '" + path + "' has no verses");
  return out;
}

std::vector<std::string> words_of(const std::string& s) {
  std::istringstream ws(s);
  std::vector<std::string> w;
  for (std::string x; ws >> x;) w.push_back(x);
  return w;
}

std::string join(const std::vector<std::string>& w, std::size_t b, std::size_t e) {
  std::string s;
  for (std::size_t i = b; i < e; ++i) s += (i > b ? " " : "") + w[i];
  return s;
}

// A verse's log group: its reference without spaces, e.g. "Gen_7:4".
std::string group_of(const verse& v) {
  std::string g = v.reference;
  for (char& c : g)
    if (c == ' ') c = '_';
  return g + ":" + std::to_string(v.number);
}

// The reference continuation's own length after word `from`, to its first stop token.
std::size_t reference_length(const specdec::cpu::tokenizer& tok, const std::vector<std::string>& w, std::size_t from,
                             const std::vector<token_id>& stops) {
  const auto rest = tok.encode(" " + join(w, from, w.size()), false);
  for (std::size_t i = 0; i < rest.size(); ++i)
    if (std::find(stops.begin(), stops.end(), rest[i]) != stops.end()) return i + 1;
  return rest.size();
}

// ---------------------------------------------------------------------------------------
// Quality of an answer under the cloud model

struct answer_score {
  double mean_nll = 0.0;      // -log p_cloud per token
  double mean_entropy = 0.0;  // the cloud's entropy at the same positions
};

answer_score score_answer(transformer& cloud, const std::vector<token_id>& prompt, const std::vector<token_id>& out) {
  answer_score s;
  if (out.empty()) return s;
  std::vector<token_id> all(prompt);
  all.insert(all.end(), out.begin(), out.end());
  cloud.truncate(0);
  const specdec::logits_block rows = cloud.forward(all);
  std::vector<float> p(cloud.vocab_size());
  for (std::size_t i = prompt.size() - 1; i + 1 < all.size(); ++i) {
    specdec::softmax(rows.row(i), p);
    s.mean_nll -= std::log(std::max(1e-30, static_cast<double>(p[static_cast<std::size_t>(all[i + 1])])));
    s.mean_entropy += specdec::entropy(p);
  }
  s.mean_nll /= static_cast<double>(out.size());
  s.mean_entropy /= static_cast<double>(out.size());
  cloud.truncate(0);
  return s;
}

// Position-wise agreement over the shorter of the two answers.
double matched_agreement(const std::vector<token_id>& a, const std::vector<token_id>& b) {
  const std::size_t m = std::min(a.size(), b.size());
  if (m == 0) return a.size() == b.size() ? 1.0 : 0.0;
  std::size_t same = 0;
  for (std::size_t i = 0; i < m; ++i) same += a[i] == b[i];
  return static_cast<double>(same) / static_cast<double>(m);
}

struct built_request {
  std::vector<token_id> prompt;
  hy::logged_request log;
};

std::vector<built_request> build_log(const eval_options& o, transformer& little, transformer& big,
                                     const specdec::cpu::tokenizer& tok, const specdec::generation_options& gen,
                                     const std::vector<token_id>& stops) {
  const auto verses = read_verses(o.prompts);
  std::map<std::string, int> chapter_fold;
  std::vector<built_request> out;
  for (std::size_t vi = 0; vi < verses.size(); ++vi) {
    const verse& v = verses[vi];
    if (!chapter_fold.count(v.chapter)) chapter_fold[v.chapter] = static_cast<int>(chapter_fold.size() % 2);
    const auto w = words_of(v.text);
    if (w.size() <= o.words) continue;
    std::string text = join(w, 0, o.words);
    if (vi > 0 && verses[vi - 1].chapter == v.chapter) text = verses[vi - 1].text + " " + text;
    built_request b;
    b.prompt = tok.encode(text);
    hy::logged_request& r = b.log;
    r.id = out.size();
    r.fold = chapter_fold[v.chapter];
    r.group = group_of(v);
    r.reference_tokens = reference_length(tok, w, o.words, stops);
    specdec::autoregressive_decoder cloud_dec(big), device_dec(little);
    const auto cloud_out = cloud_dec.generate(b.prompt, gen).tokens;
    const auto device_out = device_dec.generate(b.prompt, gen).tokens;
    std::vector<token_id> prefix_out(cloud_out.begin(),
                                     cloud_out.begin() + static_cast<std::ptrdiff_t>(std::min(o.prefix, cloud_out.size())));
    if (prefix_out.size() == o.prefix && cloud_out.size() > o.prefix) {
      std::vector<token_id> p2(b.prompt);
      p2.insert(p2.end(), prefix_out.begin(), prefix_out.end());
      auto g2 = gen;
      g2.max_new_tokens = o.tokens - o.prefix;
      const bool ended = std::find(stops.begin(), stops.end(), prefix_out.back()) != stops.end();
      if (!ended) {
        const auto tail = device_dec.generate(p2, g2).tokens;
        prefix_out.insert(prefix_out.end(), tail.begin(), tail.end());
      }
    } else {
      prefix_out = cloud_out;
    }
    specdec::speculative_decoder spec(little, big, specdec::fixed_gamma{o.gamma}, specdec::greedy_match{});
    const auto sr = spec.generate(b.prompt, gen);
    if (sr.tokens != cloud_out)
      throw std::logic_error("greedy speculative output differs from the cloud's on request " + std::to_string(r.id));
    r.speculative_rounds = sr.stats.target_calls;
    r.features = hy::probe_trajectory(little, b.prompt, {.lookahead_tokens = o.lookahead, .stop_tokens = stops}).features;
    const auto sc = score_answer(big, b.prompt, cloud_out), sd = score_answer(big, b.prompt, device_out),
               sp = score_answer(big, b.prompt, prefix_out);
    r.outcome = {.device_quality = -sd.mean_nll, .cloud_quality = -sc.mean_nll, .prefix_quality = -sp.mean_nll,
                 .device_ok = sd.mean_nll - sc.mean_nll <= std::log(2.0)};
    r.cloud_entropy = sd.mean_entropy;
    r.device_agreement = matched_agreement(device_out, cloud_out);
    r.prefix_agreement = matched_agreement(prefix_out, cloud_out);
    r.cloud_tokens = cloud_out.size();
    r.device_tokens = device_out.size();
    r.prefix_tokens = prefix_out.size();
    out.push_back(std::move(b));
    if (out.size() % 50 == 0) std::cerr << out.size() << " requests\n";
    if (o.limit && out.size() >= o.limit) break;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Length workload: finish the verse's sentence from a variable number of its words

struct length_request {
  std::vector<token_id> prompt;
  hy::logged_length log;
};

// Application features of the length workload, after the trajectory summaries in `extra`:
// how many of the verse's words the prompt gives, and the device's own answer length.
const std::vector<std::string> length_app_features{"words_given", "device_tokens"};

// Every held-out verse with at least 2 words gives one request: the previous verse of its
// chapter (if the prompt then still leaves room for the answer) plus its first k words, k
// drawn uniformly from 1 .. n-1 by a hash of (seed, verse); the answer is each model's
// greedy continuation to its first sentence end ('.', '?', '!'), EOS or --length-tokens.
// Predicted: the cloud's answer length. Folds by chapter, as for the routing requests.
std::vector<length_request> build_length_log(const eval_options& o, transformer& little, transformer& big,
                                             const specdec::cpu::tokenizer& tok,
                                             const specdec::generation_options& gen,
                                             const std::vector<token_id>& stops) {
  const auto verses = read_verses(o.prompts);
  std::map<std::string, int> chapter_fold;
  std::vector<length_request> out;
  const std::size_t context = static_cast<std::size_t>(std::min(little.context_length(), big.context_length()));
  for (std::size_t vi = 0; vi < verses.size(); ++vi) {
    const verse& v = verses[vi];
    if (!chapter_fold.count(v.chapter)) chapter_fold[v.chapter] = static_cast<int>(chapter_fold.size() % 2);
    const auto w = words_of(v.text);
    if (w.size() < 2) continue;
    const std::size_t k = 1 + hy::detail::mix64(o.seed ^ hy::detail::mix64(vi)) % (w.size() - 1);
    length_request b;
    b.prompt = tok.encode(join(w, 0, k));
    if (vi > 0 && verses[vi - 1].chapter == v.chapter) {
      auto with_previous = tok.encode(verses[vi - 1].text + " " + join(w, 0, k));
      if (with_previous.size() + gen.max_new_tokens <= context) b.prompt = std::move(with_previous);
    }
    if (b.prompt.size() + gen.max_new_tokens > context) continue;
    hy::logged_length& r = b.log;
    r.id = out.size();
    r.fold = chapter_fold[v.chapter];
    r.group = group_of(v);
    r.reference_tokens = reference_length(tok, w, k, stops);
    specdec::autoregressive_decoder cloud_dec(big), device_dec(little);
    r.target_tokens = cloud_dec.generate(b.prompt, gen).tokens.size();
    const std::size_t device_tokens = device_dec.generate(b.prompt, gen).tokens.size();
    r.features = hy::probe_trajectory(little, b.prompt, {.lookahead_tokens = o.lookahead, .stop_tokens = stops}).features;
    r.features.extra.push_back(static_cast<float>(k));
    r.features.extra.push_back(static_cast<float>(device_tokens));
    out.push_back(std::move(b));
    if (out.size() % 100 == 0) std::cerr << out.size() << " length requests\n";
    if (o.limit && out.size() >= o.limit) break;
  }
  return out;
}

// Stories260K finishes its own stories: story s is sampled from BOS (temperature 1, seed
// (--seed, s)) until it ends (stories longer than --story-tokens are skipped); the prompt
// is BOS plus its first k tokens, k drawn uniformly from 1 .. length-2; the answer is the
// model's greedy continuation to the story's end (capped at --story-tokens). Folds by
// story parity.
// The model is its own device: the rollout would be the answer, so it is no feature.
const std::vector<std::string> story_app_features{"sentences_given"};

// llama2.c's TinyStories models end a story by emitting BOS (the next story's start).
// A continuation is capped where the longest prompt (BOS + --story-tokens - 1) meets the
// context's end, so every prompt has the same cap.
specdec::generation_options story_generation(const eval_options& o, std::size_t context) {
  if (o.story_tokens + 16 > context)
    throw specdec::invalid_argument("--story-tokens " + std::to_string(o.story_tokens) + " leaves no room in the " +
                                    std::to_string(context) + "-token context; expected at most " +
                                    std::to_string(context - 16));
  return {.max_new_tokens = context - o.story_tokens, .stop_sequences = {{specdec::bos_token}}};
}

std::vector<length_request> build_story_log(const eval_options& o, transformer& model,
                                            const specdec::cpu::tokenizer& tok) {
  std::vector<length_request> out;
  const specdec::generation_options sample{.max_new_tokens = o.story_tokens,
                                           .stop_sequences = {{specdec::bos_token}}};
  const specdec::generation_options gen = story_generation(o, model.context_length());
  std::vector<token_id> sentence_ends;
  for (std::size_t id = 3; id < model.vocab_size(); ++id)
    if (tok.decode_piece(-1, static_cast<token_id>(id)).find_first_of(".?!") != std::string::npos)
      sentence_ends.push_back(static_cast<token_id>(id));
  for (std::size_t s = 0; s < o.stories; ++s) {
    const std::vector<token_id> bos{specdec::bos_token};
    specdec::autoregressive_decoder sampler(model, {.temperature = 1.0f}, hy::detail::mix64(o.seed) ^ s);
    const auto story = sampler.generate(bos, sample);
    if (story.stop_reason != specdec::stop_reason::stop_sequence || story.tokens.size() < 3) continue;
    const std::size_t k = 1 + hy::detail::mix64(o.seed ^ hy::detail::mix64(s + 0x5707)) % (story.tokens.size() - 2);
    length_request b;
    b.prompt = bos;
    b.prompt.insert(b.prompt.end(), story.tokens.begin(), story.tokens.begin() + static_cast<std::ptrdiff_t>(k));
    hy::logged_length& r = b.log;
    r.id = out.size();
    r.fold = static_cast<int>(s % 2);
    r.group = "story_" + std::to_string(s);
    r.reference_tokens = story.tokens.size() - k;
    specdec::autoregressive_decoder greedy(model);
    r.target_tokens = greedy.generate(b.prompt, gen).tokens.size();
    r.features = hy::probe_trajectory(model, b.prompt, {.lookahead_tokens = o.lookahead, .stop_tokens = {specdec::bos_token}}).features;
    std::size_t sentences = 0;
    for (std::size_t i = 1; i < b.prompt.size(); ++i)
      sentences += std::find(sentence_ends.begin(), sentence_ends.end(), b.prompt[i]) != sentence_ends.end();
    r.features.extra.push_back(static_cast<float>(sentences));
    out.push_back(std::move(b));
    if (out.size() % 100 == 0) std::cerr << out.size() << " story requests\n";
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Analysis

std::vector<hy::request_features> features_of(const std::vector<hy::logged_request>& v) {
  std::vector<hy::request_features> f;
  for (const auto& r : v) f.push_back(r.features);
  return f;
}
std::vector<hy::routing_outcome> outcomes_of(const std::vector<hy::logged_request>& v, bool agreement = false) {
  std::vector<hy::routing_outcome> o;
  for (const auto& r : v)
    o.push_back(agreement ? hy::routing_outcome{.device_quality = r.device_agreement, .cloud_quality = 1.0,
                                                .prefix_quality = r.prefix_agreement, .device_ok = r.outcome.device_ok}
                          : r.outcome);
  return o;
}

// The confidence arbiter calibrated on the draft's mean max-probability instead of entropy.
struct max_prob_arbiter {
  hy::confidence_arbiter inner{.read_lookahead = false};
  hy::route decide(const hy::request_features& f, const hy::link_estimate& l, const hy::budget& b) const {
    return inner.decide(f, l, b);
  }
  void validate() const { inner.validate(); }
  max_prob_arbiter calibrated(std::span<const hy::request_features> s, const hy::link_estimate&, const hy::budget& b) const {
    return {inner.calibrated_on_max_prob(s, b)};
  }
};

// A learned-difficulty arbiter: cloud iff predicted_difficulty > threshold.
struct difficulty_arbiter {
  double threshold = 0.5;
  hy::route decide(const hy::request_features& f, const hy::link_estimate&, const hy::budget& b) const {
    if (b.max_cloud_fraction <= 0.0) return hy::route::on_device();
    return f.predicted_difficulty > threshold ? hy::route::in_cloud() : hy::route::on_device();
  }
  void validate() const {}
  difficulty_arbiter calibrated(std::span<const hy::request_features> s, const hy::link_estimate&, const hy::budget& b) const {
    std::vector<double> d;
    for (const auto& f : s) d.push_back(f.predicted_difficulty);
    return {hy::calibrate_threshold(d, b.max_cloud_fraction)};
  }
};

struct arbiter_report {
  std::string name;
  std::vector<hy::routing_point> curve, agreement_curve;
  double apgr = 0, cpt50 = 0, cpt80 = 0, auc = std::nan(""), agreement_apgr = 0;
  hy::interval apgr_gain{};  // APGR - 0.5 with its bootstrap interval
};

// Tier profiles: the realised time of each route on a request, with its true lengths.
struct tiers {
  std::string name;
  hy::tier_profile device, remote;
  hy::link_estimate link;
  hy::budget price{};  // cloud tokens priced in seconds (budget.lambda * cost_per_cloud_token)
};

struct realised {
  double device = 0, cloud = 0, speculative = 0, prefix = 0;
};

realised realised_latency(const hy::latency_arbiter& a, const hy::logged_request& r, std::size_t gamma,
                          std::size_t prefix, const hy::link_estimate& l) {
  const auto& c = a.costs;
  const double P = static_cast<double>(r.features.prompt_tokens);
  const double setup = l.rtt_seconds + 32.0 * P / l.up_bps + c.cloud_queue_seconds + P * c.cloud_prefill_seconds_per_token;
  const double Lc = static_cast<double>(r.cloud_tokens), Ld = static_cast<double>(r.device_tokens);
  const double Lp = static_cast<double>(r.prefix_tokens), k = std::min(static_cast<double>(prefix), Lp);
  const double g = static_cast<double>(gamma);
  realised t;
  t.device = Ld * c.t_device_per_token;
  t.cloud = setup + Lc * (c.t_cloud_per_token + 32.0 / l.down_bps);
  t.speculative = setup + static_cast<double>(r.speculative_rounds) *
                              (g * c.t_device_per_token + l.rtt_seconds + 32.0 * g / l.up_bps + c.t_cloud_per_token +
                               32.0 * (g + 1.0) / l.down_bps);
  t.prefix = setup + k * (c.t_cloud_per_token + 32.0 / l.down_bps) + (Lp - k) * c.t_device_per_token;
  return t;
}

double time_of(const realised& t, const hy::route& r) {
  switch (r.kind) {
    case hy::route_kind::device: return t.device;
    case hy::route_kind::cloud: return t.cloud;
    case hy::route_kind::speculative: return t.speculative;
    case hy::route_kind::cloud_prefix: return t.prefix;
  }
  return t.device;
}

double pct(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

void write_text(const std::filesystem::path& p, const std::string& s) {
  std::ofstream f(p);
  if (!f) throw specdec::invalid_argument("--out: cannot write '" + p.string() + "'");
  f << s;
}

json analyse(const eval_options& o, const std::vector<hy::logged_request>& log, std::vector<double>* test_predicted,
             std::vector<double>* test_constant) {
  auto [cal, test] = hy::split_folds(log);
  const auto dir = std::filesystem::path(o.out);
  json J;
  J["requests"] = log.size();
  J["calibration_requests"] = cal.size();
  J["test_requests"] = test.size();
  auto ok_share = [](const std::vector<hy::logged_request>& v) {
    double n = 0;
    for (const auto& r : v) n += r.outcome.device_ok;
    return n / static_cast<double>(v.size());
  };
  J["device_ok_share"] = {{"calibration", ok_share(cal)}, {"test", ok_share(test)}};
  const auto cal_f = features_of(cal), test_f0 = features_of(test);

  // Length predictors (fitted on the calibration fold, measured on the test fold).
  std::vector<double> cal_len, test_len;
  for (const auto& r : cal) cal_len.push_back(static_cast<double>(r.cloud_tokens));
  for (const auto& r : test) test_len.push_back(static_cast<double>(r.cloud_tokens));
  const auto constant = hy::constant_length_predictor::fit(cal_len);
  const auto linear = hy::linear_length_predictor::fit(cal_f, cal_len, 1.0);
  std::vector<std::vector<double>> cal_roll, test_roll;
  for (const auto& r : cal) cal_roll.push_back({static_cast<double>(r.device_tokens)});
  for (const auto& r : test) test_roll.push_back({static_cast<double>(r.device_tokens)});
  const auto rollout = hy::linear_length_predictor::fit(cal_roll, cal_len, 1.0);
  std::vector<double> pc, pl, pr;
  for (std::size_t i = 0; i < test.size(); ++i) {
    pc.push_back(constant.predict(test_f0[i]));
    pl.push_back(linear.predict(test_f0[i]));
    pr.push_back(rollout.predict_raw(test_roll[i]));
  }
  const auto ec = hy::prediction_error::of(pc, test_len), el = hy::prediction_error::of(pl, test_len),
             er = hy::prediction_error::of(pr, test_len);
  auto err_json = [](const hy::prediction_error& e, const hy::prediction_error& base) {
    return json{{"mae", e.mean_absolute_error}, {"within_20_percent", e.within_20_percent},
                {"mae_over_constant", e.mean_absolute_error / base.mean_absolute_error}};
  };
  J["length"] = {{"target", "cloud answer tokens"},
                 {"test_mean", std::accumulate(test_len.begin(), test_len.end(), 0.0) / double(test_len.size())},
                 {"constant", err_json(ec, ec)},
                 {"linear_probe", err_json(el, ec)},
                 {"device_rollout", err_json(er, ec)}};
  if (test_predicted) *test_predicted = pl;
  if (test_constant) *test_constant = pc;

  // Difficulty predictors: AUC against the label "device not good enough".
  std::vector<int> cal_hard, cal_ok;
  std::vector<bool> test_hard;
  for (const auto& r : cal) cal_hard.push_back(r.outcome.device_ok ? 0 : 1), cal_ok.push_back(r.outcome.device_ok ? 1 : 0);
  for (const auto& r : test) test_hard.push_back(!r.outcome.device_ok);
  const auto difficulty = hy::logistic_difficulty_predictor::fit(cal_f, cal_hard);
  std::vector<double> dscore, escore, cscore(test.size(), 0.5), mscore, tscore;
  for (const auto& f : test_f0) {
    dscore.push_back(difficulty.predict(f));
    escore.push_back(f.draft_mean_entropy);
    mscore.push_back(-f.draft_max_prob_mean);
    tscore.push_back(f.extra[hy::trajectory_feature::mean_entropy]);
  }
  J["difficulty_auc"] = {{"constant", hy::roc_auc(cscore, test_hard)},
                         {"prompt_entropy", hy::roc_auc(escore, test_hard)},
                         {"prompt_max_prob", hy::roc_auc(mscore, test_hard)},
                         {"lookahead_entropy", hy::roc_auc(tscore, test_hard)},
                         {"logistic_trajectory", hy::roc_auc(dscore, test_hard)}};

  // Features with the predictions filled in, as a session would give the arbiters.
  auto predicted = [&](std::vector<hy::request_features> v) {
    for (auto& f : v) {
      f.predicted_length = linear.predict(f);
      f.predicted_difficulty = difficulty.predict(f);
    }
    return v;
  };
  const auto calp = predicted(cal_f), testp = predicted(test_f0);
  const auto outcomes = outcomes_of(test), agree = outcomes_of(test, true);
  std::vector<double> budgets;
  for (int i = 0; i <= 20; ++i) budgets.push_back(i / 20.0);

  hy::logistic_arbiter logistic;
  logistic.train(calp, cal_ok, 2000, 0.5, 1e-2);
  std::vector<int> labels;
  for (const auto& r : test) labels.push_back(r.outcome.device_ok ? 1 : 0);
  std::vector<int> cal_labels(cal_ok);
  // The oracle knows the test labels; its calibration sample is the test fold itself.
  const auto oracle = hy::oracle_arbiter::from_labels(labels);
  double prefix_share = 0.0;
  {
    double gp = 0, gc = 0;
    for (const auto& r : cal) gp += r.outcome.prefix_quality - r.outcome.device_quality, gc += r.device_quality_gap();
    prefix_share = std::clamp(gp / gc, 0.0, 1.0);
  }
  const tiers edge{"device+edge", hy::tier_profile::device(), hy::tier_profile::edge(), {.rtt_seconds = 0.03}};
  const tiers cloud_tiers{"device+cloud", hy::tier_profile::device(), hy::tier_profile::cloud(), {.rtt_seconds = 0.08}};
  // The same edge, with every cloud forward priced at 100 ms of latency: the prefix route's
  // few cloud tokens then compete with the cloud route's many.
  const tiers priced{"device+edge priced", hy::tier_profile::device(), hy::tier_profile::edge(), {.rtt_seconds = 0.03},
                     {.cost_per_cloud_token = 0.1, .lambda = 1.0}};
  auto latency_for = [&](const tiers& t, double lambda) {
    auto a = hy::latency_arbiter::from_profiles(t.device, t.remote, t.link, lambda);
    a.allow_cloud_prefix = true;
    a.prefix_tokens = o.prefix;
    a.prefix_quality_share = prefix_share;
    a.max_gamma = 8;
    return a;
  };
  const double lambda = 4.0;
  J["latency_arbiter"] = {{"lambda_seconds", lambda}, {"prefix_tokens", o.prefix}, {"prefix_quality_share", prefix_share}};

  std::vector<arbiter_report> reports;
  auto run = [&](const std::string& name, const auto& arb, std::span<const hy::request_features> calib,
                 const std::vector<double>& score) {
    arbiter_report r;
    r.name = name;
    r.curve = hy::routing_curve(arb, calib, testp, outcomes, cloud_tiers.link, budgets);
    r.agreement_curve = hy::routing_curve(arb, calib, testp, agree, cloud_tiers.link, budgets);
    r.apgr = hy::average_pgr(r.curve);
    r.agreement_apgr = hy::average_pgr(r.agreement_curve);
    r.cpt50 = hy::cost_to_reach(r.curve, 0.5);
    r.cpt80 = hy::cost_to_reach(r.curve, 0.8);
    if (!score.empty()) r.auc = hy::roc_auc(score, test_hard);
    r.apgr_gain = hy::apgr_gain_over_random(arb, calib, testp, outcomes, cloud_tiers.link, budgets, o.bootstrap, 0.90,
                                            o.seed);
    reports.push_back(std::move(r));
  };
  std::vector<double> lscore, latscore, rscore;
  const auto lat = latency_for(cloud_tiers, lambda);
  for (const auto& f : testp) {
    lscore.push_back(-logistic.probability_device_ok(f));
    latscore.push_back(lat.cloud_advantage(f, cloud_tiers.link, {}));
    rscore.push_back(hy::detail::uniform_of(f, o.seed));
  }
  run("random", hy::random_arbiter{.seed = o.seed}, calp, rscore);
  run("confidence_prompt", hy::confidence_arbiter{.read_lookahead = false}, calp, escore);
  run("confidence_max_prob", max_prob_arbiter{}, calp, mscore);
  run("confidence_lookahead", hy::confidence_arbiter{.read_lookahead = true}, calp, tscore);
  run("logistic", logistic, calp, lscore);
  run("difficulty", difficulty_arbiter{}, calp, dscore);
  run("latency", lat, calp, latscore);
  {
    std::vector<double> os;
    for (int l : labels) os.push_back(l ? 0.0 : 1.0);
    run("oracle_label", oracle, testp, os);
  }
  {
    arbiter_report r;
    r.name = "oracle_quality";
    r.curve = hy::oracle_curve(outcomes, budgets);
    r.agreement_curve = hy::oracle_curve(agree, budgets);
    r.apgr = hy::average_pgr(r.curve);
    r.agreement_apgr = hy::average_pgr(r.agreement_curve);
    r.cpt50 = hy::cost_to_reach(r.curve, 0.5);
    r.cpt80 = hy::cost_to_reach(r.curve, 0.8);
    r.apgr_gain = {r.apgr - 0.5, r.apgr - 0.5, r.apgr - 0.5};
    reports.push_back(std::move(r));
  }
  const auto range = hy::quality_range::of(outcomes);
  J["quality"] = {{"definition", "cloud mean log-likelihood per token of the answer"},
                  {"device_only", range.device_only},
                  {"cloud_only", range.cloud_only},
                  {"prefix_only", [&] {
                     double s = 0;
                     for (const auto& oc : outcomes) s += oc.prefix_quality;
                     return s / double(outcomes.size());
                   }()}};
  std::ostringstream curves;
  curves << "arbiter,budget,cloud_fraction,quality,pgr,agreement_cloud_fraction,agreement,agreement_pgr\n";
  for (const auto& r : reports) {
    for (std::size_t i = 0; i < r.curve.size(); ++i)
      curves << r.name << ',' << r.curve[i].budget << ',' << r.curve[i].cloud_fraction << ',' << r.curve[i].quality
             << ',' << r.curve[i].pgr << ',' << r.agreement_curve[i].cloud_fraction << ','
             << r.agreement_curve[i].quality << ',' << r.agreement_curve[i].pgr << '\n';
    J["arbiters"][r.name] = {{"apgr", r.apgr},
                             {"apgr_minus_random", r.apgr_gain.estimate},
                             {"apgr_minus_random_90ci", {r.apgr_gain.lower, r.apgr_gain.upper}},
                             {"cpt50", r.cpt50},
                             {"cpt80", r.cpt80},
                             {"auc", std::isnan(r.auc) ? json(nullptr) : json(r.auc)},
                             {"agreement_apgr", r.agreement_apgr}};
  }
  write_text(dir / "routing_curves.csv", curves.str());

  // Latency on the tier profiles: per-route realised times (CDF), and each arbiter's
  // quality and latency at a 30% budget, plus the latency arbiter's own trade-off.
  std::ostringstream lat_csv, trade;
  lat_csv << "tiers,route,seconds\n";
  trade << "tiers,arbiter,lambda,budget,cloud_fraction,quality,pgr,mean_latency_s,p95_latency_s,device,cloud,speculative,"
           "cloud_prefix\n";
  for (const tiers& t : {edge, cloud_tiers, priced}) {
    const auto base = latency_for(t, 0.0);
    std::vector<realised> times;
    for (const auto& r : test) times.push_back(realised_latency(base, r, o.gamma, o.prefix, t.link));
    for (const auto& x : times)
      lat_csv << t.name << ",device," << x.device << '\n' << t.name << ",cloud," << x.cloud << '\n' << t.name
              << ",speculative," << x.speculative << '\n' << t.name << ",cloud_prefix," << x.prefix << '\n';
    auto row = [&](const std::string& name, double lam, double b, const auto& arb) {
      std::vector<double> secs;
      std::map<hy::route_kind, std::size_t> mix;
      double q = 0;
      std::size_t cloud = 0;
      for (std::size_t i = 0; i < test.size(); ++i) {
        const auto r = arb.decide(testp[i], t.link, t.price);
        secs.push_back(time_of(times[i], r));
        q += outcomes[i].quality_of(r);
        ++mix[r.kind];
        cloud += r.uses_cloud();
      }
      q /= double(test.size());
      trade << t.name << ',' << name << ',' << lam << ',' << b << ',' << double(cloud) / double(test.size()) << ',' << q
            << ',' << range.pgr(q) << ',' << std::accumulate(secs.begin(), secs.end(), 0.0) / double(secs.size()) << ','
            << pct(secs, 0.95) << ',' << mix[hy::route_kind::device] << ',' << mix[hy::route_kind::cloud] << ','
            << mix[hy::route_kind::speculative] << ',' << mix[hy::route_kind::cloud_prefix] << '\n';
    };
    for (double lam : {0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0}) row("latency", lam, 1.0, latency_for(t, lam));
    const hy::budget b30{.max_cloud_fraction = 0.3};
    hy::budget b30p = t.price;
    b30p.max_cloud_fraction = 0.3;
    row("latency", lambda, 0.3, latency_for(t, lambda).calibrated(calp, t.link, b30p));
    row("confidence_lookahead", 0.0, 0.3, hy::confidence_arbiter{.read_lookahead = true}.calibrated(calp, t.link, b30));
    row("logistic", 0.0, 0.3, logistic.calibrated(calp, t.link, b30));
    row("random", 0.0, 0.3, hy::random_arbiter{.seed = o.seed}.calibrated(calp, t.link, b30));
    row("device_only", 0.0, 0.0, hy::random_arbiter{.cloud_fraction = 0.0});
    row("cloud_only", 0.0, 1.0, hy::random_arbiter{.cloud_fraction = 1.0});
  }
  write_text(dir / "routing_latency.csv", lat_csv.str());
  write_text(dir / "routing_tradeoff.csv", trade.str());
  return J;
}

// Length-aware scheduling of test prompts on the cloud model, static batches of 16: FIFO
// against the length-aware scheduler fed each named vector of lengths (`lengths[0]` is
// also FIFO's; it ignores them). Step counts are deterministic.
using named_lengths = std::vector<std::pair<std::string, std::vector<double>>>;

json schedule(const std::string& model, const std::vector<std::vector<token_id>>& prompts,
              const specdec::generation_options& gen, const named_lengths& lengths) {
  specdec::cpu::batched_transformer engine_model(model);
  specdec::batched_autoregressive_decoder engine(engine_model);
  auto make = [&](const std::vector<double>& length) {
    std::vector<specdec::scheduled_request> v;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      specdec::scheduled_request s;
      s.request = {.prompt = prompts[i], .options = gen, .id = i};
      s.predicted_length = length[i];
      v.push_back(std::move(s));
    }
    return v;
  };
  // Unlimited memory; an under-predicted sequence is preempted and requeued with a larger
  // prediction (the scheduler's default policy), under FIFO too.
  const specdec::scheduler_options so{.mode = specdec::batching_mode::static_batching, .max_batch = 16,
                                      .memory_budget_bytes = 1e12, .kv_bytes_per_token = 1.0};
  const auto fifo = specdec::simulate(engine, specdec::fifo_scheduler{}, make(lengths.front().second), so);
  json J;
  J["fifo"] = {{"steps", fifo.steps}, {"tokens_per_step", fifo.tokens_per_step}, {"wasted_slot_steps", fifo.wasted_slot_steps}};
  for (const auto& [name, length] : lengths) {
    const auto la = specdec::simulate(engine, specdec::length_aware_scheduler{}, make(length), so);
    J[name] = {{"steps", la.steps},
               {"tokens_per_step", la.tokens_per_step},
               {"wasted_slot_steps", la.wasted_slot_steps},
               {"gain_over_fifo", la.tokens_per_step / fifo.tokens_per_step}};
  }
  return J;
}

// The length workload: predictors fitted on the calibration fold, errors on the test fold
// against the constant (the calibration mean) with a bootstrap interval of the MAE ratio.
// `test_lengths` receives the test fold's true and predicted lengths for the scheduler.
json analyse_length(const eval_options& o, const hy::length_log& log, const std::string& target, std::size_t cap,
                    named_lengths* test_lengths) {
  auto [cal, test] = hy::split_folds(log.requests);
  // Feature sets: each keeps the probe's summaries and some application features.
  auto only = [](std::vector<hy::logged_length> v, std::vector<std::size_t> keep) {
    std::vector<hy::request_features> f;
    for (auto& r : v) {
      std::vector<float> e(r.features.extra.begin(), r.features.extra.begin() + hy::trajectory_feature::count);
      for (std::size_t k : keep) e.push_back(r.features.extra[k]);
      r.features.extra = std::move(e);
      f.push_back(std::move(r.features));
    }
    return f;
  };
  std::vector<double> cal_len, test_len;
  for (const auto& r : cal) cal_len.push_back(static_cast<double>(r.target_tokens));
  for (const auto& r : test) test_len.push_back(static_cast<double>(r.target_tokens));
  const auto constant = hy::constant_length_predictor::fit(cal_len);
  const std::vector<double> pc(test.size(), constant.length);
  const auto ec = hy::prediction_error::of(pc, test_len);
  json J;
  J["target"] = target;
  J["requests"] = log.requests.size();
  J["calibration_requests"] = cal.size();
  J["test_requests"] = test.size();
  J["test_mean"] = std::accumulate(test_len.begin(), test_len.end(), 0.0) / double(test_len.size());
  std::size_t capped = 0;
  for (double l : test_len) capped += l >= double(cap);
  J["test_capped_share"] = double(capped) / double(test_len.size());
  J["predictors"]["constant"] = {{"mae", ec.mean_absolute_error}, {"within_20_percent", ec.within_20_percent},
                                 {"mae_over_constant", 1.0}};
  if (test_lengths) {
    test_lengths->clear();
    test_lengths->emplace_back("constant_lengths", pc);
    test_lengths->emplace_back("true_lengths", test_len);
  }
  // Linear predictors on: the probe alone; each application feature alone (no probe);
  // the probe and every application feature.
  struct feature_set {
    std::string name;
    std::vector<std::size_t> keep;  // application features kept, as indices into `extra`
    bool probe = true;
  };
  std::vector<feature_set> sets{{"linear_probe", {}}};
  std::vector<std::size_t> all;
  for (std::size_t j = 0; j < log.app_features.size(); ++j) {
    all.push_back(hy::trajectory_feature::count + j);
    sets.push_back({"linear_" + log.app_features[j] + "_only", {all.back()}, false});
  }
  if (!all.empty()) sets.push_back({"linear_probe_and_all", all});
  for (const auto& [name, keep, probe] : sets) {
    auto cal_f = only(cal, keep), test_f = only(test, keep);
    if (!probe)  // the application features alone
      for (auto* v : {&cal_f, &test_f})
        for (auto& f : *v) f = {.extra = std::vector<float>(f.extra.end() - static_cast<std::ptrdiff_t>(keep.size()), f.extra.end())};
    const auto p = hy::linear_length_predictor::fit(cal_f, cal_len, 1.0);
    std::vector<double> pred;
    for (const auto& f : test_f) pred.push_back(p.predict(f));
    const auto e = hy::prediction_error::of(pred, test_len);
    const auto ratio = hy::bootstrap(
        test.size(),
        [&](std::span<const std::size_t> ix) {
          double a = 0, b = 0;
          for (std::size_t i : ix) a += std::abs(pred[i] - test_len[i]), b += std::abs(pc[i] - test_len[i]);
          return a / b;
        },
        o.bootstrap, 0.90, o.seed);
    J["predictors"][name] = {{"mae", e.mean_absolute_error},
                             {"within_20_percent", e.within_20_percent},
                             {"mae_over_constant", ratio.estimate},
                             {"mae_over_constant_90ci", {ratio.lower, ratio.upper}}};
    if (test_lengths) test_lengths->emplace_back(name + "_lengths", pred);
  }
  return J;
}

// The routing section of the console summary.
void print_routing(const json& J, std::size_t requests) {
  const json& A = J["analysis"];
  std::printf("%zu requests (%zu test); device good enough on %.0f%% of the test fold\n", requests,
              A["test_requests"].get<std::size_t>(), 100.0 * A["device_ok_share"]["test"].get<double>());
  std::printf("%-20s %7s %16s %7s %7s %7s\n", "arbiter", "APGR", "-0.5 (90% CI)", "CPT50", "CPT80", "AUC");
  for (const auto& [name, r] : A["arbiters"].items())
    std::printf("%-20s %7.3f %+6.3f [%+.3f,%+.3f] %7.3f %7.3f %7s\n", name.c_str(), r["apgr"].get<double>(),
                r["apgr_minus_random"].get<double>(), r["apgr_minus_random_90ci"][0].get<double>(),
                r["apgr_minus_random_90ci"][1].get<double>(), r["cpt50"].get<double>(), r["cpt80"].get<double>(),
                r["auc"].is_null() ? "-" : std::to_string(r["auc"].get<double>()).substr(0, 5).c_str());
  std::printf("length MAE: constant %.2f, linear probe %.2f, device rollout %.2f tokens\n",
              A["length"]["constant"]["mae"].get<double>(), A["length"]["linear_probe"]["mae"].get<double>(),
              A["length"]["device_rollout"]["mae"].get<double>());
  std::printf("difficulty AUC: %s\n", A["difficulty_auc"].dump().c_str());
  if (J.contains("scheduler")) std::printf("scheduler: %s\n", J["scheduler"].dump().c_str());
}

}  // namespace

int main(int argc, char** argv) try {
  eval_options o;
  namespace cli = specdec::cli;
  using cli::store;
  const auto count = cli::between<std::size_t>(1, std::size_t{1} << 20);
  cli::parser p("specdec-hybrid-eval",
                "Routing evaluation on held-out prompts: every arbiter calibrated to the same budgets, "
                "APGR / CPT / AUC against random and oracle, length and difficulty predictors, "
                "tier latencies (docs/hybrid_routing.md).");
  p.add("--out", "DIR", "where the CSV/JSON results go", store(o.out))
      .add("--from-log", "CSV", "analyse a committed routing log instead of running the models", store(o.from_log))
      .add("--length-log", "CSV", "with --from-log: also analyse a committed length-workload log", store(o.length_log))
      .add("--length-tokens", "N", "cap of a length-workload answer (64)", store(o.length_tokens, count))
      .add("--length-stops", "CHARS", "characters ending a KJV length-workload answer (.?!)", store(o.length_stops))
      .add("--story-log", "CSV", "with --from-log: also analyse a committed stories260K length log", store(o.story_log))
      .add("--stories", "N", "stories sampled for the stories260K length workload (2400)", store(o.stories, count))
      .add("--story-tokens", "N", "cap of a sampled story; a continuation gets the rest of the context (300)", store(o.story_tokens, count))
      .flag("--length-only", "run (or, with --from-log, analyse) only the length workload", o.length_only)
      .add("--limit", "N", "use at most N verses (0 = all)", store(o.limit, cli::between<std::size_t>(0, 1 << 20)))
      .add("--words", "N", "prompt words per verse (6)", store(o.words, count))
      .add("--tokens", "N", "tokens per answer (48)", store(o.tokens, count))
      .add("--prefix", "K", "tokens the cloud writes on the cloud-prefix route (4)", store(o.prefix, count))
      .add("--gamma", "G", "draft length of the speculative route (4)", store(o.gamma, cli::between<std::size_t>(1, 1024)))
      .add("--lookahead", "N", "tokens the device writes for its look-ahead probe (8)", store(o.lookahead, count))
      .add("--bootstrap", "B", "bootstrap resamples (2000)", store(o.bootstrap, cli::between<std::size_t>(2, 1 << 20)))
      .add("--seed", "S", "seed of the folds and the bootstrap (1)", store(o.seed))
      .add("--prompts", "TSV", "held-out verses", store(o.prompts))
      .add("--device", "PATH", "device checkpoint", store(o.device))
      .add("--cloud", "PATH", "cloud checkpoint", store(o.cloud))
      .add("--tokenizer", "PATH", "tokenizer", store(o.tokenizer));
  if (!p.parse(argc, argv)) return 0;
  if (o.gamma == 0) throw specdec::invalid_argument("--gamma must be >= 1, got 0");
  if (o.prefix == 0 || o.prefix >= o.tokens)
    throw specdec::invalid_argument("--prefix must be in [1, --tokens), got " + std::to_string(o.prefix));
  if (o.lookahead == 0) throw specdec::invalid_argument("--lookahead must be >= 1, got 0");
  if (o.bootstrap < 2) throw specdec::invalid_argument("--bootstrap must be >= 2, got " + std::to_string(o.bootstrap));
  std::filesystem::create_directories(o.out);
  const auto wall0 = std::chrono::steady_clock::now();

  json J;
  J["tool"] = "specdec-hybrid-eval";
  std::vector<hy::logged_request> log;
  std::vector<built_request> built;
  std::unique_ptr<transformer> little, big;
  specdec::generation_options gen{.max_new_tokens = o.tokens};
  // The length workloads: the KJV verses (kjv-big's answer, kjv-little's probe) and
  // stories260K's own stories.
  struct length_workload {
    std::string name, target, model;
    std::size_t cap = 0;
    specdec::generation_options gen;
    hy::length_log log;
    std::vector<length_request> built;
  };
  transformer story_model(o.story_model);  // 1 MB; its context sets the continuations' cap
  const auto story_gen = story_generation(o, story_model.context_length());
  std::vector<length_workload> workloads{
      {"kjv_verses", "kjv-big's greedy answer to its first sentence end", o.cloud, o.length_tokens,
       {.max_new_tokens = o.length_tokens}, {}, {}},
      {"stories260K", "stories260K's greedy continuation to the story's end", o.story_model,
       story_gen.max_new_tokens, story_gen, {}, {}}};
  if (o.from_log.empty()) {
    little = std::make_unique<transformer>(o.device);
    big = std::make_unique<transformer>(o.cloud);
    const specdec::cpu::tokenizer tok(o.tokenizer, little->vocab_size());
    // EOS and every token holding one of `ends` stop a generation.
    auto stop_at = [&](const char* ends, specdec::generation_options& g) {
      std::vector<token_id> stops{specdec::eos_token};
      for (std::size_t id = 3; id < little->vocab_size(); ++id)
        if (tok.decode_piece(-1, static_cast<token_id>(id)).find_first_of(ends) != std::string::npos) {
          g.stop_sequences.push_back({static_cast<token_id>(id)});
          stops.push_back(static_cast<token_id>(id));
        }
      return stops;
    };
    if (!o.length_only) {
      const auto stops = stop_at(".?!:;", gen);
      built = build_log(o, *little, *big, tok, gen, stops);
      for (const auto& b : built) log.push_back(b.log);
      std::ofstream f(std::filesystem::path(o.out) / "routing_log.csv");
      hy::write_routing_log(f, log);
      J["log"] = "generated";
    }
    auto& kjv = workloads[0];
    kjv.built = build_length_log(o, *little, *big, tok, kjv.gen, stop_at(o.length_stops.c_str(), kjv.gen));
    kjv.log.app_features = length_app_features;
    auto& st = workloads[1];
    st.built = build_story_log(o, story_model, specdec::cpu::tokenizer(o.story_tokenizer, story_model.vocab_size()));
    st.log.app_features = story_app_features;
    for (auto& w : workloads) {
      for (const auto& b : w.built) w.log.requests.push_back(b.log);
      std::ofstream lf(std::filesystem::path(o.out) / (w.name + "_length_log.csv"));
      hy::write_length_log(lf, w.log);
    }
  } else {
    if (!o.length_only) {
      log = hy::read_routing_log(o.from_log);
      J["log"] = o.from_log;
    }
    if (!o.length_log.empty()) workloads[0].log = hy::read_length_log(o.length_log);
    if (!o.story_log.empty()) workloads[1].log = hy::read_length_log(o.story_log);
  }
  std::vector<double> predicted, constant;
  if (!log.empty()) J["analysis"] = analyse(o, log, &predicted, &constant);
  if (!built.empty()) {
    std::vector<std::vector<token_id>> prompts;
    std::vector<double> truth, rollout;
    for (const auto& b : built)
      if (b.log.fold == 1) {
        prompts.push_back(b.prompt);
        truth.push_back(static_cast<double>(b.log.cloud_tokens));
        rollout.push_back(static_cast<double>(b.log.device_tokens));
      }
    J["scheduler"] = schedule(o.cloud, prompts, gen,
                              {{"constant_lengths", constant},
                               {"true_lengths", truth},
                               {"predicted_lengths", predicted},
                               {"device_rollout_lengths", rollout}});
  }
  for (const auto& w : workloads) {
    if (w.log.requests.empty()) continue;
    named_lengths test_lengths;
    json L = analyse_length(o, w.log, w.target, w.cap, &test_lengths);
    if (!w.built.empty()) {
      std::vector<std::vector<token_id>> prompts;
      for (const auto& b : w.built)
        if (b.log.fold == 1) prompts.push_back(b.prompt);
      L["scheduler"] = schedule(w.model, prompts, w.gen, test_lengths);
    }
    J["length_workloads"][w.name] = std::move(L);
  }
  J["wall_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  write_text(std::filesystem::path(o.out) / "routing_summary.json", J.dump(2) + "\n");

  if (J.contains("analysis")) print_routing(J, log.size());
  const json workload_summaries = J.value("length_workloads", json::object());
  for (const auto& [wname, L] : workload_summaries.items()) {
    std::printf("length workload %s (%zu test requests, mean %.1f tokens):\n", wname.c_str(),
                L["test_requests"].get<std::size_t>(), L["test_mean"].get<double>());
    for (const auto& [name, e] : L["predictors"].items())
      std::printf("  %-28s MAE %6.2f  x constant %.2f  within 20%% %.0f%%\n", name.c_str(), e["mae"].get<double>(),
                  e["mae_over_constant"].get<double>(), 100.0 * e["within_20_percent"].get<double>());
    if (L.contains("scheduler")) std::printf("  scheduler: %s\n", L["scheduler"].dump().c_str());
  }
  std::printf("wrote routing_summary.json and the CSV files to %s (%.1f s)\n", o.out.c_str(),
              J["wall_seconds"].get<double>());
  return 0;
} catch (const std::exception& e) {
  std::cerr << "specdec-hybrid-eval: " << e.what() << '\n';
  return 1;
}
