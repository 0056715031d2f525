#include "harness.hpp"

#include <cmath>
#include <cstring>
#include <random>

#include "helpers.hpp"

using namespace segrank;
using test_util::for_each_simd;
using test_util::view2;

TEST_CASE("binary: uint8 masks, hand-computed") {
  // A = {(0,0), (0,1), (1,1)}, B = {(0,0), (1,1), (1,2)}
  const std::vector<std::uint8_t> a = {1, 1, 0, 0, 1, 0, 0, 0, 0};
  const std::vector<std::uint8_t> b = {1, 0, 0, 0, 1, 7, 0, 0, 0};
  binary_options o;
  o.masks = true;
  for_each_simd([&](simd_level) {
    const auto c = binary_consistency(view2(a, 3, 3), view2(b, 3, 3), o);
    CHECK(c.n_and == 2);
    CHECK(c.n_or == 4);
    CHECK(c.n_xor() == 2);
    CHECK(c.nhd() == segrank_test::Approx(0.5));
    CHECK(c.consistency() == segrank_test::Approx(0.5));
    CHECK(c.ei() == segrank_test::Approx(0.5));  // p = 1 on masks
    CHECK(c.ei_units == uint128(std::uint64_t(2) << 30));
  });
}

TEST_CASE("binary: float32 probabilities, hand-computed NHD and EI") {
  const std::vector<float> pu = {0.9f, 0.2f, 0.7f, 0.6f};
  const std::vector<float> pp = {0.8f, 0.6f, 0.1f, 0.7f};
  for_each_simd([&](simd_level) {
    const auto c = binary_consistency(view2(pu, 2, 2), view2(pp, 2, 2));
    CHECK(c.n_and == 2);  // pixels 0 and 3
    CHECK(c.n_or == 4);
    CHECK(c.nhd() == segrank_test::Approx(0.5));
    const double ei_sum = std::sqrt(0.9 * 0.8) + std::sqrt(0.6 * 0.7);
    CHECK(c.ei_sum() == segrank_test::Approx(ei_sum).epsilon(1e-6));
    CHECK(c.ei() == segrank_test::Approx(ei_sum / 4).epsilon(1e-6));
  });
}

TEST_CASE("binary: threshold is strict, empty union gives NaN scores") {
  const std::vector<float> p = {0.5f, 0.5f, 0.25f};
  const auto c = binary_consistency(view2(p, 1, 3), view2(p, 1, 3));
  CHECK(c.n_or == 0);
  CHECK(c.empty());
  CHECK(std::isnan(c.nhd()));
  CHECK(std::isnan(c.consistency()));
  CHECK(std::isnan(c.ei()));
}

TEST_CASE("binary: background variant scores 1 - p on the complements") {
  const std::vector<float> pu = {0.9f, 0.2f, 0.7f, 0.1f};
  const std::vector<float> pp = {0.8f, 0.6f, 0.1f, 0.3f};
  binary_options o;
  o.background = true;
  for_each_simd([&](simd_level) {
    const auto c = binary_consistency(view2(pu, 1, 4), view2(pp, 1, 4), o);
    // background: A' = {1, 3}, B' = {2, 3}
    CHECK(c.n_and == 1);
    CHECK(c.n_or == 3);
    CHECK(c.ei_sum() == segrank_test::Approx(std::sqrt(0.9 * 0.7)).epsilon(1e-6));
  });
}

TEST_CASE("binary: uint8 probabilities mean v / 255") {
  const std::vector<std::uint8_t> a = {255, 128, 127, 0, 200};
  const std::vector<std::uint8_t> b = {255, 128, 255, 0, 100};
  for_each_simd([&](simd_level) {
    const auto c = binary_consistency(view2(a, 1, 5), view2(b, 1, 5));
    // 128/255 > 0.5 > 127/255: A = {0, 1, 4}, B = {0, 1, 2}
    CHECK(c.n_and == 2);
    CHECK(c.n_or == 4);
    CHECK(c.ei_sum() == segrank_test::Approx(1.0 + 128.0 / 255.0).epsilon(1e-9));
  });
}

