#pragma once
/// \file probe.hpp
/// What the device (small) model's own distribution says about a request before it is
/// routed. `probe_request` forwards the prompt once; `probe_trajectory` also lets the
/// device write its first few greedy tokens ("look-ahead") and summarises the whole
/// trajectory: entropy level and slope, top-2 margin, how fast confidence decays, how
/// surprised the device is by the prompt, and how likely a stop token is at each step.
/// Both fill `request_features`; `probe_trajectory` puts its summaries in
/// `request_features::extra` in the order of `trajectory_feature_names`.
///
/// ```cpp
/// auto p = specdec::hybrid::probe_trajectory(little, prompt, {.lookahead_tokens = 8, .stop_tokens = {2}});
/// double margin = p.features.extra[specdec::hybrid::trajectory_feature::mean_margin];
/// ```
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/predictor.hpp"
#include "specdec/model.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"

namespace specdec::hybrid {

namespace detail {
/// Fills `probe_request`'s fields of `f` from the prompt's logits rows and returns the
/// mean surprise -log p(prompt[i+1]) of rows 0..n-2 (0 for a one-token prompt).
inline double summarise_prompt_rows(const logits_block& out, std::span<const token_id> prompt,
                                    request_features& f) {
  f.prompt_tokens = prompt.size();
  std::vector<float> p(out.vocab);
  double h_sum = 0.0, m_sum = 0.0, nll = 0.0;
  for (std::size_t i = 0; i < out.rows; ++i) {
    softmax(out.row(i), p);
    const float h = entropy(p);
    h_sum += h;
    m_sum += *std::max_element(p.begin(), p.end());
    if (i + 1 == out.rows) f.draft_first_token_entropy = h;
    else nll -= std::log(std::max(1e-30, static_cast<double>(p[static_cast<std::size_t>(prompt[i + 1])])));
  }
  f.draft_mean_entropy = static_cast<float>(h_sum / static_cast<double>(out.rows));
  f.draft_max_prob_mean = static_cast<float>(m_sum / static_cast<double>(out.rows));
  return out.rows > 1 ? nll / static_cast<double>(out.rows - 1) : 0.0;
}
template <language_model M>
logits_block forward_prompt(M& model, std::span<const token_id> prompt, const char* what) {
  if (prompt.empty())
    throw invalid_argument(std::string(what) + ": the prompt is empty; expected at least one token (e.g. BOS = 1)");
  model.truncate(0);
  return model.forward(prompt);
}
}  // namespace detail

/// The device model's confidence over the prompt: the `request_features` fields a probe
/// fills (prompt length, mean entropy and max probability of the softmax rows over all
/// prompt positions, the last of which is the first generated token's, and that last
/// row's entropy). Forwards the prompt once from an empty cache and leaves the cache
/// holding the prompt.
///
/// ```cpp
/// specdec::hybrid::request_features f = specdec::hybrid::probe_request(little, prompt);
/// ```
template <language_model M>
[[nodiscard]] request_features probe_request(M& model, std::span<const token_id> prompt) {
  request_features f;
  (void)detail::summarise_prompt_rows(detail::forward_prompt(model, prompt, "probe_request"), prompt, f);
  return f;
}

/// Knobs of `probe_trajectory`.
///
/// ```cpp
/// specdec::hybrid::trajectory_options o{.lookahead_tokens = 8, .stop_tokens = {2, 30}};
/// o.validate();
/// ```
struct trajectory_options {
  std::size_t lookahead_tokens = 8;     ///< >= 1 greedy device tokens after the prompt
  std::vector<token_id> stop_tokens{};  ///< tokens that end a response (EOS, sentence ends)

