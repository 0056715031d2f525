// Small helpers shared by the C++ tests.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "segrank/metrics.hpp"

namespace test_util {

template <class T>
segrank::array_view<T> view2(const std::vector<T>& v, std::ptrdiff_t rows, std::ptrdiff_t cols) {
  return segrank::array_view<T>::c_order(v.data(), {rows, cols});
}

// Runs a body once per SIMD level the CPU has, so both code paths see every case.
template <class F>
void for_each_simd(F&& body) {
  const segrank::simd_level best = segrank::detect_simd();
  for (int l = 0; l <= static_cast<int>(best); ++l) {
    segrank::set_simd(static_cast<segrank::simd_level>(l));
    body(static_cast<segrank::simd_level>(l));
  }
  segrank::set_simd(best);
}

}  // namespace test_util
