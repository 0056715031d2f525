// Binary consistency between two predictions of one image: |A and B|, |A or B|, |A xor B| and
// the Effective Invariance sum, from probability maps at a threshold or from masks.
//
//   NHD = |A xor B| / |A or B|,  consistency = 1 - NHD = |A and B| / |A or B|,
//   EI  = sum over (A and B) of sqrt(p_u p_p) / |A or B|.
//
// The counts are integers and the EI sum is accumulated in fixed point (units of 2^-30), so
// results are exact sums: identical for any thread count, and block-wise counts merge exactly.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <type_traits>

#include "detail/common.hpp"
#include "view.hpp"

namespace segrank {

// EI terms are rounded to multiples of 2^-30 (error < 5e-10 per voxel, far below the resolution
// of float32 probabilities) so that their sum is an exact, order-independent integer.
constexpr int ei_fraction_bits = 30;

struct binary_counts {
  std::uint64_t n_and = 0;  // |A and B|
  std::uint64_t n_or = 0;   // |A or B|
  uint128 ei_units{};       // sum over A and B of sqrt(p_u p_p), in units of 2^-30

  std::uint64_t n_xor() const { return n_or - n_and; }
  double ei_sum() const { return std::ldexp(ei_units.to_double(), -ei_fraction_bits); }
  bool empty() const { return n_or == 0; }
  // Scores are NaN when neither prediction has foreground (|A or B| = 0): no score, not 0 or 1.
  double nhd() const { return empty() ? nan() : static_cast<double>(n_xor()) / static_cast<double>(n_or); }
  double consistency() const {
    return empty() ? nan() : static_cast<double>(n_and) / static_cast<double>(n_or);
  }
  double ei() const { return empty() ? nan() : ei_sum() / static_cast<double>(n_or); }

  binary_counts& operator+=(const binary_counts& o) {
    n_and += o.n_and;
    n_or += o.n_or;
    ei_units += o.ei_units;
    return *this;
  }
  friend binary_counts operator+(binary_counts a, const binary_counts& b) { return a += b; }
  friend bool operator==(const binary_counts& a, const binary_counts& b) {
    return a.n_and == b.n_and && a.n_or == b.n_or && a.ei_units == b.ei_units;
  }
  friend bool operator!=(const binary_counts& a, const binary_counts& b) { return !(a == b); }

