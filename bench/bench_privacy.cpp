// Benchmarks for include/specdec/privacy/: the PII detector (all built-in recognizers,
// context and overlaps) over prose without personal data (KJV verses), over the labelled
// corpus (personal data in every other line) and over inputs built to stress the scanners
// (digit groups, '@'s, hex and colons, token prefixes); a std::regex baseline with three
// patterns over the same prose; redaction round trips; SHA-256 of an uplink payload.
// The counter per_KB is the (CPU) time per kilobyte of prompt (the goal: well under 1 ms).
#include <benchmark/benchmark.h>

#include <fstream>
#include <regex>
#include <stdexcept>
#include <string>

#include "specdec/privacy/detector.hpp"
#include "specdec/privacy/redaction.hpp"
#include "specdec/privacy/sha256.hpp"

namespace {
namespace pv = specdec::privacy;

// The third column of a TSV file's non-comment lines, joined by newlines.
std::string third_column(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::string text, line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto t1 = line.find('\t'), t2 = line.find('\t', t1 + 1);
    text += line.substr(t2 + 1);
    text += '\n';
  }
  return text;
}

std::string repeat_to(const std::string& unit, std::size_t n) {
  std::string s;
  while (s.size() < n) s += unit;
  s.resize(n);
  return s;
}

const std::string& prose() {
  static const std::string s = third_column(SPECDEC_MODELS_DIR "/kjv_val_openings.tsv");
  return s;
}
const std::string& corpus() {
  static const std::string s = third_column(SPECDEC_MODELS_DIR "/../tests/data/pii_corpus.tsv");
  return s;
}

std::string input(int which, std::size_t n) {
  switch (which) {
    case 0: return repeat_to(prose(), n);
    case 1: return repeat_to(corpus(), n);
    case 2: return repeat_to("1 2 3 4 5 6 7 8 9 0 12-34-56 (0) +1 ", n);
    case 3: return repeat_to("a@b@c.d@e.f.g@ x.y@z @@ ", n);
    case 4: return repeat_to("dead:beef::cafe:1:2:3.4.5 ff:ee:dd ", n);
    default: return repeat_to("sk-ghp_AKIA eyJx.eyJy. xoxb- -----BEGIN DE89 ", n);
  }
}
const char* input_name(int which) {
  static const char* names[] = {"kjv_prose", "pii_corpus", "digit_groups", "at_signs", "hex_colons", "prefixes"};
  return names[which];
}

void bm_detect(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  const std::string text = input(which, static_cast<std::size_t>(state.range(1)));
  const pv::pii_detector detector;
  std::size_t spans = 0;
  for (auto _ : state) {
    auto d = detector.analyze(text);
    spans = d.spans.size();
    benchmark::DoNotOptimize(d);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
  state.counters["per_KB"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(text.size()) / 1024.0,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["spans"] = static_cast<double>(spans);
  state.SetLabel(input_name(which));
}
BENCHMARK(bm_detect)
    ->ArgsProduct({{0, 1}, {1024, 16384, 262144}})
    ->ArgsProduct({{2, 3, 4, 5}, {16384}})
    ->Unit(benchmark::kMicrosecond);

// The same prose through three std::regex patterns (e-mail, SSN, 16-digit card shape):
// the baseline a hand-written scanner has to beat.
void bm_std_regex_three_patterns(benchmark::State& state) {
  const std::string text = input(0, static_cast<std::size_t>(state.range(0)));
  const std::regex patterns[] = {
      std::regex(R"([A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})"),
      std::regex(R"(\b\d{3}-\d{2}-\d{4}\b)"),
      std::regex(R"(\b(?:\d{4}[ -]?){3}\d{4}\b)"),
  };
  for (auto _ : state) {
    std::size_t n = 0;
    for (const auto& re : patterns)
      for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it) ++n;
    benchmark::DoNotOptimize(n);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
  state.counters["per_KB"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(text.size()) / 1024.0,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(bm_std_regex_three_patterns)->Arg(1024)->Arg(16384)->Unit(benchmark::kMicrosecond);

void bm_redact_restore(benchmark::State& state) {
  const std::string text = input(1, static_cast<std::size_t>(state.range(0)));
  const pv::pii_detector detector;
  const auto spans = detector.find(text);
  for (auto _ : state) {
    auto red = pv::redact(text, spans);
    auto back = pv::restore(red.text, red);
    benchmark::DoNotOptimize(back);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
}
BENCHMARK(bm_redact_restore)->Arg(16384)->Unit(benchmark::kMicrosecond);

void bm_sha256(benchmark::State& state) {
  const std::string payload = input(1, static_cast<std::size_t>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(pv::sha256_hex(payload));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(payload.size()));
}
BENCHMARK(bm_sha256)->Arg(1024)->Arg(65536)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
