// A tiny C++ program using segrank's metric kernels from an installed wheel:
//   cmake -S cpp/examples/consumer -B build/consumer -Dsegrank_DIR="$(segrank cmake-dir)"
//   cmake --build build/consumer && build/consumer/consumer
// It scores two hand-made 4x6 predictions (NHD, EI, adapted Rand F) and checks the results
// against values worked out by hand, so a broken install fails loudly (exit 1).
#include <segrank/metrics.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

int main() {
  using segrank::array_view;
  // Probabilities of an unperturbed and a perturbed run.
  const std::vector<float> p_u = {0.9f, 0.9f, 0.1f, 0.1f, 0.8f, 0.8f,  //
                                  0.9f, 0.9f, 0.1f, 0.1f, 0.8f, 0.8f,  //
                                  0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f,  //
                                  0.7f, 0.7f, 0.7f, 0.1f, 0.1f, 0.1f};
  std::vector<float> p_p = p_u;
  p_p[2] = 0.6f;   // the perturbation grows one object by a pixel...
  p_p[23] = 0.9f;  // ...and adds a stray one
  const auto a = array_view<float>::c_order(p_u.data(), {4, 6});
  const auto b = array_view<float>::c_order(p_p.data(), {4, 6});
  const segrank::binary_counts c = segrank::binary_consistency(a, b);  // threshold 0.5

  // Instance labels of both runs (blocks can be added one by one and merged).
  const std::vector<std::uint32_t> l_u = {1, 1, 0, 0, 2, 2, 1, 1, 0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 3, 3, 3, 0, 0, 0};
  std::vector<std::uint32_t> l_p = l_u;
  l_p[2] = 1;
  l_p[23] = 4;
  segrank::contingency_accumulator<std::uint32_t, std::uint32_t> acc;
  acc.add(array_view<std::uint32_t>::c_order(l_u.data(), {2, 6}), array_view<std::uint32_t>::c_order(l_p.data(), {2, 6}));
  acc.add(array_view<std::uint32_t>::c_order(l_u.data() + 12, {2, 6}),
          array_view<std::uint32_t>::c_order(l_p.data() + 12, {2, 6}));
  const segrank::rand_scores r = segrank::adapted_rand(acc.table());

  std::printf("simd: %s\n", segrank::simd_name(segrank::active_simd()));
  std::printf("|A and B| = %llu, |A or B| = %llu, NHD = %.6f, 1 - NHD = %.6f, EI = %.6f\n",
              static_cast<unsigned long long>(c.n_and), static_cast<unsigned long long>(c.n_or), c.nhd(),
              c.consistency(), c.ei());
  std::printf("adapted Rand: precision %.6f, recall %.6f, F %.6f\n", r.precision, r.recall, r.f);

  // By hand: A has 11 pixels, B = A + 2; NHD = 2 / 13. Rand: reference pairs 4*3 + 4*3 + 3*2 = 30,
  // test pairs 5*4 + 4*3 + 3*2 = 38, shared 30: P = 1, R = 30/38.
  const bool ok = c.n_and == 11 && c.n_or == 13 && std::fabs(c.nhd() - 2.0 / 13.0) < 1e-12 &&
                  std::fabs(r.precision - 1.0) < 1e-12 && std::fabs(r.recall - 30.0 / 38.0) < 1e-12;
  std::printf("%s\n", ok ? "consumer: ok" : "consumer: MISMATCH");
  return ok ? 0 : 1;
}