 private:
  static double nan() { return std::numeric_limits<double>::quiet_NaN(); }
};

struct binary_options {
  // Foreground is p > threshold. Probabilities are float16/float32/float64 values, or uint8
  // values v meaning p = v / 255.
  double threshold = 0.5;
  // Inputs are masks (bool or any integer type): nonzero is foreground, p = 1 there, and the
  // threshold is unused.
  bool masks = false;
  // Score the background instead: A' = not A, B' = not B, p' = 1 - p.
  bool background = false;
  int threads = 1;
};

namespace detail {

inline bool is_nonzero(float16 v) { return (v.bits & 0x7fffu) != 0; }
template <class T>
bool is_nonzero(T v) { return v != T(0); }

// Largest float <= t: then (float x > tf) == (double(x) > t) for every float x.
inline float float_threshold_below(double t) {
  if (std::isnan(t)) return std::numeric_limits<float>::quiet_NaN();
  if (t >= static_cast<double>(std::numeric_limits<float>::max())) return std::numeric_limits<float>::infinity();
  if (t < -static_cast<double>(std::numeric_limits<float>::max())) return -std::numeric_limits<float>::infinity();
  float f = static_cast<float>(t);
  if (static_cast<double>(f) > t) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

// Smallest uint8 v with v / 255 > t (256 when none).
inline int uint8_threshold(double t) {
  for (int v = 0; v < 256; ++v)
    if (static_cast<double>(v) / 255.0 > t) return v;
  return 256;
}

// Clamp to [0, 1] with NaN -> 0, written as the x86 max/min instructions behave.
inline float clamp01(float s) {
  s = s > 0.f ? s : 0.f;
  return s < 1.f ? s : 1.f;
}
inline double clamp01(double s) {
  s = s > 0.0 ? s : 0.0;
  return s < 1.0 ? s : 1.0;
}
inline std::uint64_t fixed_units(float s) {
  return static_cast<std::uint64_t>(std::nearbyint(clamp01(s) * 1073741824.0f));
}
inline std::uint64_t fixed_units(double s) {
  return static_cast<std::uint64_t>(std::nearbyint(clamp01(s) * 1073741824.0));
}

// EI units of uint8 probabilities depend only on the product w = u * p (0..65025): a table of
// round(sqrt(w) / 255 * 2^30), computed in double.
inline const std::uint32_t* uint8_ei_table() {
  static const std::vector<std::uint32_t> table = [] {
    std::vector<std::uint32_t> t(255 * 255 + 1);
    for (std::size_t w = 0; w < t.size(); ++w)
      t[w] = static_cast<std::uint32_t>(std::nearbyint(std::sqrt(static_cast<double>(w)) / 255.0 * 1073741824.0));
    return t;
  }();
  return table.data();
}

struct binary_config {
  bool masks = false, background = false;
  float tf = 0.5f;   // float / float16 threshold
  double td = 0.5;   // double threshold
  int t8 = 128;      // uint8 threshold: foreground is v >= t8
  const std::uint32_t* ei8 = nullptr;
};

// Per-element rules shared by the portable path and the SIMD paths' tails.
template <class T>
struct element_rule {
  static_assert(std::is_integral<T>::value, "masks are bool or integer");
  static bool fg(T v, const binary_config&) { return v != T(0); }
  static std::uint64_t units(T, T, const binary_config&) { return std::uint64_t(1) << ei_fraction_bits; }
};
template <>
struct element_rule<std::uint8_t> {
  static bool fg(std::uint8_t v, const binary_config& c) { return c.masks ? v != 0 : int(v) >= c.t8; }
  static std::uint64_t units(std::uint8_t u, std::uint8_t p, const binary_config& c) {
    if (c.masks) return std::uint64_t(1) << ei_fraction_bits;
    const unsigned w = c.background ? (255u - u) * (255u - p) : unsigned(u) * unsigned(p);
    return c.ei8[w];
  }
};
// float and double share one rule, each with its own threshold (see binary_config).
template <class F>
struct floating_rule {
  static F threshold(const binary_config& c) {
    if constexpr (std::is_same<F, float>::value)
      return c.tf;
    else
      return c.td;
  }
  static bool fg(F v, const binary_config& c) { return v > threshold(c); }
  static std::uint64_t units(F u, F p, const binary_config& c) {
    if (c.background) {
      u = F(1) - u;
      p = F(1) - p;
    }
    return fixed_units(std::sqrt(u * p));
  }
};
template <>
struct element_rule<float> : floating_rule<float> {};
template <>
struct element_rule<double> : floating_rule<double> {};
template <>
struct element_rule<float16> {
  static bool fg(float16 v, const binary_config& c) { return half_to_float(v.bits) > c.tf; }
  static std::uint64_t units(float16 u, float16 p, const binary_config& c) {
    return element_rule<float>::units(half_to_float(u.bits), half_to_float(p.bits), c);
  }
};

template <class T>
void binary_segment_portable(const char* pa, std::ptrdiff_t sa, const char* pb, std::ptrdiff_t sb,
                             std::ptrdiff_t n, const binary_config& c, binary_counts& acc) {
  std::uint64_t n_and = 0, n_or = 0, units = 0;
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    const T u = *reinterpret_cast<const T*>(pa + i * sa);
    const T p = *reinterpret_cast<const T*>(pb + i * sb);
    const bool fa = element_rule<T>::fg(u, c) != c.background;
    const bool fb = element_rule<T>::fg(p, c) != c.background;
    n_and += fa & fb;
    n_or += fa | fb;
    if (fa & fb) units += element_rule<T>::units(u, p, c);
    // units <= 2^30 per element: flush long before 64 bits could overflow
    if ((i & 0x3fffffff) == 0x3fffffff) {
      acc.ei_units += units;
      units = 0;
    }
  }
  acc.n_and += n_and;
  acc.n_or += n_or;
  acc.ei_units += units;
}

#if SEGRANK_X86_DISPATCH
SEGRANK_TARGET_AVX2 inline std::uint64_t hsum_epi64(__m256i v) {
  alignas(32) std::uint64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), v);
  return t[0] + t[1] + t[2] + t[3];
}

