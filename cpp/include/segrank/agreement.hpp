// Agreement across a bank of n models on one unit (image or block): pairwise sums
// (|A_i and A_j|, EI sums between every two models) and leave-one-out consensus sums (each model
// against the weighted mean of the others), all mergeable over blocks.
//
//   q_i = min(max(p_i, 0), 1) (NaN read as 0),  A_i = q_i > threshold,
//   pairwise:  both[i][j] = |A_i and A_j|,  ei[i][j] = sum over A_i and A_j of sqrt(q_i q_j)
//   consensus: c_i = sum_{j != i} w_j q_j / sum_{j != i} w_j,  C_i = c_i > threshold,
//              model_fg = |A_i|, cons_fg = |C_i|, both = |A_i and C_i|,
//              ei = sum over A_i and C_i of sqrt(q_i c_i)
//
// Counts are exact integers; EI sums are double sums (blocks merge to rounding). Every value is
// computed in double whatever the input type, and the AVX2 and portable paths do the same
// operations in the same order (no fused multiply-add), so they give identical results.
// Single-threaded: split a large volume into blocks and add the sums.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "binary.hpp"  // detail::clamp01
#include "detail/common.hpp"
#include "view.hpp"

namespace segrank {

struct agreement_options {
  // Foreground is q > threshold (strict, as in binary_consistency). Must not be NaN.
  double threshold = 0.5;
};

// Pairwise sums of n models over the pixels of one unit. Row-major n x n, symmetric.
struct pairwise_sums {
  std::ptrdiff_t n = 0;
  std::vector<std::uint64_t> both;  // |A_i and A_j|; the diagonal is |A_i|
  std::vector<double> ei;           // sum over A_i and A_j of sqrt(q_i q_j)

  pairwise_sums() = default;
  explicit pairwise_sums(std::ptrdiff_t models)
      : n(models), both(static_cast<std::size_t>(models * models)), ei(static_cast<std::size_t>(models * models)) {}

  std::uint64_t both_at(std::ptrdiff_t i, std::ptrdiff_t j) const { return both[static_cast<std::size_t>(i * n + j)]; }
  double ei_at(std::ptrdiff_t i, std::ptrdiff_t j) const { return ei[static_cast<std::size_t>(i * n + j)]; }
  std::uint64_t fg(std::ptrdiff_t i) const { return both_at(i, i); }
  std::uint64_t n_or(std::ptrdiff_t i, std::ptrdiff_t j) const { return fg(i) + fg(j) - both_at(i, j); }
  // NaN when neither model has foreground: no score (callers decide what both-empty means).
  double dice(std::ptrdiff_t i, std::ptrdiff_t j) const {
    const std::uint64_t d = fg(i) + fg(j);
    return d ? 2.0 * static_cast<double>(both_at(i, j)) / static_cast<double>(d) : nan();
  }
  double ei_form(std::ptrdiff_t i, std::ptrdiff_t j) const {
    const std::uint64_t u = n_or(i, j);
    return u ? ei_at(i, j) / static_cast<double>(u) : nan();
  }

  pairwise_sums& operator+=(const pairwise_sums& o) {
    if (o.n != n) throw std::invalid_argument("segrank: cannot merge pairwise sums of different model counts");
    for (std::size_t k = 0; k < both.size(); ++k) {
      both[k] += o.both[k];
      ei[k] += o.ei[k];
    }
    return *this;
  }
  friend pairwise_sums operator+(pairwise_sums a, const pairwise_sums& b) { return a += b; }

 private:
  static double nan() { return std::numeric_limits<double>::quiet_NaN(); }
};

// Per-model sums against the leave-one-out consensus over the pixels of one unit (length n).
struct consensus_sums {
  std::vector<std::uint64_t> model_fg;  // |A_i|
  std::vector<std::uint64_t> cons_fg;   // |C_i|
  std::vector<std::uint64_t> both;      // |A_i and C_i|
  std::vector<double> ei;               // sum over A_i and C_i of sqrt(q_i c_i)

  consensus_sums() = default;
  explicit consensus_sums(std::ptrdiff_t models)
      : model_fg(static_cast<std::size_t>(models)), cons_fg(static_cast<std::size_t>(models)),
        both(static_cast<std::size_t>(models)), ei(static_cast<std::size_t>(models)) {}

