// Must NOT compile: an arbiter without `decide(features, link, budget)` is not a
// specdec::hybrid::arbiter. The diagnostic must name the missing concept: has_decide.
#include <specdec/hybrid/arbiter.hpp>

struct always_device {
#ifdef SPECDEC_COMPILE_FAIL_FIXED
  specdec::hybrid::route decide(const specdec::hybrid::request_features&,
                                const specdec::hybrid::link_estimate&,
                                const specdec::hybrid::budget&) const {
    return specdec::hybrid::route::on_device();
  }
#endif
  void validate() const {}
};

int main() {
  specdec::hybrid::budget_guard<always_device> guard{};
  (void)guard;
}