// One-byte inputs (bool / uint8 masks, uint8 probabilities): byte-wise compares, byte counters
// drained every 255 steps. Returns the number of elements handled (a multiple of 32).
// Foreground byte mask: masks (nonzero), or uint8 probabilities v >= t8, then flipped for the
// background variant.
SEGRANK_TARGET_AVX2 inline __m256i byte_fg_avx2(__m256i v, int mode, __m256i kth, __m256i flip) {
  const __m256i zero = _mm256_setzero_si256(), ones = _mm256_set1_epi8(-1);
  __m256i f;
  switch (mode) {
    case 0: f = _mm256_xor_si256(_mm256_cmpeq_epi8(v, zero), ones); break;  // masks
    case 1: f = ones; break;                                               // threshold below 0
    case 2: f = zero; break;                                               // threshold >= 1
    default: f = _mm256_cmpeq_epi8(_mm256_max_epu8(v, kth), v); break;     // v >= t8
  }
  return _mm256_xor_si256(f, flip);
}

SEGRANK_TARGET_AVX2 inline std::ptrdiff_t binary_bytes_avx2(const std::uint8_t* a, const std::uint8_t* b,
                                                           std::ptrdiff_t n, const binary_config& c,
                                                           binary_counts& acc) {
  const __m256i zero = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi8(-1);
  const int mode = c.masks ? 0 : c.t8 == 0 ? 1 : c.t8 > 255 ? 2 : 3;
  const __m256i kth = _mm256_set1_epi8(static_cast<char>(c.t8 > 255 ? 255 : c.t8));
  const bool need_units = !c.masks;
  const __m256i flip = c.background ? ones : zero;
  std::uint64_t n_and = 0, n_or = 0, units = 0;
  const std::ptrdiff_t n32 = n & ~std::ptrdiff_t(31);
  std::ptrdiff_t i = 0;
  if (mode == 0) {
    // Masks: count zero bytes only. With za, zb the "is zero" masks, pixels background in
    // either are za | zb and background in both are za & zb; n_and and n_or follow from n.
    std::uint64_t z_either = 0, z_both = 0;
    while (i < n32) {
      const std::ptrdiff_t steps = std::min<std::ptrdiff_t>((n32 - i) / 32, 255);
      __m256i c_either = zero, c_both = zero;
      for (std::ptrdiff_t s = 0; s < steps; ++s, i += 32) {
        const __m256i za = _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)), zero);
        const __m256i zb = _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i)), zero);
        c_either = _mm256_sub_epi8(c_either, _mm256_or_si256(za, zb));
        c_both = _mm256_sub_epi8(c_both, _mm256_and_si256(za, zb));
      }
      z_either += hsum_epi64(_mm256_sad_epu8(c_either, zero));
      z_both += hsum_epi64(_mm256_sad_epu8(c_both, zero));
    }
    const std::uint64_t total = static_cast<std::uint64_t>(n32);
    n_and = c.background ? z_both : total - z_either;
    n_or = c.background ? z_either : total - z_both;
  }
  while (i < n32) {
    const std::ptrdiff_t steps = std::min<std::ptrdiff_t>((n32 - i) / 32, 255);
    __m256i c_and = zero, c_or = zero;
    for (std::ptrdiff_t s = 0; s < steps; ++s, i += 32) {
      const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
      const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i));
      const __m256i fa = byte_fg_avx2(va, mode, kth, flip), fb = byte_fg_avx2(vb, mode, kth, flip);
      const __m256i m_and = _mm256_and_si256(fa, fb);
      c_and = _mm256_sub_epi8(c_and, m_and);
      c_or = _mm256_sub_epi8(c_or, _mm256_or_si256(fa, fb));
      if (need_units && !_mm256_testz_si256(m_and, m_and)) {
        std::uint32_t bits = static_cast<std::uint32_t>(_mm256_movemask_epi8(m_and));
        while (bits) {
          const int k = __builtin_ctz(bits);
          bits &= bits - 1;
          units += element_rule<std::uint8_t>::units(a[i + k], b[i + k], c);
        }
      }
    }
    n_and += hsum_epi64(_mm256_sad_epu8(c_and, zero));
    n_or += hsum_epi64(_mm256_sad_epu8(c_or, zero));
    acc.ei_units += units;
    units = 0;
  }
  acc.n_and += n_and;
  acc.n_or += n_or;
  if (c.masks) acc.ei_units += uint128::mul(n_and, std::uint64_t(1) << ei_fraction_bits);
  return n32;
}

