// Reads the labelled PII corpus tests/data/pii_corpus.tsv (written by
// scripts/gen_pii_corpus.py; format in the script's docstring) and scores a detector on it.
#pragma once
#include <array>
#include <cstddef>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "specdec/privacy/detector.hpp"

namespace specdec::testing {

struct labelled_text {
  std::string id;
  std::string text;
  std::vector<privacy::pii_span> gold;  // begin, end, kind
};

inline std::string unescape_tsv(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out.push_back(s[i]);
      continue;
    }
    const char c = s[++i];
    out.push_back(c == 'n' ? '\n' : c == 't' ? '\t' : c);
  }
  return out;
}

inline std::vector<labelled_text> read_pii_corpus(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open the PII corpus " + path);
  std::vector<labelled_text> rows;
  std::string line;
  std::size_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty() || line[0] == '#') continue;
    const auto t1 = line.find('\t'), t2 = line.find('\t', t1 + 1);
    if (t1 == std::string::npos || t2 == std::string::npos)
      throw std::runtime_error(path + ":" + std::to_string(n) + ": expected id TAB labels TAB text");
    labelled_text row{line.substr(0, t1), unescape_tsv(std::string_view(line).substr(t2 + 1)), {}};
    const std::string labels = line.substr(t1 + 1, t2 - t1 - 1);
    if (labels != "-") {
      std::size_t p = 0;
      while (p < labels.size()) {
        std::size_t q = labels.find(';', p);
        if (q == std::string::npos) q = labels.size();
        const std::string item = labels.substr(p, q - p);
        const auto colon = item.find(':'), dash = item.find('-', colon);
        const auto kind = privacy::parse_pii_kind(item.substr(0, colon));
        if (!kind || dash == std::string::npos)
          throw std::runtime_error(path + ":" + std::to_string(n) + ": bad label '" + item + "'");
        privacy::pii_span s{.begin = std::stoul(item.substr(colon + 1, dash - colon - 1)),
                            .end = std::stoul(item.substr(dash + 1)),
                            .kind = *kind};
        if (s.begin >= s.end || s.end > row.text.size())
          throw std::runtime_error(path + ":" + std::to_string(n) + ": label '" + item + "' outside the text");
        row.gold.push_back(s);
        p = q + 1;
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

/// Exact-span scores per kind: a prediction is a true positive when a gold span has the same
/// kind, begin and end.
struct span_scores {
  std::array<std::size_t, privacy::pii_kind_count> tp{}, fp{}, fn{};
  std::vector<std::string> errors;  // "id: FP/FN KIND 'text'", for diagnosis

  [[nodiscard]] static double ratio(std::size_t a, std::size_t b) { return b == 0 ? 1.0 : double(a) / double(b); }
  [[nodiscard]] double precision(std::size_t k) const { return ratio(tp[k], tp[k] + fp[k]); }
  [[nodiscard]] double recall(std::size_t k) const { return ratio(tp[k], tp[k] + fn[k]); }
  [[nodiscard]] std::size_t sum(const std::array<std::size_t, privacy::pii_kind_count>& a) const {
    std::size_t s = 0;
    for (auto x : a) s += x;
    return s;
  }
  [[nodiscard]] double precision() const { return ratio(sum(tp), sum(tp) + sum(fp)); }
  [[nodiscard]] double recall() const { return ratio(sum(tp), sum(tp) + sum(fn)); }
};

inline span_scores score_detector(const privacy::pii_detector& detector, const std::vector<labelled_text>& rows) {
  span_scores s;
  for (const auto& row : rows) {
    const auto found = detector.find(row.text);
    auto same = [](const privacy::pii_span& a, const privacy::pii_span& b) {
      return a.kind == b.kind && a.begin == b.begin && a.end == b.end;
    };
    for (const auto& f : found) {
      const bool hit = std::any_of(row.gold.begin(), row.gold.end(), [&](const auto& g) { return same(f, g); });
      ++(hit ? s.tp : s.fp)[static_cast<std::size_t>(f.kind)];
      if (!hit)
        s.errors.push_back(row.id + ": FP " + std::string(to_string(f.kind)) + " '" +
                           row.text.substr(f.begin, f.size()) + "'");
    }
    for (const auto& g : row.gold)
      if (std::none_of(found.begin(), found.end(), [&](const auto& f) { return same(f, g); })) {
        ++s.fn[static_cast<std::size_t>(g.kind)];
        s.errors.push_back(row.id + ": FN " + std::string(to_string(g.kind)) + " '" +
                           row.text.substr(g.begin, g.size()) + "'");
      }
  }
  return s;
}

}  // namespace specdec::testing
