#pragma once
/// \file generation.hpp
/// What every decoder shares about one generation: the options that bound it
/// (`generation_options`), what it returns (`generation_result`), why it stopped
/// (`stop_reason`), and the one committer that appends tokens and applies the stop rules
/// (EOS, stop sequences, budget, callback). The single-sequence decoders, the batched
/// decoders and the hybrid session all commit through `detail::committer`.
///
/// ```cpp
/// specdec::generation_result r = dec.generate(prompt, {.max_new_tokens = 32});
/// if (r.stop_reason == specdec::stop_reason::eos) std::cout << "finished: " << r.stop_reason << '\n';
/// ```
#include <algorithm>
#include <cstddef>
#include <functional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"

namespace specdec {

/// Why a generation stopped. `none` = it has not (yet).
///
/// ```cpp
/// static_assert(specdec::to_string(specdec::stop_reason::max_tokens) == "max_tokens");
/// ```
enum class stop_reason {
  none,           ///< still running
  eos,            ///< emitted `eos_token` (kept in the output)
  max_tokens,     ///< reached `generation_options::max_new_tokens`
  stop_sequence,  ///< the output ends with one of `generation_options::stop_sequences`
  context,        ///< the committed sequence filled the context
  callback,       ///< the token callback returned false
  preempted,      ///< a batched decoder's `preempt` took the request out
};

/// The reason's name, as written in JSON and logs ("" for `none`).
[[nodiscard]] constexpr std::string_view to_string(stop_reason r) noexcept {
  switch (r) {
    case stop_reason::none: return "";
    case stop_reason::eos: return "eos";
    case stop_reason::max_tokens: return "max_tokens";
    case stop_reason::stop_sequence: return "stop_sequence";
    case stop_reason::context: return "context";
    case stop_reason::callback: return "callback";
    case stop_reason::preempted: return "preempted";
  }
  return "";
}

/// `r == "eos"`: compares by name, so logs and tests can name a reason as text.
[[nodiscard]] constexpr bool operator==(stop_reason r, std::string_view name) noexcept { return to_string(r) == name; }

inline std::ostream& operator<<(std::ostream& os, stop_reason r) { return os << to_string(r); }

/// When and how a generation stops.
struct generation_options {
  std::size_t max_new_tokens = 128;  ///< never emit more than this many tokens
  bool stop_at_eos = true;           ///< stop after emitting `eos_token` (it is kept in the output)
  /// Generation stops right after the generated tokens end with one of these sequences
  /// (matched against generated tokens only, never the prompt); the sequence is kept in
  /// the output. Each sequence must be non-empty.
  std::vector<std::vector<token_id>> stop_sequences{};
  /// Bring the models' caches to "S minus its last token" before returning (see decoder.hpp).
  bool sync_caches = true;
};

/// What `generate` returns.
struct generation_result {
  std::vector<token_id> tokens;  ///< generated tokens only, not the prompt
  generation_stats stats;
  specdec::stop_reason stop_reason = specdec::stop_reason::none;  ///< why generation stopped
};

/// The default token callback: does nothing.
struct no_callback {
  constexpr void operator()(token_id) const noexcept {}
};

namespace detail {

/// Calls `f(t)`; returns false only if `f` returns something that converts to false.
template <class F>
bool invoke_on_token(F& f, token_id t) {
  static_assert(std::is_invocable_v<F&, token_id>,
                "specdec: the on_token callback must be callable as f(specdec::token_id) and "
                "return void or bool (false = stop now)");
  using R = std::invoke_result_t<F&, token_id>;
  if constexpr (std::is_void_v<R>) {
    std::invoke(f, t);
    return true;
  } else {
    static_assert(std::is_convertible_v<R, bool>,
                  "specdec: the on_token callback must return void or something convertible to bool");
    return static_cast<bool>(std::invoke(f, t));
  }
}

/// The committed length at which a generation of `opts` after `prompt` ends at the
/// latest within `context` tokens (prompt < context, as `validate_request` checks).
[[nodiscard]] inline std::size_t final_length(std::span<const token_id> prompt, const generation_options& opts,
                                              std::size_t context) noexcept {
  return prompt.size() + std::min(opts.max_new_tokens, context - prompt.size());
}

/// Checks a request before any model runs: a non-empty prompt of in-range ids that leaves
/// room for one generated token, and non-empty in-range stop sequences.
inline void validate_request(std::span<const token_id> prompt, const generation_options& opts,
                             std::size_t vocab, std::size_t context, const char* who) {
  if (prompt.empty())
    throw invalid_argument(std::string(who) +
                           ": the prompt is empty; expected at least one token (e.g. BOS = 1)");
  check_token_ids(prompt, vocab, who);
  if (prompt.size() >= context)
    throw context_overflow(std::string(who) + ": the prompt has " + std::to_string(prompt.size()) +
                           " tokens but the context length is " + std::to_string(context) +
                           "; expected at most " + std::to_string(context - 1) +
                           " prompt tokens so that at least one token can be generated");
  for (std::size_t i = 0; i < opts.stop_sequences.size(); ++i) {
    if (opts.stop_sequences[i].empty())
      throw invalid_argument(std::string(who) + ": generation_options.stop_sequences[" +
                             std::to_string(i) + "] is empty; expected at least one token");
    check_token_ids(opts.stop_sequences[i], vocab, who);
  }
}

/// True when `out` ends with one of `stops` (each non-empty).
[[nodiscard]] inline bool ends_with_any(std::span<const token_id> out,
                                        const std::vector<std::vector<token_id>>& stops) noexcept {
  return std::ranges::any_of(stops, [&](const std::vector<token_id>& s) {
    return s.size() <= out.size() && std::ranges::equal(s, out.last(s.size()));
  });
}

/// The one committer: appends tokens to S and the result one at a time, calls the
/// callback, and applies the stop rules in a fixed order (EOS, stop sequence, budget,
/// callback). Every decoder commits through it.
template <class OnToken>
class committer {
 public:
  committer(std::vector<token_id>& seq, generation_result& result, const generation_options& opts,
            OnToken& on_token)
      : seq_(seq), result_(result), opts_(opts), on_token_(on_token) {}