  std::ptrdiff_t n() const { return static_cast<std::ptrdiff_t>(model_fg.size()); }
  std::uint64_t n_or(std::ptrdiff_t i) const {
    const auto k = static_cast<std::size_t>(i);
    return model_fg[k] + cons_fg[k] - both[k];
  }
  // NaN when neither the model nor its consensus has foreground.
  double dice(std::ptrdiff_t i) const {
    const auto k = static_cast<std::size_t>(i);
    const std::uint64_t d = model_fg[k] + cons_fg[k];
    return d ? 2.0 * static_cast<double>(both[k]) / static_cast<double>(d) : std::numeric_limits<double>::quiet_NaN();
  }
  double ei_form(std::ptrdiff_t i) const {
    const std::uint64_t u = n_or(i);
    return u ? ei[static_cast<std::size_t>(i)] / static_cast<double>(u) : std::numeric_limits<double>::quiet_NaN();
  }

  consensus_sums& operator+=(const consensus_sums& o) {
    if (o.n() != n()) throw std::invalid_argument("segrank: cannot merge consensus sums of different model counts");
    for (std::size_t k = 0; k < model_fg.size(); ++k) {
      model_fg[k] += o.model_fg[k];
      cons_fg[k] += o.cons_fg[k];
      both[k] += o.both[k];
      ei[k] += o.ei[k];
    }
    return *this;
  }
  friend consensus_sums operator+(consensus_sums a, const consensus_sums& b) { return a += b; }
};

namespace detail {

// Keeps a product from being fused into a following add (an FMA rounds once, a multiply and an
// add twice), so that the SIMD and portable paths round alike whatever -ffp-contract says.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SEGRANK_NO_CONTRACT(v) __asm__("" : "+x"(v))
#elif defined(__GNUC__) && defined(__aarch64__)
#define SEGRANK_NO_CONTRACT(v) __asm__("" : "+w"(v))
#else
#define SEGRANK_NO_CONTRACT(v) ((void)0)
#endif

// n same-shaped views walked together as rows, in the first view's memory order, axes merged
// where every view steps uniformly across the seam.
struct bank_walk {
  std::array<std::ptrdiff_t, 3> shape{1, 1, 1};
  std::vector<const char*> base;
  std::vector<std::array<std::ptrdiff_t, 3>> strides;  // per model, byte strides of the walk axes

