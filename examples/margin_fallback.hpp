#pragma once
/// \file examples/margin_fallback.hpp
/// Two user-defined extensions, written only against specdec's public concepts: a fallback
/// policy that hands over when the draft's top-2 margin is small, and an L-infinity
/// distance metric for BiLD-style rollback. Shared by examples/custom_policy.cpp and
/// tests/test_contracts_examples.cpp.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include <specdec/error.hpp>
#include <specdec/fallback.hpp>
#include <specdec/token.hpp>

namespace example {

/// Stop drafting when the draft is torn between its two best tokens: if
/// q(1st) - q(2nd) < `min_margin`, the token is discarded and the target writes that
/// position; otherwise drafting continues up to `max_draft` kept tokens.
///
/// ```cpp
/// example::top2_margin_fallback policy{.min_margin = 0.3f, .max_draft = 8};
/// static_assert(specdec::fallback_policy<example::top2_margin_fallback>);
/// ```
struct top2_margin_fallback {
  float min_margin = 0.3f;    ///< in [0, 1]; 0 never discards
  std::size_t max_draft = 8;  ///< >= 1

  void validate() const {
    if (!(min_margin >= 0.0f && min_margin <= 1.0f))
      throw specdec::invalid_argument("top2_margin_fallback.min_margin must be in [0, 1], got " +
                                      std::to_string(min_margin));
    if (max_draft == 0)
      throw specdec::invalid_argument("top2_margin_fallback.max_draft must be >= 1, got 0");
  }

  /// The top-2 margin of a distribution (the top probability if it has one entry).
  [[nodiscard]] static float margin(std::span<const float> q) {
    float first = 0.0f, second = 0.0f;
    for (float x : q) {
      if (x > first) {
        second = first;
        first = x;
      } else if (x > second) {
        second = x;
      }
    }
    return first - second;
  }

  [[nodiscard]] specdec::draft_action decide(const specdec::draft_step& s) const {
    if (margin(s.q) < min_margin) return specdec::draft_action::discard_and_stop;
    return s.position + 1 >= max_draft ? specdec::draft_action::keep_and_stop
                                       : specdec::draft_action::keep_and_continue;
  }
  void observe(const specdec::step_outcome&) noexcept {}  // nothing to learn
};

/// L-infinity distance max_i |p_S(i) - p_L(i)| between the draft's and the target's
/// distributions: symmetric, in [0, 1], 0 on equal inputs.
///
/// ```cpp
/// specdec::distance_rollback<example::max_abs_difference> rb{.alpha_rb = 0.5f};
/// ```
struct max_abs_difference {
  static constexpr std::string_view name = "linf";

  [[nodiscard]] float operator()(std::span<const float> p_draft, std::span<const float> p_target,
                                 specdec::token_id drafted) const {
    if (p_draft.size() != p_target.size() || drafted < 0 ||
        static_cast<std::size_t>(drafted) >= p_target.size())
      throw specdec::invalid_argument("distance metric 'linf': sizes " + std::to_string(p_draft.size()) +
                                      " and " + std::to_string(p_target.size()) + ", drafted token " +
                                      std::to_string(drafted) +
                                      "; expected equal sizes and 0 <= token < size");
    float m = 0.0f;
    for (std::size_t i = 0; i < p_draft.size(); ++i) m = std::max(m, std::abs(p_draft[i] - p_target[i]));
    return m;
  }
};

}  // namespace example
