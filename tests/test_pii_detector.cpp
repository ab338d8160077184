// Tests for include/specdec/privacy/detector.hpp: context words raise and lower scores
// within their windows, the threshold and overlap rules, the privacy decision, option and
// recognizer validation, and the precision/recall goals on the committed labelled corpus
// tests/data/pii_corpus.tsv (recall >= 0.98 and precision >= 0.95, overall and per class).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "pii_corpus.hpp"
#include "specdec/privacy/detector.hpp"

namespace {
namespace pv = specdec::privacy;
using pv::pii_kind;
using pv::privacy_class;

std::vector<std::string> texts(const pv::pii_detector& d, const std::string& t) {
  std::vector<std::string> out;
  for (const auto& s : d.find(t)) out.push_back(t.substr(s.begin, s.size()));
  return out;
}

TEST(pii_detector, context_words_lift_weak_candidates) {
  const pv::pii_detector d;
  EXPECT_TRUE(d.find("reference 536221492 attached").empty());  // bare nine digits: 0.2
  const auto s = d.find("my SSN is 536221492");
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].kind, pii_kind::us_ssn);
  EXPECT_FLOAT_EQ(s[0].score, 0.2f + 0.35f);
  EXPECT_TRUE(d.find("the total was 4155552671").empty());
  EXPECT_EQ(texts(d, "call 4155552671"), std::vector<std::string>{"4155552671"});
  // Case-insensitive whole words only: "tell" is no "tel", "phones" no "phone".
  EXPECT_TRUE(d.find("tell 4155552671").empty());
  EXPECT_EQ(texts(d, "TEL: 4155552671"), std::vector<std::string>{"4155552671"});
  // The window is context_bytes long; a word farther away does not count.
  const pv::pii_detector narrow({.context_bytes = 8});
  EXPECT_TRUE(narrow.find("call me later, 4155552671").empty());
  EXPECT_EQ(texts(narrow, "call: 4155552671"), std::vector<std::string>{"4155552671"});
  // A word cut by the window's start is not a word of the window.
  EXPECT_TRUE(pv::pii_detector({.context_bytes = 4}).find("xcall 4155552671").empty());
}

TEST(pii_detector, negative_words_count_only_right_before_in_the_same_sentence) {
  const pv::pii_detector d;
  EXPECT_TRUE(d.find("version 1.2.3.4").empty());
  EXPECT_TRUE(d.find("Firmware: 10.1.2.3").empty());
  EXPECT_EQ(texts(d, "host 10.1.2.3"), std::vector<std::string>{"10.1.2.3"});
  EXPECT_EQ(texts(d, "the release went out. Blocked 10.1.2.3 today"), std::vector<std::string>{"10.1.2.3"});
  EXPECT_EQ(texts(d, "version of the log: 10.1.2.3"), std::vector<std::string>{"10.1.2.3"});  // 4 words back
  // Positive and negative together: 0.6 + 0.35 - 0.4.
  const auto s = d.find("server version 10.1.2.3");
  ASSERT_EQ(s.size(), 1u);
  EXPECT_NEAR(s[0].score, 0.55f, 1e-6f);
}

TEST(pii_detector, threshold_and_overlaps) {
  EXPECT_TRUE(pv::pii_detector({.threshold = 0.95f}).find("ssh 10.1.2.3").empty());
  EXPECT_EQ(pv::pii_detector({.threshold = 0.0f}).find("ssh 10.1.2.3").size(), 1u);
  // The IPv6 address wins over its IPv4 tail; a valid IBAN over the digits inside it.
  const pv::pii_detector d;
  const auto v6 = d.find("IPv6 address: ::ffff:192.0.2.33");
  ASSERT_EQ(v6.size(), 1u);
  EXPECT_EQ(v6[0].kind, pii_kind::ipv6);
  const auto iban = d.find("card or account DE89 3704 0044 0532 0130 00");
  ASSERT_EQ(iban.size(), 1u);
  EXPECT_EQ(iban[0].kind, pii_kind::iban);
  // Two recognizers claiming overlapping spans: the higher score, then the longer span.
  auto fixed = [](std::size_t b, std::size_t e, float score) {
    return [=](std::string_view, std::vector<pv::pii_span>& out) {
      out.push_back({.begin = b, .end = e, .kind = pii_kind::secret, .score = score});
    };
  };
  const pv::pii_detector two({{"a", pii_kind::secret, fixed(0, 4, 0.7f)},
                              {"b", pii_kind::secret, fixed(2, 9, 0.7f)},
                              {"c", pii_kind::secret, fixed(8, 10, 0.9f)},
                              {"d", pii_kind::secret, fixed(10, 12, 0.6f)}},
                             {});
  const auto s = two.find("0123456789abcdef");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].recognizer, "a");  // [0, 4): b overlaps both a and c, and c scores higher
  EXPECT_EQ(s[1].recognizer, "c");  // [8, 10)
  EXPECT_EQ(s[2].recognizer, "d");  // [10, 12): touching is no overlap
}