  std::ptrdiff_t rows() const { return shape[0] * shape[1]; }
  std::ptrdiff_t row_length() const { return shape[2]; }
  std::ptrdiff_t size() const { return rows() * row_length(); }
  const char* row(std::size_t m, std::ptrdiff_t r) const {
    return base[m] + (r / shape[1]) * strides[m][0] + (r % shape[1]) * strides[m][1];
  }
};

template <class T>
bank_walk make_bank_walk(const std::vector<array_view<T>>& v) {
  bank_walk w;
  const std::size_t n = v.size();
  w.base.resize(n);
  w.strides.assign(n, {0, 0, 0});
  if (n == 0) return w;
  const int nd = v[0].ndim;
  for (std::size_t m = 1; m < n; ++m) {
    bool same = v[m].ndim == nd;
    for (int k = 0; same && k < nd; ++k) same = v[m].shape[k] == v[0].shape[k];
    if (!same) throw std::invalid_argument("segrank: the models' arrays differ in shape");
  }
  std::array<int, 3> order{0, 1, 2};
  std::stable_sort(order.begin(), order.begin() + nd, [&](int x, int y) {
    return abs_stride(v[0].strides[x]) > abs_stride(v[0].strides[y]);
  });
  // Merged axes, innermost first: extent and the original axis they start from (strides of the
  // innermost original axis of each merged group).
  std::ptrdiff_t extent[3] = {1, 1, 1};
  int src[3] = {-1, -1, -1};
  int m_axes = 0;
  for (int k = nd - 1; k >= 0; --k) {
    const int ax = order[k];
    if (m_axes > 0) {
      if (v[0].shape[ax] == 1) continue;  // a unit axis adds nothing to the walk
      if (extent[m_axes - 1] == 1) {
        extent[m_axes - 1] = v[0].shape[ax];
        src[m_axes - 1] = ax;
        continue;
      }
      bool uniform = true;
      for (std::size_t m = 0; uniform && m < n; ++m)
        uniform = v[m].strides[ax] == extent[m_axes - 1] * v[m].strides[src[m_axes - 1]];
      if (uniform) {
        extent[m_axes - 1] *= v[0].shape[ax];
        continue;
      }
    }
    extent[m_axes] = v[0].shape[ax];
    src[m_axes] = ax;
    ++m_axes;
  }
  for (std::size_t m = 0; m < n; ++m) {
    w.base[m] = reinterpret_cast<const char*>(v[m].data);
    for (int k = 0; k < m_axes; ++k) w.strides[m][static_cast<std::size_t>(2 - k)] = v[m].strides[src[k]];
  }
  for (int k = 0; k < m_axes; ++k) w.shape[static_cast<std::size_t>(2 - k)] = extent[k];
  return w;
}

// Pixels per chunk: the chunk's values of all models (n x block doubles) stay in L1/L2.
constexpr std::ptrdiff_t agreement_block = 256;
constexpr std::ptrdiff_t agreement_words = agreement_block / 64;

inline std::uint64_t popcount64(std::uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return (x * 0x0101010101010101ull) >> 56;
}

// Sum of four lanes in a fixed order, the same in every path.
inline double sum4(const double* l) { return (l[0] + l[1]) + (l[2] + l[3]); }

template <class T>
inline void load_clamped_portable(const char* p, std::ptrdiff_t stride, std::ptrdiff_t len, double* out) {
  for (std::ptrdiff_t k = 0; k < len; ++k)
    out[k] = clamp01(static_cast<double>(*reinterpret_cast<const T*>(p + k * stride)));
}

#if SEGRANK_X86_DISPATCH
SEGRANK_TARGET_AVX2 inline void load_clamped_avx2(const float* p, std::ptrdiff_t len, double* out) {
  const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0);
  std::ptrdiff_t k = 0;
  for (; k + 4 <= len; k += 4) {
    const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(p + k));
    _mm256_storeu_pd(out + k, _mm256_min_pd(_mm256_max_pd(v, zero), one));  // max(NaN, 0) = 0
  }
  for (; k < len; ++k) out[k] = clamp01(static_cast<double>(p[k]));
}
SEGRANK_TARGET_AVX2 inline void load_clamped_avx2(const double* p, std::ptrdiff_t len, double* out) {
  const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0);
  std::ptrdiff_t k = 0;
  for (; k + 4 <= len; k += 4)
    _mm256_storeu_pd(out + k, _mm256_min_pd(_mm256_max_pd(_mm256_loadu_pd(p + k), zero), one));
  for (; k < len; ++k) out[k] = clamp01(p[k]);
}
#endif

// Loads the q values of the `len` pixels from walk position `pos` on: row m of `q` (stride
// `ld`) gets model m's values. Columns len..round_up(len, 4) are set to NaN (never foreground).
template <class T>
void load_chunk(const bank_walk& w, std::ptrdiff_t pos, std::ptrdiff_t len, double* q, std::ptrdiff_t ld,
                bool avx2) {
  const std::ptrdiff_t L = w.row_length();
  const std::size_t n = w.base.size();
  for (std::ptrdiff_t done = 0; done < len;) {
    const std::ptrdiff_t r = (pos + done) / L, col = (pos + done) % L;
    const std::ptrdiff_t seg = std::min(L - col, len - done);
    for (std::size_t m = 0; m < n; ++m) {
      const std::ptrdiff_t s = w.strides[m][2];
      const char* p = w.row(m, r) + col * s;
      double* out = q + static_cast<std::ptrdiff_t>(m) * ld + done;
#if SEGRANK_X86_DISPATCH
      if (avx2 && s == static_cast<std::ptrdiff_t>(sizeof(T))) {
        load_clamped_avx2(reinterpret_cast<const T*>(p), seg, out);
        continue;
      }
#endif
      (void)avx2;
      load_clamped_portable<T>(p, s, seg, out);
    }
    done += seg;
  }
  const std::ptrdiff_t len4 = (len + 3) & ~std::ptrdiff_t(3);
  for (std::size_t m = 0; m < n; ++m)
    for (std::ptrdiff_t k = len; k < len4; ++k)
      q[static_cast<std::ptrdiff_t>(m) * ld + k] = std::numeric_limits<double>::quiet_NaN();
}