template <bool Half>
SEGRANK_TARGET_AVX2 inline __m256 load8_ps(const char* p, std::ptrdiff_t k) {
  if (Half) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * k)));
  return _mm256_loadu_ps(reinterpret_cast<const float*>(p) + k);
}

// Left-pack indices for _mm256_permutevar8x32_ps: entry m lists the set bits of m, lowest
// first, one byte each (unused bytes 0).
inline const std::uint64_t* left_pack_table() {
  static const std::vector<std::uint64_t> table = [] {
    std::vector<std::uint64_t> t(256);
    for (unsigned m = 0; m < 256; ++m) {
      std::uint64_t v = 0;
      int out = 0;
      for (unsigned k = 0; k < 8; ++k)
        if ((m >> k) & 1u) v |= std::uint64_t(k) << (8 * out++);
      t[m] = v;
    }
    return t;
  }();
  return table.data();
}

// float32 / float16 probabilities in blocks of pixels, two passes per block and no branches.
// Pass 1 counts |A or B| and packs the products u * p of the pixels in A and B (left-packed
// with a permute) into a small buffer; pass 2 takes the rounded sqrt (the portable rule) of the
// packed products only, so the sqrt unit, the bottleneck, works on A and B alone instead of on
// every pixel. The foreground pattern changes every few pixels, so skipping with a branch would
// mispredict. EI units of two vectors add in 32-bit lanes (2 * 2^30 fits) and widen to 64-bit
// lanes once per step; the sum is an exact integer, whatever the order.
template <bool Half, bool Background>
SEGRANK_TARGET_AVX2 inline std::ptrdiff_t binary_float_lanes_avx2(const char* a, const char* b, std::ptrdiff_t n,
                                                           const binary_config& c, binary_counts& acc) {
  // Background: not (v > t), NaN included.
  constexpr int predicate = Background ? _CMP_NGT_UQ : _CMP_GT_OQ;
  constexpr std::ptrdiff_t block = 1024;
  const __m256 tf = _mm256_set1_ps(c.tf);
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 scale = _mm256_set1_ps(1073741824.0f);
  const __m256i low_half = _mm256_set1_epi64x(0xffffffffll);
  const std::uint64_t* pack = left_pack_table();
  alignas(32) float buf[block + 16];
  const std::ptrdiff_t n8 = n & ~std::ptrdiff_t(7);
  std::ptrdiff_t i = 0;
  std::uint64_t n_and = 0, n_or = 0;
  while (i < n8) {
    const std::ptrdiff_t stop = std::min<std::ptrdiff_t>(n8, i + block);
    __m256i c_or = _mm256_setzero_si256();
    std::ptrdiff_t packed = 0;
    for (; i < stop; i += 8) {
      __m256 va = load8_ps<Half>(a, i), vb = load8_ps<Half>(b, i);
      const __m256 fa = _mm256_cmp_ps(va, tf, predicate), fb = _mm256_cmp_ps(vb, tf, predicate);
      c_or = _mm256_sub_epi32(c_or, _mm256_castps_si256(_mm256_or_ps(fa, fb)));
      const unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_and_ps(fa, fb)));
      if (Background) {
        va = _mm256_sub_ps(one, va);
        vb = _mm256_sub_ps(one, vb);
      }
      const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pack + m)));
      _mm256_storeu_ps(buf + packed, _mm256_permutevar8x32_ps(_mm256_mul_ps(va, vb), idx));
      packed += _mm_popcnt_u32(m);
    }
    alignas(32) std::uint32_t to[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(to), c_or);
    for (int k = 0; k < 8; ++k) n_or += to[k];
    n_and += static_cast<std::uint64_t>(packed);
    // Pad with zero products (0 units) to whole pairs of vectors.
    _mm256_storeu_ps(buf + packed, zero);
    _mm256_storeu_ps(buf + packed + 8, zero);
    __m256i u_even = _mm256_setzero_si256(), u_odd = _mm256_setzero_si256();
    for (std::ptrdiff_t k = 0; k < packed; k += 16) {
      const __m256 s0 = _mm256_min_ps(_mm256_max_ps(_mm256_sqrt_ps(_mm256_load_ps(buf + k)), zero), one);
      const __m256 s1 = _mm256_min_ps(_mm256_max_ps(_mm256_sqrt_ps(_mm256_load_ps(buf + k + 8)), zero), one);
      const __m256i q2 = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(s0, scale)),
                                          _mm256_cvtps_epi32(_mm256_mul_ps(s1, scale)));
      u_even = _mm256_add_epi64(u_even, _mm256_and_si256(q2, low_half));
      u_odd = _mm256_add_epi64(u_odd, _mm256_srli_epi64(q2, 32));
    }
    acc.ei_units += hsum_epi64(_mm256_add_epi64(u_even, u_odd));  // < 2^43: no overflow
  }
  acc.n_and += n_and;
  acc.n_or += n_or;
  return n8;
}

