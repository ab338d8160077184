#pragma once
/// \file hybrid/remote_verifier.hpp
/// Split speculative decoding over a real network: `remote_verifier` models
/// `specdec::verifier` over a `verify_client` connected to `specdec-serve`, so
/// `basic_speculative_decoder` drafts on the device (with any fallback policy) and
/// verifies in the cloud. Greedy sends token ids up and gets verdicts down. Sampling
/// sends, per draft position, the exact distribution the draft token was drawn from,
/// restricted to its support (so a draft that samples with top-k / top-p sends k entries,
/// not the vocabulary): rejection sampling is exact for any q the verifier knows exactly,
/// so the output still follows the target's distribution. A generation's first block goes
/// out right behind its session's `open_session` (`verify_client::open_and_verify`): the
/// open costs no round trip of its own.
///
/// `failover_verifier` keeps a generation going when the link fails: on a timeout, a
/// refused connection or a server error it verifies with a backup verifier on the device
/// (e.g. the device's own model), from the committed prefix, and tries the primary again
/// after `retry_seconds`. A request the privacy gate refuses (`privacy_violation`: its
/// class may not leave the device on this route) is verified by the backup for the whole
/// generation, without another attempt. No token is lost or duplicated: the committed sequence is the
/// decoder's, and each verifier re-synchronises from it when it takes over.
///
/// ```cpp
/// specdec::hybrid::remote_verifier cloud("127.0.0.1", port, {.vocab = little.vocab_size()});
/// specdec::basic_speculative_decoder dec(little, specdec::fixed_gamma{.gamma = 4}, std::move(cloud));
/// auto r = dec.generate(prompt, {.max_new_tokens = 64});
/// ```
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "specdec/draft.hpp"
#include "specdec/error.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/hybrid/link_monitor.hpp"
#include "specdec/hybrid/verify_client.hpp"
#include "specdec/hybrid/wire.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"
#include "specdec/verifier.hpp"

namespace specdec::hybrid {

/// Knobs of a `remote_verifier`.
///
/// ```cpp
/// specdec::hybrid::remote_verifier_options o{.vocab = 2048, .context = 1024};
/// ```
struct remote_verifier_options {
  std::size_t vocab = 0;      ///< the device draft's vocabulary; the server's must match (> 0)
  std::size_t context = 0;    ///< the most tokens S may hold on the device side (0 = the server's)
  verify_client_options client{};  ///< `client.audit`: where every frame sent is recorded
  /// The request's class (from the detector), route and detected spans (uplink.hpp): a
  /// request that may not leave the device under them never connects.
  request_privacy privacy = hybrid::privacy::may_leave_device;
  /// Fed with every round trip and failure (shared with whoever routes from it); null =
  /// the verifier's own.
  std::shared_ptr<link_monitor> monitor{};

  void validate() const {
    if (vocab == 0) specdec::detail::fail_knob("remote_verifier_options.vocab", "0", "the draft's vocabulary size (> 0)");
    client.validate();
  }
};

/// A verifier on a `specdec-serve` process (see the file comment). Move-only: it owns a
/// connection.
class remote_verifier {
 public:
  static constexpr bool exact = true;

  remote_verifier(std::string host, std::uint16_t port, remote_verifier_options o)
      : opt_(std::move(o)), client_(std::make_unique<verify_client>(std::move(host), port, opt_.client)) {
    opt_.validate();
    if (!opt_.monitor) opt_.monitor = std::make_shared<link_monitor>();
  }

  [[nodiscard]] std::size_t vocab_size() const noexcept { return opt_.vocab; }
  [[nodiscard]] std::size_t context_length() const noexcept {
    if (opt_.context != 0) return opt_.context;
    return client_->context_length() != 0 ? client_->context_length() : std::size_t{1} << 20;
  }
  /// Committed tokens the server's session holds.
  [[nodiscard]] std::size_t cache_length() const noexcept { return sent_; }
  /// The most drafts the server verifies next round (its dynamic speculation). Before a
  /// session's first verdict: the last announcement this client received (a new request
  /// starts at the server's load of a moment ago, and its first verdict corrects it), or
  /// no cap before any.
  [[nodiscard]] std::size_t max_draft() const noexcept {
    return opened_ || client_->draft_limit() != 0 ? client_->max_draft() : std::size_t{1} << 20;
  }

  [[nodiscard]] verify_client& client() noexcept { return *client_; }
  [[nodiscard]] const link_monitor& monitor() const noexcept { return *opt_.monitor; }

