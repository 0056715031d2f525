// Agreement across a bank of models: hand-computed pairwise and leave-one-out consensus sums.
#include "harness.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "helpers.hpp"

using namespace segrank;
using test_util::for_each_simd;
using test_util::view2;

namespace {

bool near(double a, double b, double rel = 1e-14) {
  return std::abs(a - b) <= rel * std::max(std::abs(a), std::abs(b));
}

// Three models on a 2 x 2 image, one vector each.
// A_0 = {0, 1}, A_1 = {0}, A_2 = {0, 1, 2}; pixel 3 is background everywhere.
const std::vector<float> p0 = {0.9f, 0.8f, 0.1f, 0.0f};
const std::vector<float> p1 = {0.7f, 0.3f, 0.1f, 0.0f};
const std::vector<float> p2 = {0.6f, 0.9f, 0.8f, 0.0f};

std::vector<array_view<float>> bank() { return {view2(p0, 2, 2), view2(p1, 2, 2), view2(p2, 2, 2)}; }

double d(float x) { return static_cast<double>(x); }

}  // namespace

TEST_CASE("agreement: pairwise sums, hand-computed") {
  for_each_simd([&](simd_level) {
    const pairwise_sums s = pairwise_agreement(bank());
    CHECK(s.n == 3);
    const std::uint64_t both[3][3] = {{2, 1, 2}, {1, 1, 1}, {2, 1, 3}};
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) CHECK(s.both_at(i, j) == both[i][j]);
    const double ei02 = std::sqrt(d(p0[0]) * d(p2[0])) + std::sqrt(d(p0[1]) * d(p2[1]));
    CHECK(near(s.ei_at(0, 2), ei02));
    CHECK(s.ei_at(2, 0) == s.ei_at(0, 2));
    CHECK(near(s.ei_at(1, 1), d(p1[0])));
    CHECK(s.n_or(0, 1) == 2);
    CHECK(near(s.dice(0, 2), 0.8));
    CHECK(near(s.ei_form(0, 2), ei02 / 3.0));
  });
}

TEST_CASE("agreement: consensus sums, hand-computed") {
  // weights 1, 1, 2: c_0 = (q1 + 2 q2) / 3 = (0.633, 0.7, 0.567, 0), C_0 = {0, 1, 2};
  // c_1 = (q0 + 2 q2) / 3 = (0.7, 0.867, 0.567, 0), C_1 = {0, 1, 2}; c_2 = (q0 + q1) / 2 = (0.8, 0.55, 0.1, 0)
  for_each_simd([&](simd_level) {
    const consensus_sums s = consensus_agreement(bank(), {1.0, 1.0, 2.0});
    CHECK(s.n() == 3);
    CHECK(s.model_fg == std::vector<std::uint64_t>{2, 1, 3});
    CHECK(s.cons_fg == std::vector<std::uint64_t>{3, 3, 2});
    CHECK(s.both == std::vector<std::uint64_t>{2, 1, 2});
    const double c00 = (d(p1[0]) + 2 * d(p2[0])) / 3, c01 = (d(p1[1]) + 2 * d(p2[1])) / 3;
    CHECK(near(s.ei[0], std::sqrt(d(p0[0]) * c00) + std::sqrt(d(p0[1]) * c01), 1e-13));
    CHECK(near(s.dice(0), 0.8));
    CHECK(near(s.dice(1), 0.5));
    CHECK(near(s.ei_form(1), std::sqrt(d(p1[0]) * (d(p0[0]) + 2 * d(p2[0])) / 3) / 3, 1e-13));
  });
}

TEST_CASE("agreement: strict threshold, empty units give NaN scores") {
  const std::vector<double> a = {0.5, 0.5, 0.25}, b = {0.5, 0.0, 1.0}, c = {0.5, 1.0, 0.0};
  const std::vector<array_view<double>> v = {view2(a, 1, 3), view2(b, 1, 3), view2(c, 1, 3)};
  for_each_simd([&](simd_level) {
    const pairwise_sums s = pairwise_agreement(v);
    CHECK(s.fg(0) == 0);
    CHECK(std::isnan(s.dice(0, 0)));
    CHECK(std::isnan(s.ei_form(0, 0)));
    // c_0 = (b + c) / 2 = 0.5 everywhere: exactly at the threshold, so background
    const consensus_sums k = consensus_agreement(v, {1.0, 1.0, 1.0});
    CHECK(k.cons_fg[0] == 0);
    CHECK(k.n_or(0) == 0);
    CHECK(std::isnan(k.dice(0)));
    CHECK(std::isnan(k.ei_form(0)));
  });
}