template <bool Half>
SEGRANK_TARGET_AVX2 inline std::ptrdiff_t binary_float_avx2(const char* a, const char* b, std::ptrdiff_t n,
                                                           const binary_config& c, binary_counts& acc) {
  return c.background ? binary_float_lanes_avx2<Half, true>(a, b, n, c, acc)
                      : binary_float_lanes_avx2<Half, false>(a, b, n, c, acc);
}

// float64 probabilities: four lanes, sqrt in double.
SEGRANK_TARGET_AVX2 inline std::ptrdiff_t binary_double_avx2(const double* a, const double* b, std::ptrdiff_t n,
                                                            const binary_config& c, binary_counts& acc) {
  const __m256d td = _mm256_set1_pd(c.td);
  const __m256d one = _mm256_set1_pd(1.0);
  const __m256d zero = _mm256_setzero_pd();
  const __m256d scale = _mm256_set1_pd(1073741824.0);
  const __m256d flip = c.background ? _mm256_castsi256_pd(_mm256_set1_epi64x(-1)) : zero;
  const std::ptrdiff_t n4 = n & ~std::ptrdiff_t(3);
  __m256i c_and = _mm256_setzero_si256(), c_or = _mm256_setzero_si256(), u64 = _mm256_setzero_si256();
  for (std::ptrdiff_t i = 0; i < n4; i += 4) {
    __m256d va = _mm256_loadu_pd(a + i), vb = _mm256_loadu_pd(b + i);
    const __m256d fa = _mm256_xor_pd(_mm256_cmp_pd(va, td, _CMP_GT_OQ), flip);
    const __m256d fb = _mm256_xor_pd(_mm256_cmp_pd(vb, td, _CMP_GT_OQ), flip);
    const __m256i m_and = _mm256_castpd_si256(_mm256_and_pd(fa, fb));
    c_and = _mm256_sub_epi64(c_and, m_and);
    c_or = _mm256_sub_epi64(c_or, _mm256_castpd_si256(_mm256_or_pd(fa, fb)));
    if (!_mm256_testz_si256(m_and, m_and)) {
      if (c.background) {
        va = _mm256_sub_pd(one, va);
        vb = _mm256_sub_pd(one, vb);
      }
      __m256d s4 = _mm256_sqrt_pd(_mm256_mul_pd(va, vb));
      s4 = _mm256_min_pd(_mm256_max_pd(s4, zero), one);
      const __m256i q = _mm256_cvtepu32_epi64(_mm256_cvtpd_epi32(_mm256_mul_pd(s4, scale)));
      u64 = _mm256_add_epi64(u64, _mm256_and_si256(q, m_and));
    }
  }
  acc.n_and += hsum_epi64(c_and);
  acc.n_or += hsum_epi64(c_or);
  acc.ei_units += hsum_epi64(u64);  // < 2^30 * n/4 per lane: fits for any realistic n
  return n4;
}