  /// The next generation's class and route (takes effect at the next `reset`, when the
  /// session is reopened; the decoder resets its verifier at the start of every
  /// generation).
  void set_privacy(const request_privacy& p) { opt_.privacy = p; }
  [[nodiscard]] const request_privacy& privacy() const noexcept { return opt_.privacy; }

  /// A new generation: ends the server's session (it keeps no state for a finished
  /// request), and the next `verify` opens a fresh one with S as its prefix.
  void reset() {
    if (opened_) client_->close();
    opened_ = false;
    sent_ = 0;
    client_->expect_length(0);
  }
  /// Where the generation that follows `reset()` ends at the latest (the decoder's
  /// `length_aware_verifier` call): sent with the session's open, so that the server
  /// computes no round past it.
  void expect_length(std::size_t n) noexcept { client_->expect_length(n); }
  /// Nothing to bring along: the server session holds what was sent.
  void sync(std::span<const token_id>) noexcept {}

  verdict verify(std::span<const token_id> s, const draft_block& d, const sampling_params& params,
                 random_source& rng) {
    if (d.position != s.size() || s.size() < sent_ || s.empty())
      throw invalid_argument("remote_verifier: the draft block is at position " + std::to_string(d.position) +
                             " after " + std::to_string(s.size()) + " committed tokens of which the server holds " +
                             std::to_string(sent_) + "; expected position == committed >= held");
    const std::uint64_t up0 = client_->bytes_sent(), down0 = client_->bytes_received();
    try {
      // The server's random source: derived from the decoder's, so a seed reproduces a run;
      // greedy consumes no randomness.
      const std::uint64_t seed =
          opened_ || params.greedy() ? 0 : static_cast<std::uint64_t>(rng.uniform() * 9007199254740992.0);
      const wire::sparse_rows* q = nullptr;
      if (!params.greedy() && !d.empty()) {
        q_.clear();
        for (std::size_t i = 0; i < d.size(); ++i) {
          if (d.has_distributions()) {
            q_.add_dense_row(d.q.subspan(i * opt_.vocab, opt_.vocab));
          } else {
            const float one = 1.0f;
            q_.add_row(d.tokens.subspan(i, 1), std::span<const float>(&one, 1));
          }
        }
        q = &q_;
      }
      // A new session goes out with its first block: one round trip for both. Its drafts
      // left before the server's vocabulary was known: a mismatch is reported as such even
      // when the server refused them.
      const auto check_vocabulary = [&] {
        if (client_->vocab_size() != 0 && client_->vocab_size() != opt_.vocab)
          throw vocabulary_mismatch("remote_verifier: the server's model has a vocabulary of " +
                                    std::to_string(client_->vocab_size()) + " tokens, the draft's " +
                                    std::to_string(opt_.vocab) + "; expected the same vocabulary");
      };
      verify_verdict r;
      try {
        r = opened_ ? client_->verify(s.subspan(sent_), d.tokens, q)
                    : client_->open_and_verify(s, d.tokens, q, params, seed, opt_.privacy);
      } catch (const remote_error&) {
        if (!opened_) check_vocabulary();
        throw;
      }
      if (!opened_) check_vocabulary();
      opened_ = true;
      sent_ = s.size();
      opt_.monitor->record(client_->last_rtt_seconds(), client_->bytes_sent() - up0, client_->bytes_received() - down0);
      return verdict{r.accepted, r.next, d.size() + 1, client_->last_rtt_seconds(), std::move(r.following)};
    } catch (const link_unavailable&) {
      opt_.monitor->record_failure();
      opened_ = false;  // the next call reopens from the committed prefix
      sent_ = 0;
      throw;
    }
  }

 private:
  remote_verifier_options opt_;
  std::unique_ptr<verify_client> client_;
  wire::sparse_rows q_;
  bool opened_ = false;
  std::size_t sent_ = 0;  ///< tokens of S the server's session holds
};

static_assert(specdec::verifier<remote_verifier>);

/// Which verifier judged a step of a `failover_verifier`.
enum class verified_by { primary, backup };

/// One switch of a `failover_verifier`: from `position` of S on, `by` verifies.
struct failover_event {
  std::size_t position = 0;
  verified_by by = verified_by::primary;
};

/// Verifies with `Primary` and, when it throws `link_unavailable`, with `Backup` from the
/// same committed sequence; retries the primary every `retry_seconds`. Exact when both
/// are. `events()` lists the switches, so a caller (or a test) knows which verifier
/// produced which part of the output.
///
/// ```cpp
/// specdec::local_verifier device(little_copy, specdec::greedy_match{});
/// specdec::hybrid::failover_verifier v(std::move(cloud), std::move(device), /*retry_seconds=*/1.0);
/// ```
template <specdec::verifier Primary, specdec::verifier Backup>
class failover_verifier {
 public:
  static constexpr bool exact = static_cast<bool>(Primary::exact) && static_cast<bool>(Backup::exact);