// ---- pairwise ----------------------------------------------------------------------------------
// One chunk: q (np rows of agreement_block, rows >= n all NaN) becomes s = A ? sqrt(q) : 0 in
// place, bits gets A as bit masks; then every pair's dot product and mask overlap.
inline void pairwise_chunk_portable(double* q, std::ptrdiff_t n, std::ptrdiff_t len, double t, std::uint64_t* bits,
                                    pairwise_sums& acc) {
  constexpr std::ptrdiff_t B = agreement_block;
  for (std::ptrdiff_t m = 0; m < n; ++m) {
    double* row = q + m * B;
    std::uint64_t* b = bits + m * agreement_words;
    for (std::ptrdiff_t w = 0; w < agreement_words; ++w) b[w] = 0;
    for (std::ptrdiff_t k = 0; k < len; ++k) {
      const bool a = row[k] > t;
      row[k] = a ? std::sqrt(row[k]) : 0.0;
      b[k >> 6] |= std::uint64_t(a) << (k & 63);
    }
  }
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    const double* si = q + i * B;
    const std::uint64_t* bi = bits + i * agreement_words;
    for (std::ptrdiff_t j = i; j < n; ++j) {
      const double* sj = q + j * B;
      const std::uint64_t* bj = bits + j * agreement_words;
      double lane[4] = {0.0, 0.0, 0.0, 0.0};
      for (std::ptrdiff_t k = 0; k < len; ++k) {
        double prod = si[k] * sj[k];
        SEGRANK_NO_CONTRACT(prod);
        lane[k & 3] += prod;
      }
      std::uint64_t c = 0;
      for (std::ptrdiff_t w = 0; w < agreement_words; ++w) c += popcount64(bi[w] & bj[w]);
      acc.both[static_cast<std::size_t>(i * n + j)] += c;
      acc.ei[static_cast<std::size_t>(i * n + j)] += sum4(lane);
    }
  }
}

#if SEGRANK_X86_DISPATCH
SEGRANK_TARGET_AVX2 inline void pairwise_chunk_avx2(double* q, std::ptrdiff_t n, std::ptrdiff_t len, double t,
                                                    std::uint64_t* bits, pairwise_sums& acc) {
  constexpr std::ptrdiff_t B = agreement_block;
  const std::ptrdiff_t len4 = (len + 3) & ~std::ptrdiff_t(3);
  const std::ptrdiff_t np = (n + 3) & ~std::ptrdiff_t(3);
  const __m256d tv = _mm256_set1_pd(t);
  for (std::ptrdiff_t m = 0; m < np; ++m) {
    double* row = q + m * B;
    std::uint64_t* b = bits + m * agreement_words;
    for (std::ptrdiff_t w = 0; w < agreement_words; ++w) b[w] = 0;
    for (std::ptrdiff_t k = 0; k < len4; k += 4) {
      const __m256d v = _mm256_loadu_pd(row + k);
      const __m256d a = _mm256_cmp_pd(v, tv, _CMP_GT_OQ);  // NaN padding: false
      const unsigned bits4 = static_cast<unsigned>(_mm256_movemask_pd(a));
      // the sqrt unit is slow: skip it where no pixel of four is foreground
      _mm256_storeu_pd(row + k, bits4 ? _mm256_and_pd(_mm256_sqrt_pd(v), a) : _mm256_setzero_pd());
      b[k >> 6] |= static_cast<std::uint64_t>(bits4) << (k & 63);
    }
  }
  // Groups of four pixels where some model has foreground; the others add only zeros (and
  // skipping them keeps every pixel in its lane, so sums stay those of the portable path).
  std::ptrdiff_t groups[B / 4];
  std::ptrdiff_t n_groups = 0;
  for (std::ptrdiff_t w = 0; w < agreement_words; ++w) {
    std::uint64_t any = 0;
    for (std::ptrdiff_t m = 0; m < n; ++m) any |= bits[m * agreement_words + w];
    for (int g = 0; g < 16; ++g)
      if ((any >> (4 * g)) & 0xfu) groups[n_groups++] = w * 64 + 4 * g;
  }
  // 2 x 4 blocks of pairs (rows i0, i0+1 against columns j0..j0+3): 6 loads for 8 products.
  for (std::ptrdiff_t i0 = 0; i0 < n; i0 += 2) {
    const double* s0 = q + i0 * B;
    const double* s1 = s0 + B;
    for (std::ptrdiff_t j0 = i0 & ~std::ptrdiff_t(3); j0 < n; j0 += 4) {
      const double* t0 = q + j0 * B;
      __m256d acc0[4], acc1[4];
      for (int b = 0; b < 4; ++b) acc0[b] = acc1[b] = _mm256_setzero_pd();
      for (std::ptrdiff_t g = 0; g < n_groups; ++g) {
        const std::ptrdiff_t k = groups[g];
        const __m256d a0 = _mm256_loadu_pd(s0 + k), a1 = _mm256_loadu_pd(s1 + k);
        for (int b = 0; b < 4; ++b) {
          const __m256d y = _mm256_loadu_pd(t0 + b * B + k);
          __m256d p0 = _mm256_mul_pd(a0, y), p1 = _mm256_mul_pd(a1, y);
          SEGRANK_NO_CONTRACT(p0);
          SEGRANK_NO_CONTRACT(p1);
          acc0[b] = _mm256_add_pd(acc0[b], p0);
          acc1[b] = _mm256_add_pd(acc1[b], p1);
        }
      }
      alignas(32) double lane[4];
      for (int a = 0; a < 2; ++a) {
        const std::ptrdiff_t i = i0 + a;
        if (i >= n) break;
        for (int b = 0; b < 4; ++b) {
          const std::ptrdiff_t j = j0 + b;
          if (j < i || j >= n) continue;
          _mm256_store_pd(lane, a ? acc1[b] : acc0[b]);
          acc.ei[static_cast<std::size_t>(i * n + j)] += sum4(lane);
        }
      }
    }
  }
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    const std::uint64_t* bi = bits + i * agreement_words;
    for (std::ptrdiff_t j = i; j < n; ++j) {
      const std::uint64_t* bj = bits + j * agreement_words;
      std::uint64_t c = 0;
      for (std::ptrdiff_t w = 0; w < agreement_words; ++w)
        c += static_cast<std::uint64_t>(_mm_popcnt_u64(bi[w] & bj[w]));
      acc.both[static_cast<std::size_t>(i * n + j)] += c;
    }
  }
}
#endif