  void validate() const {
    if (lookahead_tokens == 0)
      throw invalid_argument("trajectory_options.lookahead_tokens must be >= 1, got 0");
  }
};

/// A trajectory probe: the features and the device's greedy look-ahead tokens (fewer than
/// `lookahead_tokens` when a stop token or the context ended them).
///
/// ```cpp
/// auto p = specdec::hybrid::probe_trajectory(little, prompt, {.lookahead_tokens = 8});
/// // p.lookahead are the device route's first greedy tokens
/// ```
struct trajectory_probe {
  request_features features;
  std::vector<token_id> lookahead;
};

/// Forwards the prompt from an empty cache, then decodes up to `lookahead_tokens` greedy
/// tokens one at a time (stopping after a stop token), and summarises the device's
/// distributions: `probe_request`'s fields over the prompt rows, plus the
/// `trajectory_feature` summaries in `extra`. Leaves the cache holding the prompt and
/// the look-ahead tokens but the last.
///
/// ```cpp
/// auto p = specdec::hybrid::probe_trajectory(little, prompt, {.lookahead_tokens = 8, .stop_tokens = {2}});
/// f = p.features;  // extra.size() == trajectory_feature::count
/// ```
template <language_model M>
[[nodiscard]] trajectory_probe probe_trajectory(M& model, std::span<const token_id> prompt,
                                                const trajectory_options& opts = {}) {
  opts.validate();
  trajectory_probe out;
  const std::size_t vocab = static_cast<std::size_t>(model.vocab_size());
  std::vector<float> p(vocab);
  const logits_block rows = detail::forward_prompt(model, prompt, "probe_trajectory");
  const double prompt_nll = detail::summarise_prompt_rows(rows, prompt, out.features);
  softmax(rows.row(rows.rows - 1), p);  // the first generated position
  std::vector<double> h, top1, margin, hazard;
  const std::size_t room = static_cast<std::size_t>(model.context_length()) - prompt.size();
  std::size_t stopped_at = 0;
  for (std::size_t j = 0;; ++j) {
    std::array<float, 2> best{0.0f, 0.0f};
    double stop_mass = 0.0;
    for (float v : p) {
      if (v > best[0]) best = {v, best[0]};
      else if (v > best[1]) best[1] = v;
    }
    for (token_id s : opts.stop_tokens)
      if (s >= 0 && static_cast<std::size_t>(s) < vocab) stop_mass += p[static_cast<std::size_t>(s)];
    h.push_back(entropy(p));
    top1.push_back(best[0]);
    margin.push_back(static_cast<double>(best[0]) - best[1]);
    hazard.push_back(stop_mass);
    const token_id t = static_cast<token_id>(std::max_element(p.begin(), p.end()) - p.begin());
    out.lookahead.push_back(t);
    if (std::find(opts.stop_tokens.begin(), opts.stop_tokens.end(), t) != opts.stop_tokens.end()) {
      stopped_at = j + 1;
      break;
    }
    if (j + 1 >= opts.lookahead_tokens || j + 1 >= room) break;
    const std::array<token_id, 1> one{t};
    softmax(model.forward(one).row(0), p);
  }
  const std::size_t n = h.size();
  const double nd = static_cast<double>(n);
  auto mean = [](const std::vector<double>& v, std::size_t b, std::size_t e) {
    double s = 0.0;
    for (std::size_t i = b; i < e; ++i) s += v[i];
    return e > b ? s / static_cast<double>(e - b) : 0.0;
  };
  double slope = 0.0;
  if (n > 1) {  // least squares of h against position
    const double xm = (nd - 1.0) / 2.0, hm = mean(h, 0, n);
    double sxy = 0.0, sxx = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      sxy += (static_cast<double>(i) - xm) * (h[i] - hm);
      sxx += (static_cast<double>(i) - xm) * (static_cast<double>(i) - xm);
    }
    slope = sxy / sxx;
  }
  const std::size_t half = (n + 1) / 2;
  std::vector<float>& x = out.features.extra;
  x.assign(trajectory_feature::count, 0.0f);
  x[trajectory_feature::mean_entropy] = static_cast<float>(mean(h, 0, n));
  x[trajectory_feature::entropy_slope] = static_cast<float>(slope);
  x[trajectory_feature::mean_margin] = static_cast<float>(mean(margin, 0, n));
  x[trajectory_feature::min_max_prob] = static_cast<float>(*std::min_element(top1.begin(), top1.end()));
  x[trajectory_feature::confidence_decay] =
      static_cast<float>(n > 1 ? mean(top1, 0, half) - mean(top1, half, n) : 0.0);
  x[trajectory_feature::prompt_nll] = static_cast<float>(prompt_nll);
  x[trajectory_feature::stop_hazard] = static_cast<float>(mean(hazard, 0, n));
  x[trajectory_feature::stopped_at] = static_cast<float>(stopped_at);
  return out;
}

}  // namespace specdec::hybrid