// Integer masks of 2, 4 or 8 bytes: compare with zero, count bits of the byte mask.
template <class T>
SEGRANK_TARGET_AVX2 inline std::ptrdiff_t binary_wide_masks_avx2(const T* a, const T* b, std::ptrdiff_t n,
                                                                const binary_config& c, binary_counts& acc) {
  constexpr int lanes = 32 / sizeof(T);
  const __m256i zero = _mm256_setzero_si256();
  const std::uint32_t flip = c.background ? 0xffffffffu : 0u;
  const std::ptrdiff_t nv = n - n % lanes;
  std::uint64_t bytes_and = 0, bytes_or = 0;
  for (std::ptrdiff_t i = 0; i < nv; i += lanes) {
    const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i));
    __m256i za, zb;
    if (sizeof(T) == 2) {
      za = _mm256_cmpeq_epi16(va, zero);
      zb = _mm256_cmpeq_epi16(vb, zero);
    } else if (sizeof(T) == 4) {
      za = _mm256_cmpeq_epi32(va, zero);
      zb = _mm256_cmpeq_epi32(vb, zero);
    } else {
      za = _mm256_cmpeq_epi64(va, zero);
      zb = _mm256_cmpeq_epi64(vb, zero);
    }
    const std::uint32_t fa = ~static_cast<std::uint32_t>(_mm256_movemask_epi8(za)) ^ flip;
    const std::uint32_t fb = ~static_cast<std::uint32_t>(_mm256_movemask_epi8(zb)) ^ flip;
    bytes_and += static_cast<std::uint64_t>(_mm_popcnt_u32(fa & fb));
    bytes_or += static_cast<std::uint64_t>(_mm_popcnt_u32(fa | fb));
  }
  const std::uint64_t n_and = bytes_and / sizeof(T);
  acc.n_and += n_and;
  acc.n_or += bytes_or / sizeof(T);
  acc.ei_units += uint128::mul(n_and, std::uint64_t(1) << ei_fraction_bits);
  return nv;
}
#endif  // SEGRANK_X86_DISPATCH

