// Guards against a compiler miscompilation seen with GCC 12.2 and -march=native on AVX-512
// machines (see CMakeLists.txt): SLP vectorization turned a vector built element by element
// into a broadcast of its first element. If this test fails, the project's compile flags no
// longer contain the workaround and every other test result is suspect.
#include <gtest/gtest.h>

#include <cstddef>
#include <vector>

namespace {
std::vector<std::size_t> two_then(int k) {
  std::vector<std::size_t> v;
  for (int i = 0; i < 4; ++i) v.push_back(i < 2 ? 2 : static_cast<std::size_t>(k));
  return v;
}

TEST(toolchain, element_by_element_vector_is_not_a_broadcast) {
  EXPECT_EQ(two_then(0), (std::vector<std::size_t>{2, 2, 0, 0}));
  const std::vector<std::size_t> a{2, 2, 1, 1}, b{2, 2, 0, 0};
  EXPECT_EQ(two_then(1), a);
  EXPECT_EQ(two_then(0), b);
}
}  // namespace