// ---- consensus ---------------------------------------------------------------------------------
// Sum over j != i of x_j for every i, as (x_0 + ... + x_{i-1}) + (x_{n-1} + ... + x_{i+1}):
// prefix and suffix sums, no subtraction, so no cancellation when one x_i dominates.
inline std::vector<double> leave_one_out_sums(const std::vector<double>& x) {
  const std::size_t n = x.size();
  std::vector<double> out(n, 0.0);
  double pre = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = pre;
    pre += x[i];
  }
  double suf = 0.0;
  for (std::size_t i = n; i-- > 0;) {
    out[i] += suf;
    suf += x[i];
  }
  return out;
}

// One chunk: q (n rows of agreement_block; columns len..len4 NaN), num a buffer of the same
// size, run a buffer of one row. Per pixel, num_i = prefix_i + suffix_i of w_j q_j, c_i =
// num_i * (1 / W_i).
inline void consensus_chunk_portable(const double* q, double* num, double* run, std::ptrdiff_t n,
                                     std::ptrdiff_t len, const double* w, const double* inv_den, double t,
                                     consensus_sums& acc) {
  constexpr std::ptrdiff_t B = agreement_block;
  for (std::ptrdiff_t k = 0; k < len; ++k) run[k] = 0.0;
  for (std::ptrdiff_t m = 0; m < n; ++m) {
    const double* qm = q + m * B;
    double* nm = num + m * B;
    for (std::ptrdiff_t k = 0; k < len; ++k) {
      nm[k] = run[k];
      double prod = w[m] * qm[k];
      SEGRANK_NO_CONTRACT(prod);
      run[k] += prod;
    }
  }
  for (std::ptrdiff_t k = 0; k < len; ++k) run[k] = 0.0;
  for (std::ptrdiff_t m = n - 1; m >= 0; --m) {
    const double* qm = q + m * B;
    const double* nm = num + m * B;
    std::uint64_t n_a = 0, n_c = 0, n_ac = 0;
    double lane[4] = {0.0, 0.0, 0.0, 0.0};
    for (std::ptrdiff_t k = 0; k < len; ++k) {
      const double s = nm[k] + run[k];
      double prod = w[m] * qm[k];
      SEGRANK_NO_CONTRACT(prod);
      run[k] += prod;
      const double c = s * inv_den[m];
      const bool a = qm[k] > t, cc = c > t;
      n_a += a;
      n_c += cc;
      if (a && cc) {
        ++n_ac;
        lane[k & 3] += std::sqrt(qm[k] * c);
      }
    }
    const auto i = static_cast<std::size_t>(m);
    acc.model_fg[i] += n_a;
    acc.cons_fg[i] += n_c;
    acc.both[i] += n_ac;
    acc.ei[i] += sum4(lane);
  }
}