// One contiguous-or-strided stretch of both arrays.
template <class T>
void binary_segment(const char* pa, std::ptrdiff_t sa, const char* pb, std::ptrdiff_t sb, std::ptrdiff_t n,
                    const binary_config& c, binary_counts& acc) {
  std::ptrdiff_t done = 0;
#if SEGRANK_X86_DISPATCH
  constexpr std::ptrdiff_t es = static_cast<std::ptrdiff_t>(sizeof(T));
  if (active_simd() == simd_level::avx2 && sa == es && sb == es) {
    if constexpr (sizeof(T) == 1 && std::is_integral<T>::value) {
      done = binary_bytes_avx2(reinterpret_cast<const std::uint8_t*>(pa),
                               reinterpret_cast<const std::uint8_t*>(pb), n, c, acc);
    } else if constexpr (std::is_same<T, float>::value) {
      done = binary_float_avx2<false>(pa, pb, n, c, acc);
    } else if constexpr (std::is_same<T, float16>::value) {
      done = binary_float_avx2<true>(pa, pb, n, c, acc);
    } else if constexpr (std::is_same<T, double>::value) {
      done = binary_double_avx2(reinterpret_cast<const double*>(pa), reinterpret_cast<const double*>(pb), n, c,
                                acc);
    } else if constexpr (std::is_integral<T>::value) {
      done = binary_wide_masks_avx2(reinterpret_cast<const T*>(pa), reinterpret_cast<const T*>(pb), n, c, acc);
    }
  }
#endif
  if (done < n) binary_segment_portable<T>(pa + done * sa, sa, pb + done * sb, sb, n - done, c, acc);
}

// The element type the kernels read: bool as uint8, signed integers as their unsigned twins
// (masks only ask zero or not), everything else as it is.
template <class T>
using binary_storage_t = typename std::conditional_t<
    std::is_same<T, bool>::value, std::common_type<std::uint8_t>,
    std::conditional_t<std::is_integral<T>::value, std::make_unsigned<T>, std::common_type<T>>>::type;

}  // namespace detail

// Counts for two same-shaped views `a` (unperturbed) and `b` (perturbed).
// T: float, double, segrank::float16 or std::uint8_t for probabilities (uint8: p = v / 255);
// bool or any integer type for masks (options.masks = true; bool and wide integers are always
// masks).
template <class T>
binary_counts binary_consistency(const array_view<T>& a, const array_view<T>& b, const binary_options& options = {}) {
  using S = detail::binary_storage_t<T>;
  constexpr bool probability_type = std::is_floating_point<T>::value || std::is_same<T, float16>::value ||
                                    std::is_same<T, std::uint8_t>::value;
  const bool masks = options.masks || !probability_type;
  if (masks && !std::is_integral<T>::value)
    throw std::invalid_argument("segrank: masks must be bool or integer arrays; floats are probabilities");
  if (!masks && std::isnan(options.threshold)) throw std::invalid_argument("segrank: threshold is NaN");
  detail::binary_config c;
  c.masks = masks;
  c.background = options.background;
  c.tf = detail::float_threshold_below(options.threshold);
  c.td = options.threshold;
  c.t8 = detail::uint8_threshold(options.threshold);
  if (!masks && std::is_same<T, std::uint8_t>::value) c.ei8 = detail::uint8_ei_table();

  const detail::pair_walk w = detail::make_pair_walk(a, b, /*merge_axes=*/true);
  const std::ptrdiff_t length = w.row_length(), total = w.rows() * length;
  const int threads = useful_threads(options.threads, total, std::ptrdiff_t(1) << 21);
  const std::ptrdiff_t chunks = chunk_count(total, threads);
  std::vector<binary_counts> part(static_cast<std::size_t>(threads));
  parallel_chunks(chunks, threads, [&](int t, std::ptrdiff_t chunk) {
    const std::ptrdiff_t begin = total * chunk / chunks, end = total * (chunk + 1) / chunks;
    binary_counts& acc = part[static_cast<std::size_t>(t)];
    for (std::ptrdiff_t pos = begin; pos < end;) {
      const std::ptrdiff_t r = pos / length, col = pos % length;
      const std::ptrdiff_t n = std::min(length - col, end - pos);
      detail::binary_segment<S>(w.row_a(r) + col * w.sa[2], w.sa[2], w.row_b(r) + col * w.sb[2], w.sb[2], n, c,
                                acc);
      pos += n;
    }
  });
  binary_counts total_counts;
  for (const auto& p : part) total_counts += p;
  return total_counts;
}

}  // namespace segrank
