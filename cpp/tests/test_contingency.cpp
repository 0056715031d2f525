#include "harness.hpp"

#include <limits>
#include <map>
#include <random>

#include "helpers.hpp"

using namespace segrank;
using test_util::for_each_simd;
using test_util::view2;

namespace {
// Plain pixel-by-pixel reference.
template <class R, class S>
contingency_table naive(const std::vector<R>& r, const std::vector<S>& s) {
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::uint64_t> m;
  for (std::size_t k = 0; k < r.size(); ++k)
    ++m[{static_cast<std::uint64_t>(static_cast<std::int64_t>(r[k])), static_cast<std::uint64_t>(static_cast<std::int64_t>(s[k]))}];
  contingency_table t;
  for (const auto& e : m) {
    t.ref.push_back(e.first.first);
    t.test.push_back(e.first.second);
    t.count.push_back(e.second);
  }
  return t;
}
}  // namespace

TEST_CASE("contingency: hand-computed table, id 0 included") {
  const std::vector<std::uint32_t> r = {1, 1, 2, 0, 2, 2};
  const std::vector<std::uint32_t> s = {3, 3, 3, 0, 0, 4};
  for_each_simd([&](simd_level) {
    const auto t = contingency(view2(r, 2, 3), view2(s, 2, 3));
    CHECK(t.ref == std::vector<std::uint64_t>{0, 1, 2, 2, 2});
    CHECK(t.test == std::vector<std::uint64_t>{0, 3, 0, 3, 4});
    CHECK(t.count == std::vector<std::uint64_t>{1, 2, 1, 1, 1});
    CHECK(t.total() == 6);
  });
}

TEST_CASE("contingency: runs equal pixel counts for every label width, long and short rows") {
  std::mt19937 gen(11);
  for (std::ptrdiff_t cols : {1, 7, 16, 33, 250}) {
    const std::ptrdiff_t rows = 9;
    std::vector<std::uint8_t> r8(static_cast<std::size_t>(rows * cols));
    std::vector<std::uint16_t> s16(r8.size());
    std::vector<std::uint64_t> r64(r8.size());
    std::vector<std::int32_t> s32(r8.size());
    // runs of random length so that both short and long stretches occur
    std::uint64_t cur_r = 0, cur_s = 0;
    for (std::size_t k = 0; k < r8.size(); ++k) {
      if (gen() % 5 == 0) cur_r = gen() % 4;
      if (gen() % 7 == 0) cur_s = gen() % 3;
      r8[k] = static_cast<std::uint8_t>(cur_r);
      r64[k] = cur_r ? std::numeric_limits<std::uint64_t>::max() - cur_r : 0;
      s16[k] = static_cast<std::uint16_t>(cur_s);
      s32[k] = cur_s ? -static_cast<std::int32_t>(cur_s) : 0;
    }
    for_each_simd([&](simd_level) {
      CHECK(contingency(view2(r8, rows, cols), view2(s16, rows, cols)) == naive(r8, s16));
      const auto t = contingency(view2(r64, rows, cols), view2(s32, rows, cols));
      std::vector<std::int64_t> s_signed(s32.begin(), s32.end());
      CHECK(t == naive(std::vector<std::int64_t>(r64.begin(), r64.end()), s_signed));
    });
  }
}

TEST_CASE("contingency: signed ids are sign-extended, extreme ids kept") {
  const std::vector<std::int32_t> r = {-1, -1, std::numeric_limits<std::int32_t>::min(), 0};
  const std::vector<std::uint64_t> s = {~std::uint64_t(0), ~std::uint64_t(0), 5, 0};
  const auto t = contingency(view2(r, 1, 4), view2(s, 1, 4));
  REQUIRE(t.size() == 3);
  CHECK(t.ref[0] == 0);
  CHECK(t.ref[1] == static_cast<std::uint64_t>(std::int64_t(std::numeric_limits<std::int32_t>::min())));
  CHECK(t.ref[2] == ~std::uint64_t(0));
  CHECK(t.test[2] == ~std::uint64_t(0));
  CHECK(t.count[2] == 2);
}

TEST_CASE("contingency: boundary band, hand-computed") {
  SUBCASE("one row") {
    const std::vector<std::uint16_t> r = {1, 1, 2, 2, 0};
    const std::vector<std::uint16_t> s = {1, 1, 1, 1, 1};
    contingency_options o;
    o.exclude_boundary = true;
    // band: x = 1 (1 -> 2) and x = 3 (2 -> 0); the last pixel has no forward neighbour
    const auto t = contingency(view2(r, 1, 5), view2(s, 1, 5), o);
    CHECK(t.ref == std::vector<std::uint64_t>{0, 1, 2});
    CHECK(t.count == std::vector<std::uint64_t>{1, 1, 1});
  }
  SUBCASE("two rows: next-row transitions count too") {
    const std::vector<std::uint16_t> r = {1, 1, 1, 1, 2, 2};
    const std::vector<std::uint16_t> s = {7, 7, 7, 7, 7, 7};
    contingency_options o;
    o.exclude_boundary = true;
    // row 0: x=0 has 1 below (kept), x=1 has 2 below (band), x=2 has 2 below (band);
    // row 1: x=0 -> 2 on its right (band), x=1 (2 -> 2) kept, x=2 kept
    const auto t = contingency(view2(r, 2, 3), view2(s, 2, 3), o);
    CHECK(t.ref == std::vector<std::uint64_t>{1, 2});
    CHECK(t.count == std::vector<std::uint64_t>{1, 2});
  }
}

