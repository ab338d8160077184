// Tests for include/specdec/hybrid/routing_log.hpp: a routing log and a length log
// survive a write/read round trip, folds split and renumber request ids, and malformed
// files fail naming the file, the line and the column.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "specdec/hybrid/routing_log.hpp"

namespace {
using namespace specdec::hybrid;

logged_request make(std::uint64_t id, int fold) {
  logged_request r;
  r.id = id;
  r.fold = fold;
  r.group = "Gen_7:" + std::to_string(id);
  r.features = {.prompt_tokens = 10 + id, .draft_mean_entropy = 1.5f, .draft_max_prob_mean = 0.25f,
                .draft_first_token_entropy = 2.0f};
  r.features.extra.assign(trajectory_feature::count, 0.5f);
  r.features.extra[trajectory_feature::stopped_at] = static_cast<float>(id);
  r.outcome = {.device_quality = -1.25, .cloud_quality = -0.75, .prefix_quality = std::nan(""), .device_ok = id % 2 == 0};
  r.cloud_tokens = 20, r.device_tokens = 30, r.prefix_tokens = 21, r.speculative_rounds = 7, r.reference_tokens = 19;
  r.device_agreement = 0.125, r.prefix_agreement = 0.5, r.cloud_entropy = 2.5;
  return r;
}

std::string temp_path(const char* name) { return (std::filesystem::temp_directory_path() / name).string(); }

TEST(routing_log, round_trip_and_folds) {
  const std::vector<logged_request> log{make(0, 0), make(1, 1), make(2, 0)};
  const auto path = temp_path("specdec_routing_log_test.csv");
  {
    std::ofstream f(path);
    write_routing_log(f, log);
  }
  const auto back = read_routing_log(path);
  ASSERT_EQ(back.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(back[i].id, log[i].id);
    EXPECT_EQ(back[i].group, log[i].group);
    EXPECT_EQ(back[i].features.prompt_tokens, log[i].features.prompt_tokens);
    EXPECT_EQ(back[i].features.extra, log[i].features.extra);
    EXPECT_EQ(back[i].outcome.device_ok, log[i].outcome.device_ok);
    EXPECT_DOUBLE_EQ(back[i].outcome.device_quality, -1.25);
    EXPECT_TRUE(std::isnan(back[i].outcome.prefix_quality));
    EXPECT_EQ(back[i].speculative_rounds, 7u);
    EXPECT_DOUBLE_EQ(back[i].device_quality_gap(), 0.5);
  }
  const auto [cal, test] = split_folds(back);
  ASSERT_EQ(cal.size(), 2u);
  ASSERT_EQ(test.size(), 1u);
  EXPECT_EQ(cal[1].id, 2u);
  EXPECT_EQ(cal[1].features.request_id, 1u);
  EXPECT_EQ(test[0].features.request_id, 0u);
  std::filesystem::remove(path);
}

TEST(routing_log, malformed_files_fail_naming_what_is_wrong) {
  auto expect_error = [](const std::string& content, const std::string& word) {
    const auto path = temp_path("specdec_routing_log_bad.csv");
    {
      std::ofstream f(path);
      f << content;
    }
    try {
      (void)read_routing_log(path);
      ADD_FAILURE() << "accepted a log lacking " << word;
    } catch (const specdec::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
    std::filesystem::remove(path);
  };
  expect_error("", "empty");
  expect_error("id,fold\n0,1\n", "column");
  std::ostringstream good;
  write_routing_log(good, {make(0, 0)});
  std::string bad = good.str();
  bad.replace(bad.find("\n0,0,") + 1, 1, "x");  // the first data row's id
  expect_error(bad, "line 2");
  EXPECT_THROW((void)read_routing_log(temp_path("specdec_no_such_log.csv")), specdec::invalid_argument);
  EXPECT_THROW((void)split_folds(std::vector<logged_request>{make(0, 0)}), specdec::invalid_argument);
  auto r = make(0, 0);
  r.features.extra.clear();
  std::ostringstream sink;
  EXPECT_THROW(write_routing_log(sink, {r}), specdec::invalid_argument);
}
logged_length make_length(std::uint64_t id, int fold) {
  logged_length r{.id = id, .fold = fold, .group = "story_" + std::to_string(id), .features = {},
                  .target_tokens = 40 + id, .reference_tokens = 30};
  r.features = {.prompt_tokens = 5 + id, .draft_mean_entropy = 0.5f, .draft_max_prob_mean = 0.75f,
                .draft_first_token_entropy = 1.0f};
  r.features.extra.assign(trajectory_feature::count, 0.25f);
  r.features.extra.push_back(static_cast<float>(id));  // app_given
  r.features.extra.push_back(3.5f);                    // app_rollout
  return r;
}

TEST(length_log, round_trip_keeps_application_features_in_order) {
  const length_log log{.app_features = {"given", "rollout"},
                       .requests = {make_length(0, 0), make_length(1, 1), make_length(2, 1)}};
  std::ostringstream out;
  write_length_log(out, log);
  EXPECT_NE(out.str().find(",app_given,app_rollout,target_tokens,"), std::string::npos);
  const auto path = temp_path("specdec_length_log_test.csv");
  {
    std::ofstream f(path);
    f << out.str();
  }
  const auto back = read_length_log(path);
  EXPECT_EQ(back.app_features, log.app_features);
  ASSERT_EQ(back.requests.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(back.requests[i].group, log.requests[i].group);
    EXPECT_EQ(back.requests[i].features.prompt_tokens, log.requests[i].features.prompt_tokens);
    EXPECT_EQ(back.requests[i].features.extra, log.requests[i].features.extra);
    EXPECT_EQ(back.requests[i].target_tokens, 40 + i);
    EXPECT_EQ(back.requests[i].reference_tokens, 30u);
  }
  const auto [cal, test] = split_folds(back.requests);
  ASSERT_EQ(cal.size(), 1u);
  ASSERT_EQ(test.size(), 2u);
  EXPECT_EQ(test[1].id, 2u);
  EXPECT_EQ(test[1].features.request_id, 1u);
  std::filesystem::remove(path);
}

TEST(length_log, bad_logs_fail_naming_what_is_wrong) {
  std::ostringstream sink;
  auto short_extra = make_length(0, 0);
  short_extra.features.extra.pop_back();  // one application feature missing
  EXPECT_THROW(write_length_log(sink, {.app_features = {"given", "rollout"}, .requests = {short_extra}}),
               specdec::invalid_argument);
  EXPECT_THROW(write_length_log(sink, {.app_features = {"a,b"}, .requests = {}}), specdec::invalid_argument);
  const auto path = temp_path("specdec_length_log_bad.csv");
  {
    std::ofstream f(path);
    f << "id,fold,group,prompt_tokens\n0,0,x,1\n";
  }
  try {
    (void)read_length_log(path);
    ADD_FAILURE() << "accepted a length log without the probe's columns";
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("draft_mean_entropy"), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
  EXPECT_THROW((void)read_length_log(temp_path("specdec_no_such_length_log.csv")), specdec::invalid_argument);
}
}  // namespace