TEST(pii_detector, decision_is_the_most_restrictive_of_declared_and_detected) {
  const pv::pii_detector d;
  const std::string clean = "What is the capital of France?";
  const std::string personal = "Write to jane@example.org about it.";
  EXPECT_EQ(d.analyze(clean).decision, privacy_class::cloud_allowed);
  EXPECT_EQ(d.analyze(clean, privacy_class::redactable).decision, privacy_class::redactable);
  EXPECT_EQ(d.analyze(clean, privacy_class::local_only).decision, privacy_class::local_only);
  const auto p = d.analyze(personal);
  EXPECT_TRUE(p.found());
  EXPECT_EQ(p.declared, privacy_class::cloud_allowed);
  EXPECT_EQ(p.decision, privacy_class::local_only);
  EXPECT_EQ(p.counts()[static_cast<std::size_t>(pii_kind::email)], 1u);
  const pv::pii_detector opt_in({.on_detection = privacy_class::redactable});
  EXPECT_EQ(opt_in.analyze(personal).decision, privacy_class::redactable);
  EXPECT_EQ(opt_in.analyze(personal, privacy_class::local_only).decision, privacy_class::local_only);
}

TEST(pii_detector, bad_options_and_recognizers_fail_clearly) {
  EXPECT_THROW(pv::pii_detector({.threshold = 1.5f}), specdec::invalid_argument);
  EXPECT_THROW(pv::pii_detector({.context_boost = -1.0f}), specdec::invalid_argument);
  EXPECT_THROW(pv::pii_detector({.context_bytes = 100000}), specdec::invalid_argument);
  try {
    pv::pii_detector d;
    d.add(pv::recognizer{.name = "empty", .kind = pii_kind::secret, .find = {}});
    FAIL() << "expected invalid_argument";
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'empty'"), std::string::npos) << e.what();
  }
  const pv::recognizer overflow{
      .name = "overflow", .kind = pii_kind::secret, .find = [](std::string_view t, std::vector<pv::pii_span>& out) {
        out.push_back({.begin = 0, .end = t.size() + 1});
      }};
  const pv::pii_detector bad({overflow}, {});
  try {
    (void)bad.find("abc");
    FAIL() << "expected invalid_argument";
  } catch (const specdec::invalid_argument& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'overflow'"), std::string::npos) << m;
    EXPECT_NE(m.find("[0, 4)"), std::string::npos) << m;
  }
}

TEST(pii_detector, custom_recognizers_join_the_built_in_ones) {
  pv::pii_detector d;
  d.add({.name = "employee_id",
         .kind = pii_kind::secret,
         .find =
             [](std::string_view t, std::vector<pv::pii_span>& out) {
               for (auto at = t.find("EMP-"); at != std::string_view::npos; at = t.find("EMP-", at + 1))
                 out.push_back(
                     {.begin = at, .end = std::min(t.size(), at + 10), .kind = pii_kind::secret, .score = 0.3f});
             },
         .context = {"employee"}});
  EXPECT_TRUE(d.find("ticket EMP-123456").empty());
  const auto s = d.find("employee EMP-123456, mail a@b.org");
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].recognizer, "employee_id");
  EXPECT_EQ(s[1].kind, pii_kind::email);
}

TEST(pii_detector, meets_the_precision_and_recall_goals_on_the_project_corpus) {
  const auto rows = specdec::testing::read_pii_corpus(SPECDEC_TEST_DATA_DIR "/pii_corpus.tsv");
  ASSERT_GT(rows.size(), 2000u);
  const auto scores = specdec::testing::score_detector(pv::pii_detector{}, rows);
  std::size_t positives = 0;
  for (auto k : pv::all_pii_kinds) {
    const auto i = static_cast<std::size_t>(k);
    positives += scores.tp[i] + scores.fn[i];
    std::printf("%-7s gold %4zu  tp %4zu  fp %3zu  fn %3zu  precision %.4f  recall %.4f\n",
                std::string(to_string(k)).c_str(), scores.tp[i] + scores.fn[i], scores.tp[i], scores.fp[i],
                scores.fn[i], scores.precision(i), scores.recall(i));
    EXPECT_GE(scores.tp[i] + scores.fn[i], 150u) << to_string(k) << ": too few labelled spans to measure";
    EXPECT_GE(scores.recall(i), 0.98) << to_string(k);
    EXPECT_GE(scores.precision(i), 0.95) << to_string(k);
  }
  std::printf("overall gold %zu  precision %.4f  recall %.4f\n", positives, scores.precision(), scores.recall());
  EXPECT_GE(scores.recall(), 0.98);
  EXPECT_GE(scores.precision(), 0.95);
  for (const auto& e : scores.errors) std::printf("  %s\n", e.c_str());
}

TEST(pii_detector, the_corpus_goals_can_fail) {
  // Negative control: the goals can fail. A detector without the card recognizer misses
  // every card; one with a threshold of 0 reports weak look-alikes as personal data.
  const auto rows = specdec::testing::read_pii_corpus(SPECDEC_TEST_DATA_DIR "/pii_corpus.tsv");
  auto rs = pv::builtin_recognizers();
  rs.erase(rs.begin() + static_cast<std::ptrdiff_t>(pii_kind::payment_card));
  const auto no_cards = specdec::testing::score_detector(pv::pii_detector(rs, {}), rows);
  EXPECT_EQ(no_cards.recall(static_cast<std::size_t>(pii_kind::payment_card)), 0.0);
  const auto everything = specdec::testing::score_detector(pv::pii_detector({.threshold = 0.0f}), rows);
  double worst = 1.0;
  for (auto k : pv::all_pii_kinds) {
    std::printf("threshold 0: %-7s precision %.4f\n", std::string(to_string(k)).c_str(),
                everything.precision(static_cast<std::size_t>(k)));
    worst = std::min(worst, everything.precision(static_cast<std::size_t>(k)));
  }
  EXPECT_LT(worst, 0.95);
}

}  // namespace