#if SEGRANK_X86_DISPATCH
SEGRANK_TARGET_AVX2 inline void consensus_chunk_avx2(const double* q, double* num, double* run, std::ptrdiff_t n,
                                                     std::ptrdiff_t len, const double* w, const double* inv_den,
                                                     double t, consensus_sums& acc) {
  constexpr std::ptrdiff_t B = agreement_block;
  const std::ptrdiff_t len4 = (len + 3) & ~std::ptrdiff_t(3);
  const __m256d zero = _mm256_setzero_pd(), tv = _mm256_set1_pd(t);
  for (std::ptrdiff_t k = 0; k < len4; k += 4) _mm256_storeu_pd(run + k, zero);
  for (std::ptrdiff_t m = 0; m < n; ++m) {
    const double* qm = q + m * B;
    double* nm = num + m * B;
    const __m256d wm = _mm256_set1_pd(w[m]);
    for (std::ptrdiff_t k = 0; k < len4; k += 4) {
      const __m256d r = _mm256_loadu_pd(run + k);
      _mm256_storeu_pd(nm + k, r);
      __m256d prod = _mm256_mul_pd(wm, _mm256_loadu_pd(qm + k));
      SEGRANK_NO_CONTRACT(prod);
      _mm256_storeu_pd(run + k, _mm256_add_pd(r, prod));
    }
  }
  for (std::ptrdiff_t k = 0; k < len4; k += 4) _mm256_storeu_pd(run + k, zero);
  for (std::ptrdiff_t m = n - 1; m >= 0; --m) {
    const double* qm = q + m * B;
    const double* nm = num + m * B;
    const __m256d wm = _mm256_set1_pd(w[m]), inv = _mm256_set1_pd(inv_den[m]);
    __m256i c_a = _mm256_setzero_si256(), c_c = _mm256_setzero_si256(), c_ac = _mm256_setzero_si256();
    __m256d e = zero;
    for (std::ptrdiff_t k = 0; k < len4; k += 4) {
      const __m256d qv = _mm256_loadu_pd(qm + k), r = _mm256_loadu_pd(run + k);
      const __m256d s = _mm256_add_pd(_mm256_loadu_pd(nm + k), r);
      __m256d prod = _mm256_mul_pd(wm, qv);
      SEGRANK_NO_CONTRACT(prod);
      _mm256_storeu_pd(run + k, _mm256_add_pd(r, prod));
      const __m256d c = _mm256_mul_pd(s, inv);
      const __m256d a = _mm256_cmp_pd(qv, tv, _CMP_GT_OQ), cc = _mm256_cmp_pd(c, tv, _CMP_GT_OQ);
      const __m256d ac = _mm256_and_pd(a, cc);
      c_a = _mm256_sub_epi64(c_a, _mm256_castpd_si256(a));
      c_c = _mm256_sub_epi64(c_c, _mm256_castpd_si256(cc));
      c_ac = _mm256_sub_epi64(c_ac, _mm256_castpd_si256(ac));
      if (_mm256_movemask_pd(ac)) e = _mm256_add_pd(e, _mm256_and_pd(_mm256_sqrt_pd(_mm256_mul_pd(qv, c)), ac));
    }
    alignas(32) double lane[4];
    _mm256_store_pd(lane, e);
    const auto i = static_cast<std::size_t>(m);
    acc.model_fg[i] += hsum_epi64(c_a);
    acc.cons_fg[i] += hsum_epi64(c_c);
    acc.both[i] += hsum_epi64(c_ac);
    acc.ei[i] += sum4(lane);
  }
}
#endif

inline void check_threshold(double t) {
  if (std::isnan(t)) throw std::invalid_argument("segrank: threshold is NaN");
}

}  // namespace detail

