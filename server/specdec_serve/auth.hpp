#pragma once
/// \file specdec_serve/auth.hpp
/// API keys of `specdec-serve` (`--api-keys FILE`): who may use the server, and how much.
///
/// ## The key file
/// One key per line, then optional per-key limits as `name=value` words; `#` starts a
/// comment, blank lines are ignored:
///
///     # key                                    limits (all optional)
///     sk-device-fleet-4f0c9a7d2b8e61f3        name=fleet rps=20 burst=40 sessions=8 max_tokens=256
///     sk-batch-jobs-93e1b0c47a5d28f6          name=batch max_tokens=1024
///
/// A key is 16 to 512 characters of the bearer-token alphabet `A-Z a-z 0-9 - . _ ~ + / =`.
/// Limits: `rps` requests per second (a token bucket refilled at that rate; 0 or absent =
/// unlimited), `burst` the bucket's size (default max(1, rps)), `sessions` open verify
/// sessions at once, `max_tokens` the largest `max_tokens` of a completion (0 or absent =
/// only the server-wide bounds), `name` a label for metrics and messages (default
/// `line<N>`; the key itself is never printed). Anything else is an error naming the file,
/// the line and the word.
///
/// ## Checking a key
/// The ring keeps only each key's SHA-256. A presented key is hashed and compared with
/// every stored digest, all 32 bytes and all keys each time (no early exit on a mismatch
/// or on the length), so the time taken does not depend on how much of a key was right.
///
/// ```cpp
/// specdec::serve::key_ring keys(specdec::serve::load_api_keys("keys.txt"));
/// if (auto who = keys.authenticate(presented)) {
///   if (!keys.admit(*who)) reject_429();
///   std::size_t cap = keys.limits(*who).max_tokens;  // 0 = none
/// }
/// ```
#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/transport.hpp"
#include "specdec/privacy/sha256.hpp"
#include "specdec_serve/services.hpp"

namespace specdec::serve {

/// The SHA-256 of a key: what the ring stores and compares.
using key_digest = std::array<std::uint8_t, 32>;

[[nodiscard]] inline key_digest digest_of(std::string_view key) {
  privacy::sha256 h;
  h.update(key);
  return h.finish();
}

/// Whether two digests are equal, in time independent of where they differ.
[[nodiscard]] inline bool digests_equal(const key_digest& a, const key_digest& b) noexcept {
  volatile std::uint8_t diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff = static_cast<std::uint8_t>(diff | (a[i] ^ b[i]));
  return diff == 0;
}

/// What one key may do; 0 = no limit of that kind beyond the server-wide ones.
///
/// ```cpp
/// specdec::serve::key_limits l{.requests_per_second = 5, .burst = 10, .max_sessions = 2, .max_tokens = 128};
/// ```
struct key_limits {
  double requests_per_second = 0.0;  ///< token-bucket refill rate; 0 = unlimited
  double burst = 0.0;                ///< bucket size; 0 = max(1, requests_per_second)
  std::size_t max_sessions = 0;      ///< verify sessions open at once
  std::size_t max_tokens = 0;        ///< largest `max_tokens` of one completion
};

/// One configured key: its label, its digest (never the key), its limits.
struct api_key {
  std::string name;
  key_digest digest{};
  key_limits limits{};
};

inline constexpr std::size_t min_key_length = 16;
inline constexpr std::size_t max_key_length = hybrid::wire::limits{}.max_key;

/// Parses a key file's text (format in the file comment); `source` names it in errors.
/// Throws `invalid_argument` naming `source:line` and what is wrong there.
[[nodiscard]] inline std::vector<api_key> parse_api_keys(std::string_view text, const std::string& source) {
  std::vector<api_key> keys;
  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const std::size_t nl = text.find('\n');
    std::string line(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (const auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string key;
    if (!(words >> key)) continue;
    const auto fail = [&](const std::string& what) {
      throw invalid_argument("api keys " + source + ":" + std::to_string(line_no) + ": " + what);
    };
    if (key.find('=') != std::string::npos && key.find_first_not_of('=', key.find('=')) != std::string::npos)
      fail("the first word holds '=' before its end; the first word must be the key: KEY [name=value ...]");
    if (key.size() < min_key_length || key.size() > max_key_length)
      fail("a key of " + std::to_string(key.size()) + " characters; expected " + std::to_string(min_key_length) +
           " to " + std::to_string(max_key_length));
    for (char c : key)
      if (!hybrid::api_key_char(c)) fail("a key holds a character outside A-Z a-z 0-9 - . _ ~ + / =");
    api_key k{"line" + std::to_string(line_no), digest_of(key), {}};
    for (std::string word; words >> word;) {
      const auto eq = word.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == word.size())
        fail("'" + word + "'; expected name=value (name, rps, burst, sessions, max_tokens)");
      const std::string name = word.substr(0, eq), value = word.substr(eq + 1);
      const auto number = [&](double max) {
        std::size_t used = 0;
        double v = -1.0;
        try {
          v = std::stod(value, &used);
        } catch (const std::exception&) {
        }
        if (used != value.size() || !(v >= 0.0 && v <= max))
          fail(name + "=" + value + "; expected a number in [0, " + std::to_string(static_cast<long long>(max)) + "]");
        return v;
      };
      const auto count = [&] {
        const double v = number(1e9);
        if (v != std::floor(v)) fail(name + "=" + value + "; expected a whole number");
        return static_cast<std::size_t>(v);
      };
      if (name == "name") {
        for (char c : value)
          if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
            fail("name=" + value + "; expected letters, digits, '-', '_' or '.'");
        if (value.size() > 64) fail("a name of " + std::to_string(value.size()) + " characters; expected at most 64");
        k.name = value;
      } else if (name == "rps") {
        k.limits.requests_per_second = number(1e6);
      } else if (name == "burst") {
        k.limits.burst = number(1e6);
      } else if (name == "sessions") {
        k.limits.max_sessions = count();
      } else if (name == "max_tokens") {
        k.limits.max_tokens = count();
      } else {
        fail("unknown limit '" + name + "'; expected name, rps, burst, sessions or max_tokens");
      }
    }
    for (const api_key& other : keys)
      if (digests_equal(other.digest, k.digest)) fail("the key of " + other.name + " again; expected each key once");
    if (k.limits.burst == 0.0) k.limits.burst = std::max(1.0, k.limits.requests_per_second);
    if (k.limits.burst < 1.0) fail("burst below 1 admits nothing; expected >= 1");
    keys.push_back(std::move(k));
  }
  if (keys.empty()) throw invalid_argument("api keys " + source + ": no key; expected at least one KEY line");
  return keys;
}

/// Reads and parses a key file; throws `invalid_argument` naming the file (unreadable) or
/// its line (malformed).
[[nodiscard]] inline std::vector<api_key> load_api_keys(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw invalid_argument("api keys " + path.string() + ": cannot be read; expected a key file");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_api_keys(text.str(), path.string());
}

/// The configured keys, their rate-limit buckets, and the checks of the file comment.
/// Thread-safe. Without keys the server is open: every request is principal 0, unlimited.
class key_ring {
 public:
  key_ring() = default;
  explicit key_ring(std::vector<api_key> keys) : keys_(std::move(keys)), buckets_(keys_.size()) {}
  key_ring(const key_ring&) = delete;
  key_ring& operator=(const key_ring&) = delete;