  /// Emits `t`; returns false when generation must stop (and sets the stop reason).
  bool emit(token_id t) {
    seq_.push_back(t);
    result_.tokens.push_back(t);
    ++result_.stats.tokens_emitted;
    const bool keep_going = invoke_on_token(on_token_, t);
    if (opts_.stop_at_eos && t == eos_token) return stop(stop_reason::eos);
    if (ends_with_any(result_.tokens, opts_.stop_sequences)) return stop(stop_reason::stop_sequence);
    if (result_.tokens.size() >= opts_.max_new_tokens) return stop(stop_reason::max_tokens);
    if (!keep_going) return stop(stop_reason::callback);
    return true;
  }

  /// Emits `tokens` in order until one stops the generation; returns false if one did.
  bool emit_all(std::span<const token_id> tokens) {
    for (const token_id t : tokens)
      if (!emit(t)) return false;
    return true;
  }

  [[nodiscard]] bool stopped() const noexcept { return result_.stop_reason != stop_reason::none; }
  /// Whether a decoding loop goes on: not stopped, and S below `context` tokens (else the
  /// generation stops with `context`).
  bool room_left(std::size_t context) noexcept {
    if (!stopped() && seq_.size() >= context) stop(stop_reason::context);
    return !stopped();
  }
  /// Ends the generation with `why`; returns false (so `return out.stop(...)` reads as "stop").
  bool stop(stop_reason why) noexcept {
    result_.stop_reason = why;
    return false;
  }
  [[nodiscard]] std::size_t remaining() const noexcept {
    return opts_.max_new_tokens - result_.tokens.size();
  }

 private:
  std::vector<token_id>& seq_;
  generation_result& result_;
  const generation_options& opts_;
  OnToken& on_token_;
};

}  // namespace detail
}  // namespace specdec
