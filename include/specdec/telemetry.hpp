#pragma once
/// \file telemetry.hpp
/// Per-generation statistics of a (speculative) decoder: how many drafts were proposed and
/// accepted, at which draft positions, how often the models were called, and where the wall
/// time went. Serialises to JSON for the benchmark scripts and prints a short summary.
#include <time.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <vector>

#include "specdec/error.hpp"

namespace specdec {

namespace detail {
/// into[i] += from[i], growing `into` with zeros as needed.
inline void add_elementwise(std::vector<std::size_t>& into, const std::vector<std::size_t>& from) {
  if (into.size() < from.size()) into.resize(from.size(), 0);
  for (std::size_t i = 0; i < from.size(); ++i) into[i] += from[i];
}
}  // namespace detail

/// CPU seconds this process has used so far, all its threads (POSIX
/// `CLOCK_PROCESS_CPUTIME_ID`; 0 where the clock cannot be read). Unlike wall time it does
/// not grow while other processes hold the cores, so differences of it measure work on a
/// shared machine (it still counts their effect on shared caches).
///
/// ```cpp
/// const double c0 = specdec::process_cpu_seconds();
/// // ... work ...
/// const double used = specdec::process_cpu_seconds() - c0;
/// ```
[[nodiscard]] inline double process_cpu_seconds() noexcept {
  timespec ts{};
  if (::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0.0;
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// CPU seconds the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`; 0 where
/// the clock cannot be read): `process_cpu_seconds` for one thread's own work.
///
/// ```cpp
/// const double c0 = specdec::thread_cpu_seconds();
/// ```
[[nodiscard]] inline double thread_cpu_seconds() noexcept {
  timespec ts{};
  if (::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0.0;
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Counters and timings of one generation (or, after `merge`, of several).
///
/// The decoder fills it as it goes: `record_verification` after each target verification
/// of a drafted block, `++draft_calls` / `++target_calls` per model forward call,
/// `++fallbacks` when the draft hands over to the target, and `scoped_timer`s around the
/// model calls and the policy work.
///
/// ```cpp
/// specdec::generation_stats s;
/// s.method = "speculative";
/// s.record_verification(4, 3);  // 4 drafted tokens, the first 3 accepted
/// ++s.target_calls;
/// s.tokens_emitted += 3 + 1;    // the accepted drafts plus the replacement token
/// std::cout << s << s.to_json() << '\n';
/// ```
struct generation_stats {
  std::string method;                  ///< decoder / policy name, e.g. "bild", "speculative"
  std::size_t prompt_tokens = 0;       ///< tokens of the prompt
  std::size_t tokens_emitted = 0;      ///< generated tokens (excluding the prompt)
  std::size_t draft_tokens_proposed = 0;  ///< drafted tokens sent to verification
  std::size_t draft_tokens_accepted = 0;  ///< of which verification kept
  /// per_position_proposed[i]: verified blocks that had a drafted token at position i.
  std::vector<std::size_t> per_position_proposed;
  /// per_position_accepted[i]: verified blocks whose token at draft position i was kept.
  std::vector<std::size_t> per_position_accepted;
  std::size_t fallbacks = 0;     ///< times the draft handed over to the target
  std::size_t rollbacks = 0;     ///< verifications that rejected at least one drafted token
  std::size_t draft_calls = 0;   ///< draft model forward calls
  std::size_t target_calls = 0;  ///< target model forward calls
  double draft_seconds = 0.0;    ///< wall time inside the draft model
  double target_seconds = 0.0;   ///< wall time inside the target model
  double policy_seconds = 0.0;   ///< sampling, policies and bookkeeping
  double total_seconds = 0.0;    ///< the whole generation
  /// Wall time from the start of the generation to the end of the first step that
  /// emitted tokens (time to first token: it includes the prompt's prefill); 0 if none.
  double first_token_seconds = 0.0;
  /// Tokens that first step emitted (a verification can emit several at once).
  std::size_t first_step_tokens = 0;

  /// Records the end of a decoding step `seconds_since_start` into the generation: the
  /// first step that emitted tokens sets `first_token_seconds` and `first_step_tokens`;
  /// later calls change nothing. Decoders call it after every step.
  void record_step_end(double seconds_since_start) noexcept {
    if (!awaiting_first_step()) return;
    first_step_tokens = tokens_emitted;
    first_token_seconds = seconds_since_start;
  }
  /// Whether `record_step_end` would record anything (so callers can skip reading the clock).
  [[nodiscard]] bool awaiting_first_step() const noexcept { return first_step_tokens == 0 && tokens_emitted > 0; }

  /// Records one verification of `proposed` drafted tokens of which the first `accepted`
  /// survived: updates the totals, the per-position counts, and `rollbacks` (when
  /// accepted < proposed). Throws `invalid_argument` if accepted > proposed.
  void record_verification(std::size_t proposed, std::size_t accepted) {
    if (accepted > proposed) {
      throw invalid_argument("generation_stats::record_verification: accepted = " +
                             std::to_string(accepted) + " exceeds proposed = " +
                             std::to_string(proposed) + "; expected accepted <= proposed");
    }
    draft_tokens_proposed += proposed;
    draft_tokens_accepted += accepted;
    if (per_position_proposed.size() < proposed) per_position_proposed.resize(proposed, 0);
    if (per_position_accepted.size() < per_position_proposed.size())
      per_position_accepted.resize(per_position_proposed.size(), 0);
    for (std::size_t i = 0; i < proposed; ++i) ++per_position_proposed[i];
    for (std::size_t i = 0; i < accepted; ++i) ++per_position_accepted[i];
    if (accepted < proposed) ++rollbacks;
  }

  /// accepted / proposed drafted tokens; 0 when nothing was proposed.
  [[nodiscard]] double acceptance_rate() const noexcept {
    return draft_tokens_proposed == 0
               ? 0.0
               : static_cast<double>(draft_tokens_accepted) /
                     static_cast<double>(draft_tokens_proposed);
  }

  /// Tokens emitted per target call: on average the accepted drafts plus the one
  /// replacement or bonus token each call yields. 0 when the target was never called.
  [[nodiscard]] double mean_accepted_per_target_call() const noexcept {
    return target_calls == 0
               ? 0.0
               : static_cast<double>(tokens_emitted) / static_cast<double>(target_calls);
  }

  /// Acceptance rate at draft position i (0-based); 0 where nothing was proposed.
  [[nodiscard]] double position_acceptance_rate(std::size_t i) const noexcept {
    if (i >= per_position_proposed.size() || per_position_proposed[i] == 0) return 0.0;
    const std::size_t acc = i < per_position_accepted.size() ? per_position_accepted[i] : 0;
    return static_cast<double>(acc) / static_cast<double>(per_position_proposed[i]);
  }

  /// Generated tokens per second of total wall time; 0 when no time was recorded.
  [[nodiscard]] double tokens_per_second() const noexcept {
    return total_seconds > 0.0 ? static_cast<double>(tokens_emitted) / total_seconds : 0.0;
  }

  /// Decode-phase rate: the tokens after the first step over the time after it,
  /// (tokens_emitted - first_step_tokens) / (total_seconds - first_token_seconds), i.e.
  /// without the prompt's prefill and the first step (time to first token), the part
  /// of a generation that the speculative-decoding speedup formula models. 0 when no
  /// token or no time came after the first step.
  [[nodiscard]] double decode_tokens_per_second() const noexcept {
    const double t = total_seconds - first_token_seconds;
    return tokens_emitted > first_step_tokens && t > 0.0
               ? static_cast<double>(tokens_emitted - first_step_tokens) / t
               : 0.0;
  }

  /// Adds `other`'s counts and times to this (per-position arrays element-wise), to
  /// aggregate several runs (`first_token_seconds` and `first_step_tokens` add up too, so
  /// `decode_tokens_per_second` of the sum is the decode rate over all the runs). An empty `method` takes `other`'s; two different non-empty
  /// methods throw `invalid_argument`, since their per-position counts do not mix.
  generation_stats& merge(const generation_stats& other);

  /// One JSON object with every field plus the derived rates. Rates that are undefined
  /// (nothing proposed, no target call, no time) and any non-finite time are written as
  /// null, never NaN or inf. Doubles are written in shortest round-trip form.
  [[nodiscard]] std::string to_json() const;

};

namespace detail {

/// Appends `s` as a JSON string literal (quotes included), escaping `"`, `\` and control
/// characters. Bytes >= 0x80 pass through: valid UTF-8 in gives valid JSON out.
inline void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

/// Appends a finite double in shortest round-trip form, or null if it is NaN or inf.
inline void append_json_number(std::string& out, double v) {
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc{}) {
    out += "null";  // cannot happen for a finite double in 32 chars; stay valid regardless
    return;
  }
  out.append(buf, end);
}

inline void append_json_number(std::string& out, std::size_t v) { out += std::to_string(v); }

/// Appends a rate, or null when it is undefined (`defined` false).
inline void append_json_rate(std::string& out, bool defined, double v) {
  if (defined) {
    append_json_number(out, v);
  } else {
    out += "null";
  }
}

inline void append_json_array(std::string& out, const std::vector<std::size_t>& v) {
  out += '[';
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += ',';
    append_json_number(out, v[i]);
  }
  out += ']';
}

/// Writes `"key":` after a comma unless it is the first member.
inline void append_json_key(std::string& out, std::string_view key) {
  if (out.back() != '{') out += ',';
  append_json_string(out, key);
  out += ':';
}

}  // namespace detail

/// A named member of `generation_stats`.
template <class T>
struct stats_field {
  std::string_view name;
  T generation_stats::*member;
};

/// The one list of `generation_stats`' stored fields, in JSON order: merging and JSON
/// walk it, so a new field is added here once (and printed by `operator<<` if it is
/// worth a line of the summary).
inline constexpr auto generation_stats_fields = std::tuple{
    stats_field<std::string>{"method", &generation_stats::method},
    stats_field<std::size_t>{"prompt_tokens", &generation_stats::prompt_tokens},
    stats_field<std::size_t>{"tokens_emitted", &generation_stats::tokens_emitted},
    stats_field<std::size_t>{"draft_tokens_proposed", &generation_stats::draft_tokens_proposed},
    stats_field<std::size_t>{"draft_tokens_accepted", &generation_stats::draft_tokens_accepted},
    stats_field<std::vector<std::size_t>>{"per_position_proposed", &generation_stats::per_position_proposed},
    stats_field<std::vector<std::size_t>>{"per_position_accepted", &generation_stats::per_position_accepted},
    stats_field<std::size_t>{"fallbacks", &generation_stats::fallbacks},
    stats_field<std::size_t>{"rollbacks", &generation_stats::rollbacks},
    stats_field<std::size_t>{"draft_calls", &generation_stats::draft_calls},
    stats_field<std::size_t>{"target_calls", &generation_stats::target_calls},
    stats_field<double>{"draft_seconds", &generation_stats::draft_seconds},
    stats_field<double>{"target_seconds", &generation_stats::target_seconds},
    stats_field<double>{"policy_seconds", &generation_stats::policy_seconds},
    stats_field<double>{"total_seconds", &generation_stats::total_seconds},
    stats_field<double>{"first_token_seconds", &generation_stats::first_token_seconds},
    stats_field<std::size_t>{"first_step_tokens", &generation_stats::first_step_tokens},
};

/// Calls `f(field)` for each entry of `generation_stats_fields`.
template <class F>
constexpr void for_each_stats_field(F&& f) {
  std::apply([&](const auto&... field) { (f(field), ...); }, generation_stats_fields);
}

inline generation_stats& generation_stats::merge(const generation_stats& other) {
  if (method.empty()) {
    method = other.method;
  } else if (!other.method.empty() && other.method != method) {
    throw invalid_argument("generation_stats::merge: cannot merge method '" + other.method + "' into '" + method +
                           "'; expected the same method");
  }
  for_each_stats_field([&](const auto& field) {
    auto& into = this->*field.member;
    const auto& from = other.*field.member;
    using T = std::remove_cvref_t<decltype(into)>;
    if constexpr (std::is_same_v<T, std::vector<std::size_t>>) detail::add_elementwise(into, from);
    else if constexpr (std::is_arithmetic_v<T>) into += from;
  });
  return *this;
}

inline std::string generation_stats::to_json() const {
  using namespace detail;
  std::string out = "{";
  for_each_stats_field([&](const auto& field) {
    append_json_key(out, field.name);
    const auto& v = this->*field.member;
    using T = std::remove_cvref_t<decltype(v)>;
    if constexpr (std::is_same_v<T, std::string>) append_json_string(out, v);
    else if constexpr (std::is_same_v<T, std::vector<std::size_t>>) append_json_array(out, v);
    else append_json_number(out, v);
  });
  // Derived rates (null where undefined).
  append_json_key(out, "acceptance_rate");
  append_json_rate(out, draft_tokens_proposed > 0, acceptance_rate());
  append_json_key(out, "mean_accepted_per_target_call");
  append_json_rate(out, target_calls > 0, mean_accepted_per_target_call());
  append_json_key(out, "per_position_acceptance_rate");
  out += '[';
  for (std::size_t i = 0; i < per_position_proposed.size(); ++i) {
    if (i) out += ',';
    append_json_rate(out, per_position_proposed[i] > 0, position_acceptance_rate(i));
  }
  out += ']';
  append_json_key(out, "tokens_per_second");
  append_json_rate(out, total_seconds > 0.0, tokens_per_second());
  append_json_key(out, "decode_tokens_per_second");
  append_json_rate(out, decode_tokens_per_second() > 0.0, decode_tokens_per_second());
  out += '}';
  return out;
}

/// A compact multi-line human-readable summary; leaves the stream's format flags alone.
///
/// ```
/// method bild: 12 prompt tokens, 128 tokens emitted
///   drafts: 150/200 accepted (75.0%), 30 rollbacks, 12 fallbacks
///   per position: 0:90.0% 1:80.0% 2:70.0%
///   calls: 160 draft, 40 target (3.20 tokens per target call)
///   time: 1.234 s total = draft 0.500 + target 0.600 + policy 0.100 (103.7 tokens/s)
///   first step: 3 tokens after 0.021 s; then 103.5 tokens/s
/// ```
inline std::ostream& operator<<(std::ostream& os, const generation_stats& s) {
  std::ostringstream o;  // own formatting state, so the caller's stream is not altered
  o.setf(std::ios::fixed);
  o.precision(1);
  o << "method " << (s.method.empty() ? std::string("(unnamed)") : s.method) << ": "
    << s.prompt_tokens << " prompt tokens, " << s.tokens_emitted << " tokens emitted\n";
  o << "  drafts: " << s.draft_tokens_accepted << '/' << s.draft_tokens_proposed << " accepted";
  if (s.draft_tokens_proposed > 0) o << " (" << 100.0 * s.acceptance_rate() << "%)";
  o << ", " << s.rollbacks << " rollbacks, " << s.fallbacks << " fallbacks\n";
  if (!s.per_position_proposed.empty()) {
    o << "  per position:";
    for (std::size_t i = 0; i < s.per_position_proposed.size(); ++i)
      o << ' ' << i << ':' << 100.0 * s.position_acceptance_rate(i) << '%';
    o << '\n';
  }
  o << "  calls: " << s.draft_calls << " draft, " << s.target_calls << " target";
  if (s.target_calls > 0) {
    o.precision(2);
    o << " (" << s.mean_accepted_per_target_call() << " tokens per target call)";
  }
  o << '\n';
  o.precision(3);
  o << "  time: " << s.total_seconds << " s total = draft " << s.draft_seconds << " + target "
    << s.target_seconds << " + policy " << s.policy_seconds;
  if (s.total_seconds > 0.0) {
    o.precision(1);
    o << " (" << s.tokens_per_second() << " tokens/s)";
  }
  o << '\n';
  if (s.first_step_tokens > 0) {
    o.precision(3);
    o << "  first step: " << s.first_step_tokens << (s.first_step_tokens == 1 ? " token" : " tokens") << " after "
      << s.first_token_seconds << " s";
    if (s.decode_tokens_per_second() > 0.0) {
      o.precision(1);
      o << "; then " << s.decode_tokens_per_second() << " tokens/s";
    }
    o << '\n';
  }
  return os << o.str();
}

/// Adds the seconds elapsed between its construction and destruction to a `double`, using
/// `std::chrono::steady_clock`. Neither copyable nor movable: one timer, one scope.
///
/// ```cpp
/// {
///   specdec::scoped_timer t(stats.target_seconds);
///   out = target.forward(block);
/// }  // stats.target_seconds += elapsed
/// ```
class scoped_timer {
 public:
  using clock = std::chrono::steady_clock;

  [[nodiscard]] explicit scoped_timer(double& sink) noexcept : sink_(sink), start_(clock::now()) {}
  scoped_timer(const scoped_timer&) = delete;
  scoped_timer& operator=(const scoped_timer&) = delete;
  ~scoped_timer() { sink_ += elapsed(); }

  /// Seconds since construction (the timer keeps running).
  [[nodiscard]] double elapsed() const noexcept {
    return std::chrono::duration<double>(clock::now() - start_).count();
  }

 private:
  double& sink_;
  clock::time_point start_;
};

}  // namespace specdec
