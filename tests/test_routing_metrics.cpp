// Tests for include/specdec/hybrid/routing_metrics.hpp on hand-computed cases: route
// qualities, PGR, the oracle curve, APGR and CPT by the trapezoid and interpolation rules,
// ROC AUC with ties, and a bootstrap that is deterministic and covers a known mean.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "specdec/hybrid/routing_metrics.hpp"

namespace {
using namespace specdec::hybrid;

// Four requests: the cloud gains 3, 1, 0 and -1 over the device.
const std::vector<routing_outcome> four{{.device_quality = 0, .cloud_quality = 3, .prefix_quality = 1, .device_ok = false},
                                        {.device_quality = 1, .cloud_quality = 2, .prefix_quality = 1, .device_ok = false},
                                        {.device_quality = 2, .cloud_quality = 2, .device_ok = true},
                                        {.device_quality = 3, .cloud_quality = 2, .device_ok = true}};

// Routes the requests whose request_id is below `cut` (calibrated: cut = floor(b n)).
struct first_k {
  std::size_t cut = 0;
  route decide(const request_features& f, const link_estimate&, const budget&) const {
    return f.request_id < cut ? route::in_cloud() : route::on_device();
  }
  void validate() const {}
  first_k calibrated(std::span<const request_features> s, const link_estimate&, const budget& b) const {
    return {static_cast<std::size_t>(std::floor(b.max_cloud_fraction * static_cast<double>(s.size()) + 1e-9))};
  }
};

std::vector<request_features> ids(std::size_t n) {
  std::vector<request_features> f(n);
  for (std::size_t i = 0; i < n; ++i) f[i].request_id = i;
  return f;
}

TEST(routing_outcome, quality_of_each_route) {
  const auto& o = four[0];
  EXPECT_EQ(o.quality_of(route::on_device()), 0.0);
  EXPECT_EQ(o.quality_of(route::in_cloud()), 3.0);
  EXPECT_EQ(o.quality_of(route::speculative(4)), 3.0);
  EXPECT_EQ(o.quality_of(route::cloud_prefix(4)), 1.0);
  EXPECT_THROW((void)four[2].quality_of(route::cloud_prefix(4)), specdec::invalid_argument);
}

TEST(routing_curve, hand_computed_points_apgr_and_cpt) {
  const auto r = quality_range::of(four);
  EXPECT_DOUBLE_EQ(r.device_only, 1.5);
  EXPECT_DOUBLE_EQ(r.cloud_only, 2.25);
  const std::vector<double> budgets{0.0, 0.25, 0.5, 0.75, 1.0};
  const auto c = routing_curve(first_k{}, ids(4), ids(4), four, {}, budgets);
  ASSERT_EQ(c.size(), 5u);
  // Sending the first k: mean qualities 1.5, 2.25, 2.5, 2.5, 2.25 -> PGR 0, 1, 4/3, 4/3, 1.
  const double pgr[] = {0.0, 1.0, 4.0 / 3.0, 4.0 / 3.0, 1.0};
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_DOUBLE_EQ(c[i].cloud_fraction, budgets[i]);
    EXPECT_NEAR(c[i].pgr, pgr[i], 1e-12) << i;
  }
  // Trapezoids over fractions 0, .25, .5, .75, 1: .25 * (0.5 + 7/6 + 4/3 + 7/6) = 25/24.
  EXPECT_NEAR(average_pgr(c), 25.0 / 24.0, 1e-12);
  // PGR 0.5 is reached halfway to the second point; 0.8 at 0.8 of it.
  EXPECT_NEAR(cost_to_reach(c, 0.5), 0.125, 1e-12);
  EXPECT_NEAR(cost_to_reach(c, 0.8), 0.2, 1e-12);
  EXPECT_EQ(cost_to_reach(c, 2.0), 1.0);  // never
  // The oracle sends the largest gains first and never a request the cloud does not
  // improve: the same points up to budget 0.5, then it stays at 2 of 4 requests.
  const auto o = oracle_curve(four, budgets);
  const double opgr[] = {0.0, 1.0, 4.0 / 3.0, 4.0 / 3.0, 4.0 / 3.0};
  const double ofrac[] = {0.0, 0.25, 0.5, 0.5, 0.5};
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_NEAR(o[i].pgr, opgr[i], 1e-12) << i;
    EXPECT_DOUBLE_EQ(o[i].cloud_fraction, ofrac[i]) << i;
  }
}

TEST(routing_curve, a_reversed_router_recovers_less_than_random) {
  // Routing the last requests first (losses first) must give APGR < 0.5 (random's).
  std::vector<routing_outcome> rev(four.rbegin(), four.rend());
  const std::vector<double> budgets{0.0, 0.25, 0.5, 0.75, 1.0};
  EXPECT_LT(average_pgr(routing_curve(first_k{}, ids(4), ids(4), rev, {}, budgets)), 0.5);
  EXPECT_NEAR(average_pgr({}), 0.5, 1e-12);  // the straight line from (0, 0) to (1, 1)
}

TEST(roc_auc, mann_whitney_with_ties) {
  EXPECT_DOUBLE_EQ(roc_auc(std::vector<double>{1, 2, 3, 4}, {false, false, true, true}), 1.0);
  EXPECT_DOUBLE_EQ(roc_auc(std::vector<double>{4, 3, 2, 1}, {false, false, true, true}), 0.0);
  EXPECT_DOUBLE_EQ(roc_auc(std::vector<double>{1, 1, 1, 1}, {false, true, false, true}), 0.5);
  // Positives {2, 3}, negatives {1, 2}: pairs (2>1)=1, (2=2)=.5, (3>1)=1, (3>2)=1 -> 3.5 / 4.
  EXPECT_DOUBLE_EQ(roc_auc(std::vector<double>{1, 2, 2, 3}, {false, false, true, true}), 0.875);
  EXPECT_THROW((void)roc_auc(std::vector<double>{1, 2}, {true, true}), specdec::invalid_argument);
  EXPECT_THROW((void)roc_auc(std::vector<double>{1, 2}, {true}), specdec::invalid_argument);
}

TEST(bootstrap, deterministic_and_covers_the_mean) {
  std::vector<double> x;
  for (int i = 0; i < 200; ++i) x.push_back(std::sin(1.7 * i) + 0.3);  // mean about 0.3
  auto mean = [&](std::span<const std::size_t> ix) {
    double s = 0;
    for (std::size_t i : ix) s += x[i];
    return s / static_cast<double>(ix.size());
  };
  const auto a = bootstrap(x.size(), mean, 500, 0.9, 3), b = bootstrap(x.size(), mean, 500, 0.9, 3);
  EXPECT_EQ(a.lower, b.lower);
  EXPECT_EQ(a.upper, b.upper);
  EXPECT_LT(a.lower, a.estimate);
  EXPECT_GT(a.upper, a.estimate);
  // The standard error of the mean of 200 values of sd ~0.71 is ~0.05: a 90% interval is
  // about +-0.08 wide.
  EXPECT_GT(a.upper - a.lower, 0.08);
  EXPECT_LT(a.upper - a.lower, 0.25);
  EXPECT_THROW((void)bootstrap(0, mean, 10, 0.9, 1), specdec::invalid_argument);
  EXPECT_THROW((void)bootstrap(5, mean, 1, 0.9, 1), specdec::invalid_argument);
}
}  // namespace
