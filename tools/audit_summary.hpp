// Reads uplink audit logs (JSON Lines written by specdec/privacy/audit.hpp) and totals
// messages, bytes and tokens per destination, per route and per privacy class. Used by the
// specdec-audit tool and its tests; needs nlohmann-json (Debian nlohmann-json3-dev).
#pragma once
#include <cstdint>
#include <istream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "specdec/error.hpp"

namespace specdec::audit_tool {

struct totals {
  std::uint64_t messages = 0, bytes = 0, tokens = 0;
  void add(std::uint64_t b, std::uint64_t t) {
    ++messages;
    bytes += b;
    tokens += t;
  }
  friend bool operator==(const totals&, const totals&) = default;
};

struct summary {
  totals all;
  std::map<std::string, totals> by_destination, by_route, by_class;
  std::uint64_t with_pii = 0, redacted = 0;

  /// Adds one record; throws `specdec::invalid_argument` naming `where` and the field if the
  /// record is not a well-formed uplink record.
  void add(const nlohmann::json& r, const std::string& where) {
    auto fail = [&](const std::string& what) { throw invalid_argument(where + ": " + what); };
    if (!r.is_object()) fail("a record must be a JSON object");
    auto str = [&](const char* key) -> std::string {
      if (!r.contains(key) || !r[key].is_string()) fail(std::string("field '") + key + "' must be a string");
      return r[key].get<std::string>();
    };
    auto uint = [&](const char* key) -> std::uint64_t {
      if (!r.contains(key) || !r[key].is_number_unsigned())
        fail(std::string("field '") + key + "' must be a non-negative integer");
      return r[key].get<std::uint64_t>();
    };
    (void)str("time");
    const std::string destination = str("destination"), route = str("route"), cls = str("privacy_class");
    if (route != "device" && route != "cloud" && route != "speculative" && route != "cloud_prefix")
      fail("field 'route' must be device, cloud, speculative or cloud_prefix, got '" + route + "'");
    if (cls != "local_only" && cls != "redactable" && cls != "cloud_allowed")
      fail("field 'privacy_class' must be local_only, redactable or cloud_allowed, got '" + cls + "'");
    const std::string hash = str("sha256");
    if (hash.size() != 64 || hash.find_first_not_of("0123456789abcdef") != std::string::npos)
      fail("field 'sha256' must be 64 lower-case hexadecimal digits");
    if (!r.contains("decision") || !r["decision"].is_object() || !r["decision"].contains("pii") ||
        !r["decision"]["pii"].is_boolean() || !r["decision"].contains("payload") ||
        !r["decision"]["payload"].is_string())
      fail("field 'decision' must be an object with a boolean 'pii' and a string 'payload'");
    const std::uint64_t bytes = uint("bytes"), tokens = uint("tokens");
    all.add(bytes, tokens);
    by_destination[destination].add(bytes, tokens);
    by_route[route].add(bytes, tokens);
    by_class[cls].add(bytes, tokens);
    with_pii += r["decision"]["pii"].get<bool>();
    redacted += r["decision"]["payload"] == "redacted";
  }

  /// Adds every line of `in` (named `name` in errors); blank lines are skipped.
  void read(std::istream& in, const std::string& name) {
    std::string line;
    for (std::size_t n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = name + ":" + std::to_string(n);
      nlohmann::json r = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (r.is_discarded()) throw invalid_argument(where + ": not a JSON value (a torn or edited record?)");
      add(r, where);
    }
  }

  [[nodiscard]] nlohmann::json to_json() const {
    auto t = [](const totals& x) {
      return nlohmann::json{{"messages", x.messages}, {"bytes", x.bytes}, {"tokens", x.tokens}};
    };
    auto group = [&](const std::map<std::string, totals>& m) {
      nlohmann::json j = nlohmann::json::object();
      for (const auto& [k, v] : m) j[k] = t(v);
      return j;
    };
    return {{"total", t(all)},
            {"with_pii", with_pii},
            {"redacted", redacted},
            {"by_destination", group(by_destination)},
            {"by_route", group(by_route)},
            {"by_privacy_class", group(by_class)}};
  }
};

}  // namespace specdec::audit_tool