TEST_CASE("contingency: blocks with a one-slice halo merge to the whole table, band included") {
  std::mt19937 gen(5);
  const std::ptrdiff_t Z = 6, Y = 23, X = 31;
  std::vector<std::uint32_t> r(static_cast<std::size_t>(Z * Y * X)), s(r.size());
  for (std::ptrdiff_t z = 0; z < Z; ++z)
    for (std::ptrdiff_t y = 0; y < Y; ++y)
      for (std::ptrdiff_t x = 0; x < X; ++x) {
        const std::size_t k = static_cast<std::size_t>((z * Y + y) * X + x);
        r[k] = static_cast<std::uint32_t>((z / 2) * 100 + (y / 5) * 10 + x / 7);  // boxes
        s[k] = gen() % 9 == 0 ? 0u : static_cast<std::uint32_t>((y / 4) * 10 + (x + 2) / 6);
      }
  for (bool exclude : {false, true}) {
    contingency_options o;
    o.exclude_boundary = exclude;
    const auto whole = contingency(array_view<std::uint32_t>::c_order(r.data(), {Z, Y, X}),
                                   array_view<std::uint32_t>::c_order(s.data(), {Z, Y, X}), o);
    contingency_table merged;
    const std::ptrdiff_t bz = 4, by = 10, bx = 12;
    for (std::ptrdiff_t z0 = 0; z0 < Z; z0 += bz)
      for (std::ptrdiff_t y0 = 0; y0 < Y; y0 += by)
        for (std::ptrdiff_t x0 = 0; x0 < X; x0 += bx) {
          const std::ptrdiff_t ez = std::min(bz, Z - z0), ey = std::min(by, Y - y0), ex = std::min(bx, X - x0);
          contingency_options ob = o;
          ob.halo = {{z0 + ez < Z ? 1 : 0, y0 + ey < Y ? 1 : 0, x0 + ex < X ? 1 : 0}};
          const std::ptrdiff_t shape[3] = {ez + ob.halo[0], ey + ob.halo[1], ex + ob.halo[2]};
          const std::ptrdiff_t strides[3] = {Y * X, X, 1};
          const std::size_t off = static_cast<std::size_t>((z0 * Y + y0) * X + x0);
          merged.merge(contingency(array_view<std::uint32_t>::from_element_strides(r.data() + off, 3, shape, strides),
                                   array_view<std::uint32_t>::from_element_strides(s.data() + off, 3, shape, strides), ob));
        }
    CHECK(merged == whole);
    if (exclude) CHECK(whole.total() < static_cast<std::uint64_t>(Z * Y * X));
  }
}

TEST_CASE("contingency: transposed views, accumulators and threads give the same table") {
  std::mt19937 gen(9);
  const std::ptrdiff_t rows = 2000, cols = 2200;  // 4.4 Mvoxel: two threads engage
  std::vector<std::uint32_t> r(static_cast<std::size_t>(rows * cols)), s(r.size());
  for (std::ptrdiff_t y = 0; y < rows; ++y)
    for (std::ptrdiff_t x = 0; x < cols; ++x) {
      const std::size_t k = static_cast<std::size_t>(y * cols + x);
      r[k] = static_cast<std::uint32_t>((y / 40) * 100 + x / 37);
      s[k] = static_cast<std::uint32_t>(((y + 3) / 40) * 100 + (x + (gen() % 3)) / 37);
    }
  const auto whole = contingency(view2(r, rows, cols), view2(s, rows, cols));
  contingency_options o;
  o.threads = 2;
  CHECK(contingency(view2(r, rows, cols), view2(s, rows, cols), o) == whole);
  o.exclude_boundary = true;
  const auto banded1 = contingency(view2(r, rows, cols), view2(s, rows, cols), o);
  o.threads = 1;
  CHECK(contingency(view2(r, rows, cols), view2(s, rows, cols), o) == banded1);
  const std::ptrdiff_t tshape[2] = {cols, rows}, tstrides[2] = {1, cols};
  const auto transposed = contingency(array_view<std::uint32_t>::from_element_strides(r.data(), 2, tshape, tstrides),
                                      array_view<std::uint32_t>::from_element_strides(s.data(), 2, tshape, tstrides));
  CHECK(transposed == whole);
  contingency_accumulator<std::uint32_t, std::uint32_t> acc;
  acc.add(array_view<std::uint32_t>::c_order(r.data(), {rows / 2, cols}),
          array_view<std::uint32_t>::c_order(s.data(), {rows / 2, cols}));
  acc.add(array_view<std::uint32_t>::c_order(r.data() + (rows / 2) * cols, {rows - rows / 2, cols}),
          array_view<std::uint32_t>::c_order(s.data() + (rows / 2) * cols, {rows - rows / 2, cols}));
  CHECK(acc.table() == whole);
  set_simd(simd_level::portable);
  CHECK(contingency(view2(r, rows, cols), view2(s, rows, cols)) == whole);
  set_simd(detect_simd());
}

TEST_CASE("contingency: merge sums shared pairs") {
  contingency_table a, b;
  a.ref = {0, 1, 3};
  a.test = {0, 2, 1};
  a.count = {5, 2, 1};
  b.ref = {1, 1, 4};
  b.test = {2, 3, 0};
  b.count = {4, 1, 2};
  a.merge(b);
  CHECK(a.ref == std::vector<std::uint64_t>{0, 1, 1, 3, 4});
  CHECK(a.test == std::vector<std::uint64_t>{0, 2, 3, 1, 0});
  CHECK(a.count == std::vector<std::uint64_t>{5, 6, 1, 1, 2});
  CHECK_NOTHROW(a.validate());
}
