#include "harness.hpp"

#include <cmath>

#include "helpers.hpp"

using namespace segrank;
using test_util::view2;

namespace {
contingency_table example() {
  // reference     test
  // 1 1 2         1 1 1
  // 2 0 0         2 0 5
  // 3 3 3         3 3 0
  const std::vector<std::uint32_t> r = {1, 1, 2, 2, 0, 0, 3, 3, 3};
  const std::vector<std::uint32_t> s = {1, 1, 1, 2, 0, 5, 3, 3, 0};
  return contingency(view2(r, 3, 3), view2(s, 3, 3));
}
}  // namespace

TEST_CASE("rand: method convention, hand-computed") {
  // pairs n(n-1) over foreground-foreground cells: (1,1)=2 -> 2, (3,3)=2 -> 2; both = 4
  // reference sizes 2, 2, 3 -> 2 + 2 + 6 = 10; test sizes 3, 1, 2, 1 -> 6 + 0 + 2 + 0 = 8
  const auto s = adapted_rand_sums(example());
  CHECK(s.both == uint128(4));
  CHECK(s.ref == uint128(10));
  CHECK(s.test == uint128(8));
  const auto r = adapted_rand(example());
  CHECK(r.precision == segrank_test::Approx(0.4));
  CHECK(r.recall == segrank_test::Approx(0.5));
  CHECK(r.f == segrank_test::Approx(4.0 / 9.0));
}

TEST_CASE("rand: skimage, elf and snemi3d conventions, hand-computed") {
  const auto t = example();
  // skimage: pixels with reference > 0 (7), test 0 an ordinary label.
  // cells (1,1)=2, (2,1)=1, (2,2)=1, (3,3)=2, (3,0)=1 -> both = 2 + 2 = 4
  // reference 2, 2, 3 -> 10; test columns over those rows: 1:3, 2:1, 3:2, 0:1 -> 6 + 2 = 8
  auto s = adapted_rand_sums(t, rand_convention::skimage);
  CHECK(s.both == uint128(4));
  CHECK(s.ref == uint128(10));
  CHECK(s.test == uint128(8));
  // elf: every pixel, squares. cells 1,2,1,1,1,1,2,1 -> 4+1+1+4 + 1+1+1+1... listed:
  // (0,0)=1,(0,5)=1,(1,1)=2,(2,1)=1,(2,2)=1,(3,0)=1,(3,3)=2 -> 1+1+4+1+1+1+4 = 13
  // rows 0:2, 1:2, 2:2, 3:3 -> 4+4+4+9 = 21; columns 0:2, 1:3, 2:1, 3:2, 5:1 -> 4+9+1+4+1 = 19
  s = adapted_rand_sums(t, rand_convention::elf);
  CHECK(s.both == uint128(13));
  CHECK(s.ref == uint128(21));
  CHECK(s.test == uint128(19));
  // snemi3d: reference > 0, squares, test background singletons (1 pixel: (3,0))
  // both = 4 + 1 + 1 + 4 + 1 = 11; ref = 4 + 4 + 9 = 17; test columns 1:3, 2:1, 3:2 -> 9+1+4 + 1 = 15
  s = adapted_rand_sums(t, rand_convention::snemi3d);
  CHECK(s.both == uint128(11));
  CHECK(s.ref == uint128(17));
  CHECK(s.test == uint128(15));
  const auto r = adapted_rand(t, rand_convention::snemi3d);
  CHECK(r.f == segrank_test::Approx(11.0 / 16.0));
}

TEST_CASE("rand: identical labellings score 1, no pairs give NaN") {
  const std::vector<std::uint16_t> a = {1, 1, 0, 2, 2, 2};
  const auto same = adapted_rand(contingency(view2(a, 2, 3), view2(a, 2, 3)));
  CHECK(same.f == 1.0);
  const std::vector<std::uint16_t> singles = {1, 0, 2, 0, 3, 0};
  const auto none = adapted_rand(contingency(view2(singles, 2, 3), view2(singles, 2, 3)));
  CHECK(std::isnan(none.precision));
  CHECK(std::isnan(none.f));
  CHECK(std::isnan(adapted_rand(contingency_table{}).f));
}

TEST_CASE("vi: hand-computed split and merge") {
  // reference splits what the test keeps together: 1 bit of merge, 0 split
  const std::vector<std::uint32_t> r = {1, 1, 2, 2};
  const std::vector<std::uint32_t> s = {4, 4, 4, 4};
  const auto v = variation_of_information(contingency(view2(r, 1, 4), view2(s, 1, 4)));
  CHECK(v.split == segrank_test::Approx(0.0));
  CHECK(v.merge == segrank_test::Approx(1.0));
  const auto w = variation_of_information(contingency(view2(s, 1, 4), view2(r, 1, 4)));
  CHECK(w.split == segrank_test::Approx(1.0));
  CHECK(w.merge == segrank_test::Approx(0.0));
  // method convention: background pixels inside the mask are singletons
  // reference {1,1,0,0}, test {3,3,3,3}: clusters R = {1:2, s, s}, T = {3:4}, joint = {2, s, s}
  // split = (2 log2 2 - 2 log2 2) / 4 = 0; merge = (4 log2 4 - 2 log2 2) / 4 = 1.5
  const std::vector<std::uint32_t> r2 = {1, 1, 0, 0};
  const auto m = variation_of_information(contingency(view2(r2, 1, 4), view2(s, 1, 4)));
  CHECK(m.split == segrank_test::Approx(0.0));
  CHECK(m.merge == segrank_test::Approx(1.5));
  const auto all = variation_of_information(contingency(view2(r2, 1, 4), view2(s, 1, 4)), vi_convention::all);
  CHECK(all.merge == segrank_test::Approx(1.0));  // 0 is one cluster of 2 under 'all'
  CHECK(std::isnan(variation_of_information(contingency_table{}).split));
}

TEST_CASE("iou: overlapping pairs, hand-computed") {
  const auto p = iou(example());
  CHECK(p.ref_ids == std::vector<std::uint64_t>{1, 2, 3});
  CHECK(p.test_ids == std::vector<std::uint64_t>{1, 2, 3, 5});
  REQUIRE(p.iou.size() == 4);  // (1,1), (2,1), (2,2), (3,3)
  CHECK(p.iou[0] == segrank_test::Approx(2.0 / 3.0));  // 2 / (2 + 3 - 2)
  CHECK(p.iou[1] == segrank_test::Approx(1.0 / 4.0));  // 1 / (2 + 3 - 1)
  CHECK(p.iou[2] == segrank_test::Approx(1.0 / 2.0));  // 1 / (2 + 1 - 1)
  CHECK(p.iou[3] == segrank_test::Approx(2.0 / 3.0));  // 2 / (3 + 2 - 2)
  CHECK(p.ref_index == std::vector<std::uint64_t>{0, 1, 1, 2});
  CHECK(p.test_index == std::vector<std::uint64_t>{0, 0, 1, 2});
}