// Pairwise sums between n models, one same-shaped view (1 to 3 axes) per model.
// T: float or double probabilities.
template <class T>
pairwise_sums pairwise_agreement(const std::vector<array_view<T>>& models, const agreement_options& options = {}) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "pairwise_agreement reads float or double probabilities");
  detail::check_threshold(options.threshold);
  const auto n = static_cast<std::ptrdiff_t>(models.size());
  pairwise_sums acc(n);
  const detail::bank_walk w = detail::make_bank_walk(models);
  const std::ptrdiff_t total = n ? w.size() : 0;
  if (total == 0) return acc;
  constexpr std::ptrdiff_t B = detail::agreement_block;
  const std::ptrdiff_t np = (n + 3) & ~std::ptrdiff_t(3);
  std::vector<double> q(static_cast<std::size_t>(np * B), std::numeric_limits<double>::quiet_NaN());
  std::vector<std::uint64_t> bits(static_cast<std::size_t>(np * detail::agreement_words));
  const bool avx2 = active_simd() == simd_level::avx2;
  for (std::ptrdiff_t pos = 0; pos < total; pos += B) {
    const std::ptrdiff_t len = std::min(B, total - pos);
    detail::load_chunk<T>(w, pos, len, q.data(), B, avx2);
#if SEGRANK_X86_DISPATCH
    if (avx2) {
      detail::pairwise_chunk_avx2(q.data(), n, len, options.threshold, bits.data(), acc);
      continue;
    }
#endif
    detail::pairwise_chunk_portable(q.data(), n, len, options.threshold, bits.data(), acc);
  }
  for (std::ptrdiff_t i = 0; i < n; ++i)
    for (std::ptrdiff_t j = 0; j < i; ++j) {
      acc.both[static_cast<std::size_t>(i * n + j)] = acc.both[static_cast<std::size_t>(j * n + i)];
      acc.ei[static_cast<std::size_t>(i * n + j)] = acc.ei[static_cast<std::size_t>(j * n + i)];
    }
  return acc;
}

// Leave-one-out consensus sums of n >= 2 models with weights w (finite, >= 0; every model needs
// a positive weight among the others, otherwise its consensus is undefined and this throws).
template <class T>
consensus_sums consensus_agreement(const std::vector<array_view<T>>& models, const std::vector<double>& weights,
                                   const agreement_options& options = {}) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "consensus_agreement reads float or double probabilities");
  detail::check_threshold(options.threshold);
  const auto n = static_cast<std::ptrdiff_t>(models.size());
  if (n < 2) throw std::invalid_argument("segrank: a consensus needs at least two models");
  if (static_cast<std::ptrdiff_t>(weights.size()) != n)
    throw std::invalid_argument("segrank: need one weight per model (" + std::to_string(n) + "), got " +
                                std::to_string(weights.size()));
  for (double x : weights)
    if (!(x >= 0.0) || std::isinf(x)) throw std::invalid_argument("segrank: weights must be finite and >= 0");
  const std::vector<double> den = detail::leave_one_out_sums(weights);
  std::vector<double> inv(static_cast<std::size_t>(n));
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    const double d = den[static_cast<std::size_t>(i)];
    if (!(d > 0.0) || std::isinf(d))
      throw std::invalid_argument("segrank: model " + std::to_string(i) +
                                  " has no consensus: the other models' weights " +
                                  (d > 0.0 ? "overflow" : "are all zero"));
    inv[static_cast<std::size_t>(i)] = 1.0 / d;
  }
  consensus_sums acc(n);
  const detail::bank_walk w = detail::make_bank_walk(models);
  const std::ptrdiff_t total = w.size();
  if (total == 0) return acc;
  constexpr std::ptrdiff_t B = detail::agreement_block;
  std::vector<double> q(static_cast<std::size_t>(n * B)), num(static_cast<std::size_t>(n * B)),
      run(static_cast<std::size_t>(B));
  const bool avx2 = active_simd() == simd_level::avx2;
  for (std::ptrdiff_t pos = 0; pos < total; pos += B) {
    const std::ptrdiff_t len = std::min(B, total - pos);
    detail::load_chunk<T>(w, pos, len, q.data(), B, avx2);
#if SEGRANK_X86_DISPATCH
    if (avx2) {
      detail::consensus_chunk_avx2(q.data(), num.data(), run.data(), n, len, weights.data(), inv.data(),
                                   options.threshold, acc);
      continue;
    }
#endif
    detail::consensus_chunk_portable(q.data(), num.data(), run.data(), n, len, weights.data(), inv.data(),
                                     options.threshold, acc);
  }
  return acc;
}

}  // namespace segrank