TEST_CASE("binary: float16 and float64 agree with float32 on representable values") {
  // 0.75, 0.25, 1.0, 0.625 in binary16
  const std::vector<float16> ha = {{0x3A00}, {0x3400}, {0x3C00}, {0x3900}};
  const std::vector<float16> hb = {{0x3A00}, {0x3A00}, {0x3400}, {0x3900}};
  const std::vector<float> fa = {0.75f, 0.25f, 1.0f, 0.625f}, fb = {0.75f, 0.75f, 0.25f, 0.625f};
  const std::vector<double> da = {0.75, 0.25, 1.0, 0.625}, db = {0.75, 0.75, 0.25, 0.625};
  for_each_simd([&](simd_level) {
    const auto ch = binary_consistency(view2(ha, 2, 2), view2(hb, 2, 2));
    const auto cf = binary_consistency(view2(fa, 2, 2), view2(fb, 2, 2));
    const auto cd = binary_consistency(view2(da, 2, 2), view2(db, 2, 2));
    CHECK(ch == cf);
    CHECK(cd == cf);  // terms 0.75 and 0.625 are exact in both precisions
    CHECK(cf.n_and == 2);
    CHECK(cf.n_or == 4);
    CHECK(cf.ei_sum() == segrank_test::Approx(0.75 + 0.625));
  });
}

TEST_CASE("binary: strided views equal contiguous copies") {
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const std::ptrdiff_t rows = 13, cols = 41;
  std::vector<float> a(static_cast<std::size_t>(rows * cols)), b(a.size());
  for (auto& x : a) x = u(gen);
  for (auto& x : b) x = u(gen);
  // every other column, and the transpose
  std::vector<float> ca, cb;
  for (std::ptrdiff_t r = 0; r < rows; ++r)
    for (std::ptrdiff_t c = 0; c < cols; c += 2) {
      ca.push_back(a[static_cast<std::size_t>(r * cols + c)]);
      cb.push_back(b[static_cast<std::size_t>(r * cols + c)]);
    }
  const std::ptrdiff_t shape[2] = {rows, (cols + 1) / 2};
  const std::ptrdiff_t strides[2] = {cols, 2};
  for_each_simd([&](simd_level) {
    const auto strided = binary_consistency(array_view<float>::from_element_strides(a.data(), 2, shape, strides),
                                            array_view<float>::from_element_strides(b.data(), 2, shape, strides));
    const auto contiguous = binary_consistency(view2(ca, rows, shape[1]), view2(cb, rows, shape[1]));
    CHECK(strided == contiguous);
    const std::ptrdiff_t tshape[2] = {cols, rows}, tstrides[2] = {1, cols};
    const auto transposed = binary_consistency(array_view<float>::from_element_strides(a.data(), 2, tshape, tstrides),
                                               array_view<float>::from_element_strides(b.data(), 2, tshape, tstrides));
    CHECK(transposed == binary_consistency(view2(a, rows, cols), view2(b, rows, cols)));
  });
}

TEST_CASE("binary: blocks merge exactly, threads and SIMD paths agree") {
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const std::ptrdiff_t rows = 1500, cols = 2900;  // > 4 Mvoxel: two threads engage
  std::vector<float> a(static_cast<std::size_t>(rows * cols)), b(a.size());
  for (std::size_t k = 0; k < a.size(); ++k) {
    a[k] = u(gen);
    b[k] = std::min(1.f, std::max(0.f, a[k] + 0.2f * (u(gen) - 0.5f)));
  }
  const auto whole = binary_consistency(view2(a, rows, cols), view2(b, rows, cols));
  binary_counts blocks;
  for (std::ptrdiff_t r0 = 0; r0 < rows; r0 += 377) {
    const std::ptrdiff_t n = std::min<std::ptrdiff_t>(377, rows - r0);
    blocks += binary_consistency(array_view<float>::c_order(a.data() + r0 * cols, {n, cols}),
                                 array_view<float>::c_order(b.data() + r0 * cols, {n, cols}));
  }
  CHECK(blocks == whole);
  binary_options o;
  o.threads = 2;
  CHECK(binary_consistency(view2(a, rows, cols), view2(b, rows, cols), o) == whole);
  set_simd(simd_level::portable);
  CHECK(binary_consistency(view2(a, rows, cols), view2(b, rows, cols)) == whole);
  set_simd(detect_simd());
}

TEST_CASE("binary: empty arrays and shape mismatch") {
  const std::vector<float> none;
  const auto c = binary_consistency(array_view<float>::c_order(none.data(), {0, 5}),
                                    array_view<float>::c_order(none.data(), {0, 5}));
  CHECK(c.n_or == 0);
  const std::vector<float> x(6, 0.7f);
  CHECK_THROWS_AS(binary_consistency(view2(x, 2, 3), view2(x, 3, 2)), std::invalid_argument);
}
