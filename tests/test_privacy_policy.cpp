// Tests for include/specdec/privacy/policy.hpp: the uplink rule's full table (every class x
// route kind x payload form), that no route an arbiter can return moves a local_only
// request off the device, class ordering and parsing, and the refusal's message.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

#include "specdec/privacy/policy.hpp"

namespace {
using specdec::hybrid::route;
using specdec::hybrid::route_kind;
using specdec::privacy::may_leave_device;
using specdec::privacy::payload_form;
using specdec::privacy::privacy_class;

constexpr privacy_class all_classes[] = {privacy_class::local_only, privacy_class::redactable,
                                         privacy_class::cloud_allowed};
constexpr payload_form all_forms[] = {payload_form::plain, payload_form::redacted};
const route all_routes[] = {route::on_device(), route::in_cloud(), route::speculative(4), route::cloud_prefix(16)};

TEST(may_leave_device, follows_the_documented_table) {
  for (auto c : all_classes)
    for (const auto& r : all_routes)
      for (auto f : all_forms) {
        SCOPED_TRACE(std::string(to_string(c)) + " " + std::string(to_string(r.kind)) + " " +
                     std::string(to_string(f)));
        bool expected = false;
        if (r.kind != route_kind::device) {
          if (c == privacy_class::cloud_allowed) expected = true;
          if (c == privacy_class::redactable) expected = r.kind == route_kind::cloud && f == payload_form::redacted;
        }
        EXPECT_EQ(may_leave_device(c, r, f), expected);
      }
}

TEST(may_leave_device, no_route_moves_a_local_only_request) {
  // An adversarial arbiter may return any route value, including nonsense gammas and kinds
  // outside the enum; the rule must refuse all of them for local_only.
  std::mt19937_64 rng(7);
  for (int i = 0; i < 10000; ++i) {
    route r;
    r.kind = static_cast<route_kind>(rng() % 6);  // includes two out-of-range values
    r.gamma = rng() % 1000;
    r.prefix_tokens = rng();
    for (auto f : all_forms) EXPECT_FALSE(may_leave_device(privacy_class::local_only, r, f));
  }
  // An out-of-range class value is treated as local_only.
  EXPECT_FALSE(may_leave_device(static_cast<privacy_class>(7), route::in_cloud()));
}

TEST(may_leave_device, is_usable_at_compile_time) {
  static_assert(!may_leave_device(privacy_class::local_only, route::in_cloud()));
  static_assert(may_leave_device(privacy_class::cloud_allowed, route::speculative(2)));
  static_assert(!may_leave_device(privacy_class::redactable, route::in_cloud(), payload_form::plain));
  SUCCEED();
}

TEST(privacy_class, ordering_and_most_restrictive) {
  using specdec::privacy::most_restrictive;
  EXPECT_LT(privacy_class::local_only, privacy_class::redactable);
  EXPECT_LT(privacy_class::redactable, privacy_class::cloud_allowed);
  for (auto a : all_classes)
    for (auto b : all_classes) {
      const auto m = most_restrictive(a, b);
      EXPECT_EQ(m, most_restrictive(b, a));
      EXPECT_TRUE(m == a || m == b);
      EXPECT_LE(m, a);
      EXPECT_LE(m, b);
      // More restrictive never allows more.
      for (const auto& r : all_routes)
        for (auto f : all_forms)
          if (may_leave_device(m, r, f)) {
            EXPECT_TRUE(may_leave_device(a, r, f) && may_leave_device(b, r, f));
          }
    }
}

TEST(privacy_class, names_round_trip_and_bad_names_fail_clearly) {
  for (auto c : all_classes) EXPECT_EQ(specdec::privacy::parse_privacy_class(to_string(c)), c);
  try {
    (void)specdec::privacy::parse_privacy_class("private", "--privacy");
    FAIL() << "expected invalid_argument";
  } catch (const specdec::invalid_argument& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("--privacy"), std::string::npos) << m;
    EXPECT_NE(m.find("'private'"), std::string::npos) << m;
    EXPECT_NE(m.find("local_only, redactable, cloud_allowed"), std::string::npos) << m;
  }
}

TEST(require_may_leave_device, throws_a_privacy_violation_naming_class_route_and_form) {
  EXPECT_NO_THROW(specdec::privacy::require_may_leave_device(privacy_class::cloud_allowed, route::in_cloud()));
  EXPECT_NO_THROW(
      specdec::privacy::require_may_leave_device(privacy_class::redactable, route::in_cloud(), payload_form::redacted));
  try {
    specdec::privacy::require_may_leave_device(privacy_class::redactable, route::speculative(3),
                                               payload_form::redacted);
    FAIL() << "expected privacy_violation";
  } catch (const specdec::privacy::privacy_violation& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("redactable"), std::string::npos) << m;
    EXPECT_NE(m.find("speculative"), std::string::npos) << m;
    EXPECT_NE(m.find("redacted"), std::string::npos) << m;
  }
  EXPECT_THROW(specdec::privacy::require_may_leave_device(privacy_class::local_only, route::in_cloud()),
               specdec::error);  // a privacy_violation is a specdec::error
}

}  // namespace
