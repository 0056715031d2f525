// Shared plumbing for segrank's kernels: exact wide integers, runtime SIMD dispatch,
// float16 decoding and a tiny fork-join helper. No Python, no I/O.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <exception>
#include <thread>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SEGRANK_X86_DISPATCH 1
#include <immintrin.h>
#define SEGRANK_TARGET_AVX2 __attribute__((target("avx2,f16c,fma,bmi,bmi2,popcnt,lzcnt")))
#else
#define SEGRANK_X86_DISPATCH 0
#define SEGRANK_TARGET_AVX2
#endif

namespace segrank {

// ---------------------------------------------------------------------------------------------
// Exact unsigned 128-bit accumulator: sums of squared counts and fixed-point EI sums must merge
// exactly across blocks and threads, and 64 bits can overflow for volumes beyond ~4e9 voxels.
struct uint128 {
  std::uint64_t hi = 0, lo = 0;

  constexpr uint128() = default;
  constexpr uint128(std::uint64_t v) : hi(0), lo(v) {}  // NOLINT: implicit by design
  constexpr uint128(std::uint64_t h, std::uint64_t l) : hi(h), lo(l) {}

  uint128& operator+=(const uint128& o) {
    const std::uint64_t l = lo + o.lo;
    hi += o.hi + (l < lo ? 1u : 0u);
    lo = l;
    return *this;
  }
  friend uint128 operator+(uint128 a, const uint128& b) { return a += b; }
  friend uint128 operator-(const uint128& a, const uint128& b) {
    return {a.hi - b.hi - (a.lo < b.lo ? 1u : 0u), a.lo - b.lo};
  }
  friend bool operator==(const uint128& a, const uint128& b) { return a.hi == b.hi && a.lo == b.lo; }
  friend bool operator!=(const uint128& a, const uint128& b) { return !(a == b); }
  friend bool operator<(const uint128& a, const uint128& b) {
    return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo);
  }

  // Full 64x64 -> 128 product.
  static uint128 mul(std::uint64_t a, std::uint64_t b) {
#if defined(__SIZEOF_INT128__)
    const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
    return {static_cast<std::uint64_t>(p >> 64), static_cast<std::uint64_t>(p)};
#else
    const std::uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
    const std::uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    const std::uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    return {p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32), (mid << 32) | (p00 & 0xffffffffu)};
#endif
  }

  // Correctly rounded conversion (round to nearest even), so results do not depend on how the
  // integer was assembled.
  double to_double() const {
#if defined(__SIZEOF_INT128__)
    return static_cast<double>((static_cast<unsigned __int128>(hi) << 64) | lo);
#else
    if (hi == 0) return static_cast<double>(lo);
    // Keep 64 significant bits plus a sticky bit, then let the hardware round once.
    int shift = 64;
    std::uint64_t h = hi;
    while (h) { h >>= 1; --shift; }
    shift = 64 - shift;  // bits to drop from the 128-bit value to fit 64
    const std::uint64_t top = (hi << (64 - shift)) | (lo >> shift);
    const std::uint64_t sticky = (lo & ((std::uint64_t(1) << shift) - 1)) ? 1 : 0;
    return std::ldexp(static_cast<double>(top | sticky), shift);
#endif
  }
};

// ---------------------------------------------------------------------------------------------
// Runtime SIMD dispatch. The wheel is built for baseline x86-64 (or arm64); AVX2 code paths are
// compiled with a target attribute and chosen at run time, with a portable C++ fallback that
// gives bit-identical results.
enum class simd_level : int { portable = 0, avx2 = 1 };

inline simd_level detect_simd() {
#if SEGRANK_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
      __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
      __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("fma"))
    return simd_level::avx2;
#endif
  return simd_level::portable;
}

namespace detail {
inline simd_level& simd_state() {
  static simd_level level = detect_simd();
  return level;
}
}  // namespace detail

// The SIMD level the kernels use now.
inline simd_level active_simd() { return detail::simd_state(); }

// Choose a SIMD level (for tests and benchmarks); a level the CPU lacks falls back to the best
// one it has. Returns the level now in use. Not thread-safe against running kernels.
inline simd_level set_simd(simd_level wanted) {
  const simd_level best = detect_simd();
  detail::simd_state() = static_cast<int>(wanted) <= static_cast<int>(best) ? wanted : best;
  return detail::simd_state();
}

inline const char* simd_name(simd_level l) { return l == simd_level::avx2 ? "avx2" : "portable"; }

// ---------------------------------------------------------------------------------------------
// IEEE binary16 -> binary32, exact (every half is representable as a float).
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t man = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;  // signed zero
  } else {        // subnormal half -> normal float
    int e = -1;
    do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
    bits = sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Storage type for IEEE half floats (numpy float16); a distinct type so templates can tell it
// from uint16 labels.
struct float16 {
  std::uint16_t bits;
};

// ---------------------------------------------------------------------------------------------
// Fork-join with dynamic scheduling: `threads` threads (the calling thread included) take
// chunk indices 0..n_chunks-1 from a shared counter and run `work(thread_index, chunk)`; a
// thread slowed by other jobs on its core simply takes fewer chunks. Exceptions are rethrown in
// the caller. Which thread runs which chunk varies; callers keep per-thread exact partial sums,
// so results do not.
template <class Work>
void parallel_chunks(std::ptrdiff_t n_chunks, int threads, Work&& work) {
  if (threads <= 1 || n_chunks <= 1) {
    for (std::ptrdiff_t c = 0; c < n_chunks; ++c) work(0, c);
    return;
  }
  threads = static_cast<int>(std::min<std::ptrdiff_t>(threads, n_chunks));
  std::atomic<std::ptrdiff_t> next{0};
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(threads));
  auto run = [&](int t) {
    try {
      for (std::ptrdiff_t c = next++; c < n_chunks; c = next++) work(t, c);
    } catch (...) {
      errors[static_cast<std::size_t>(t)] = std::current_exception();
      next = n_chunks;  // stop the others early
    }
  };
  pool.reserve(static_cast<std::size_t>(threads - 1));
  for (int t = 1; t < threads; ++t) pool.emplace_back(run, t);
  run(0);
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Chunks for `threads` threads over `items` voxels: several per thread (dynamic balance), each
// large enough (>= 1 Mvoxel) that per-chunk overhead stays small.
inline std::ptrdiff_t chunk_count(std::ptrdiff_t items, int threads) {
  if (threads <= 1) return 1;
  const std::ptrdiff_t by_size = std::max<std::ptrdiff_t>(1, items / (std::ptrdiff_t(1) << 20));
  return std::min<std::ptrdiff_t>(by_size, std::ptrdiff_t(threads) * 16);
}

// Threads pay only above a few Mvoxel per call: cap the count so each gets >= min_items.
inline int useful_threads(int requested, std::ptrdiff_t items, std::ptrdiff_t min_items) {
  if (requested <= 1) return 1;
  const std::ptrdiff_t cap = std::max<std::ptrdiff_t>(1, items / std::max<std::ptrdiff_t>(1, min_items));
  return static_cast<int>(std::min<std::ptrdiff_t>(requested, cap));
}

}  // namespace segrank