  failover_verifier(Primary primary, Backup backup, double retry_seconds = 1.0)
      : primary_(std::move(primary)), backup_(std::move(backup)), retry_seconds_(retry_seconds) {
    specdec::detail::check_non_negative("failover_verifier retry_seconds", retry_seconds);
    if (primary_.vocab_size() != backup_.vocab_size())
      throw vocabulary_mismatch("failover_verifier: the primary's vocabulary has " +
                                std::to_string(primary_.vocab_size()) + " tokens, the backup's " +
                                std::to_string(backup_.vocab_size()) + "; expected the same");
  }

  [[nodiscard]] std::size_t vocab_size() const { return primary_.vocab_size(); }
  [[nodiscard]] std::size_t context_length() const {
    return std::min<std::size_t>(primary_.context_length(), backup_.context_length());
  }
  [[nodiscard]] std::size_t cache_length() const { return on_backup_ ? backup_.cache_length() : primary_.cache_length(); }
  [[nodiscard]] Primary& primary() noexcept { return primary_; }
  [[nodiscard]] Backup& backup() noexcept { return backup_; }
  [[nodiscard]] const std::vector<failover_event>& events() const noexcept { return events_; }
  [[nodiscard]] bool on_backup() const noexcept { return on_backup_; }
  /// Whether the privacy gate refused the primary in this generation.
  [[nodiscard]] bool refused() const noexcept { return refused_; }
  /// The primary's draft cap while it verifies (see `remote_verifier::max_draft`).
  [[nodiscard]] std::size_t max_draft() const noexcept {
    if constexpr (requires { primary_.max_draft(); }) {
      if (!on_backup_) return primary_.max_draft();
    }
    return std::size_t{1} << 20;
  }

  void reset() {
    primary_.reset();
    backup_.reset();
    on_backup_ = false;
    refused_ = false;
    final_length_ = 0;
    events_.assign(1, failover_event{0, verified_by::primary});
  }
  /// The generation's end (`length_aware_verifier`), passed on to whichever verifier takes
  /// it, and again to the primary each time it resumes after the backup.
  void expect_length(std::size_t n)
    requires(specdec::length_aware_verifier<Primary> || specdec::length_aware_verifier<Backup>)
  {
    final_length_ = n;
    if constexpr (specdec::length_aware_verifier<Primary>) primary_.expect_length(n);
    if constexpr (specdec::length_aware_verifier<Backup>) backup_.expect_length(n);
  }
  void sync(std::span<const token_id> s) {
    if (on_backup_) backup_.sync(s);
    else primary_.sync(s);
  }

  verdict verify(std::span<const token_id> s, const draft_block& d, const sampling_params& params,
                 random_source& rng) {
    if (events_.empty()) events_.push_back({0, verified_by::primary});
    if (!refused_ && (!on_backup_ || clock::now() >= retry_at_)) {
      try {
        if (on_backup_) {  // resynchronise from S
          primary_.reset();
          if constexpr (specdec::length_aware_verifier<Primary>)
            if (final_length_ != 0) primary_.expect_length(final_length_);
        }
        const verdict v = primary_.verify(s, d, params, rng);
        switch_to(false, s.size());
        return v;
      } catch (const link_unavailable&) {
        retry_at_ = clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(retry_seconds_));
        switch_to(true, s.size());  // the backup starts from the committed prefix
      } catch (const privacy_violation&) {
        refused_ = true;  // nothing was sent; the class does not change within a generation
        switch_to(true, s.size());
      }
    }
    return backup_.verify(s, d, params, rng);
  }

 private:
  using clock = std::chrono::steady_clock;
  void switch_to(bool backup, std::size_t position) {
    if (backup == on_backup_) return;
    if (backup) backup_.reset();
    on_backup_ = backup;
    events_.push_back({position, backup ? verified_by::backup : verified_by::primary});
  }

  Primary primary_;
  Backup backup_;
  double retry_seconds_;
  bool on_backup_ = false;
  bool refused_ = false;  ///< the privacy gate refused this generation's primary
  std::size_t final_length_ = 0;  ///< the generation's end, once told (0: not told)
  clock::time_point retry_at_{};
  std::vector<failover_event> events_;
};

}  // namespace specdec::hybrid
