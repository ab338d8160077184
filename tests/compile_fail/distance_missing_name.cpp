// Must NOT compile: a distance metric without `name` is not a specdec::distance_metric.
// The diagnostic must name the missing concept: named_distance.
#include <span>
#include <string_view>

#include <specdec/rollback.hpp>

struct max_abs_diff {
#ifdef SPECDEC_COMPILE_FAIL_FIXED
  static constexpr std::string_view name = "max_abs";
#endif
  float operator()(std::span<const float> p, std::span<const float> q, specdec::token_id) const {
    float m = 0;
    for (std::size_t i = 0; i < p.size(); ++i) m = std::max(m, p[i] > q[i] ? p[i] - q[i] : q[i] - p[i]);
    return m;
  }
};

int main() {
  specdec::distance_rollback<max_abs_diff> policy{.alpha_rb = 0.5f};
  policy.validate();
}