TEST_CASE("agreement: blocks merge, strided views read like copies") {
  // 4 x 6 images of 3 models; the top and bottom halves add up to the whole
  std::vector<std::vector<double>> p(3, std::vector<double>(24));
  for (int m = 0; m < 3; ++m)
    for (int k = 0; k < 24; ++k) p[m][k] = std::fmod(0.37 * (k + 1) * (m + 2), 1.0);
  std::vector<array_view<double>> whole, top, bottom;
  for (int m = 0; m < 3; ++m) {
    whole.push_back(view2(p[m], 4, 6));
    top.push_back(array_view<double>::c_order(p[m].data(), {2, 6}));
    bottom.push_back(array_view<double>::c_order(p[m].data() + 12, {2, 6}));
  }
  const std::vector<double> w = {1.0, 0.0, 2.0};
  const pairwise_sums s = pairwise_agreement(whole), s2 = pairwise_agreement(top) + pairwise_agreement(bottom);
  CHECK(s.both == s2.both);
  for (std::size_t k = 0; k < s.ei.size(); ++k) CHECK(near(s.ei[k], s2.ei[k], 1e-15));
  const consensus_sums c = consensus_agreement(whole, w),
                       c2 = consensus_agreement(top, w) + consensus_agreement(bottom, w);
  CHECK(c.cons_fg == c2.cons_fg);
  CHECK(c.both == c2.both);
  for (std::size_t k = 0; k < c.ei.size(); ++k) CHECK(near(c.ei[k], c2.ei[k], 1e-15));

  // every other column, as a strided view and as a compact copy
  std::vector<array_view<double>> strided, compact;
  std::vector<std::vector<double>> copies(3);
  const std::ptrdiff_t shape[2] = {4, 3}, strides[2] = {6 * 8, 2 * 8};
  for (int m = 0; m < 3; ++m) {
    strided.push_back(array_view<double>::from_byte_strides(p[m].data(), 2, shape, strides));
    for (int k = 0; k < 24; k += 2) copies[m].push_back(p[m][k]);
  }
  for (int m = 0; m < 3; ++m) compact.push_back(view2(copies[m], 4, 3));
  const pairwise_sums ps = pairwise_agreement(strided), pc = pairwise_agreement(compact);
  CHECK(ps.both == pc.both);
  CHECK(ps.ei == pc.ei);
  const consensus_sums cs = consensus_agreement(strided, w), cc = consensus_agreement(compact, w);
  CHECK(cs.cons_fg == cc.cons_fg);
  CHECK(cs.ei == cc.ei);
}

TEST_CASE("agreement: invalid input throws") {
  const std::vector<double> a = {0.9, 0.1}, b = {0.2, 0.8}, c = {0.6, 0.6, 0.6};
  const std::vector<array_view<double>> v = {view2(a, 1, 2), view2(b, 1, 2)};
  CHECK_THROWS_AS(consensus_agreement(v, {0.0, 1.0}), std::invalid_argument);  // model 1: no consensus
  CHECK_THROWS_AS(consensus_agreement(v, {1.0}), std::invalid_argument);
  CHECK_THROWS_AS(consensus_agreement(v, {1.0, -1.0}), std::invalid_argument);
  CHECK_THROWS_AS(consensus_agreement(std::vector<array_view<double>>{v[0]}, {1.0}), std::invalid_argument);
  CHECK_THROWS_AS(pairwise_agreement(std::vector<array_view<double>>{v[0], view2(c, 1, 3)}), std::invalid_argument);
  agreement_options o;
  o.threshold = std::nan("");
  CHECK_THROWS_AS(pairwise_agreement(v, o), std::invalid_argument);
  pairwise_sums two(2), three(3);
  CHECK_THROWS_AS(two += three, std::invalid_argument);
}