  /// Whether keys are required.
  [[nodiscard]] bool enabled() const noexcept { return !keys_.empty(); }
  [[nodiscard]] std::size_t size() const noexcept { return keys_.size(); }

  /// The principal `presented` belongs to, or nullopt (missing or unknown key). On an
  /// open server every request is principal 0. Examines every key whatever matches.
  [[nodiscard]] std::optional<principal> authenticate(std::string_view presented) const {
    if (keys_.empty()) return principal{};
    const key_digest d = digest_of(presented);
    std::uint32_t match = 0;
    for (std::size_t i = 0; i < keys_.size(); ++i) {
      const std::uint32_t eq = digests_equal(d, keys_[i].digest) ? 1u : 0u;
      match |= (0u - eq) & static_cast<std::uint32_t>(i + 1);  // keys are distinct: one match at most
    }
    if (match == 0) return std::nullopt;
    return principal{match, keys_[match - 1].limits.max_sessions};
  }

  /// Takes one request from `p`'s bucket: false when it is empty (rate limited).
  bool admit(principal p, clock::time_point now = clock::now()) {
    if (p.key == 0 || p.key > keys_.size()) return true;
    const key_limits& l = keys_[p.key - 1].limits;
    if (l.requests_per_second <= 0.0) return true;
    std::lock_guard lock(mu_);
    bucket& b = buckets_[p.key - 1];
    if (!b.started) {
      b = {l.burst, now, true};
    } else {
      const double dt = std::chrono::duration<double>(now - b.last).count();
      b.tokens = std::min(l.burst, b.tokens + std::max(0.0, dt) * l.requests_per_second);
      b.last = now;
    }
    if (b.tokens < 1.0) return false;
    b.tokens -= 1.0;
    return true;
  }

  /// `p`'s limits (none for principal 0).
  [[nodiscard]] const key_limits& limits(principal p) const noexcept {
    static const key_limits none{};
    return p.key == 0 || p.key > keys_.size() ? none : keys_[p.key - 1].limits;
  }
  /// `p`'s label ("open" for principal 0).
  [[nodiscard]] std::string name(principal p) const {
    return p.key == 0 || p.key > keys_.size() ? "open" : keys_[p.key - 1].name;
  }

 private:
  struct bucket {
    double tokens = 0.0;
    clock::time_point last{};
    bool started = false;
  };
  std::vector<api_key> keys_;
  std::mutex mu_;
  std::vector<bucket> buckets_;  ///< guarded by mu_
};

}  // namespace specdec::serve
