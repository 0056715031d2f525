// Contingency table between two label arrays: n_ij = number of pixels with reference label i
// and test label j, for every pair that occurs, id 0 (background) included, as exact integer
// counts. Foreground restrictions and score formulas are applied later, from the table
// (rand.hpp), so one table serves every convention.
//
// The kernel walks both arrays row by row and counts label RUNS, not voxels: a run is a stretch
// along a row (carried on across rows) where the pair (i, j) stays the same, and each run costs
// one hash-table update. Tables from blocks, threads or calls merge exactly.
//
// Boundary band. With `exclude_boundary`, a pixel x is left out when its reference label differs
// from that of its forward neighbour x + e_k along any axis k (the next pixel in a row, the next
// row, the next plane): a one-pixel band on the low side of every transition of the reference
// labelling, including object/background transitions. The last slice of the array along an
// axis has no forward neighbour there (the array edge is not a transition).
//
// Blocks and the halo. To score a large volume block by block with the same band as the whole,
// give each block a one-slice halo on its high side along every axis where the volume goes on:
// views one slice longer than the block along those axes, and `halo[k] = 1`. Halo slices are
// never counted; they are read only to decide whether the block's last slice is in the band.
// Blocks tiling the volume, each with this halo, give tables whose merge equals the one-shot
// table exactly. Without exclusion the halo changes nothing but what is counted.
#pragma once

#include <algorithm>
#include <array>
#include <memory>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/common.hpp"
#include "view.hpp"

namespace segrank {

// A finished table: unique (ref, test) pairs sorted by (ref, test) as unsigned 64-bit numbers,
// with counts > 0. Ids are 64-bit patterns: unsigned ids as they are, signed ids sign-extended.
struct contingency_table {
  std::vector<std::uint64_t> ref, test, count;

  std::size_t size() const { return count.size(); }
  std::uint64_t total() const {
    std::uint64_t t = 0;
    for (auto c : count) t += c;
    return t;
  }

  // Exact merge of two sorted tables (sum of counts for shared pairs).
  contingency_table& merge(const contingency_table& o) {
    contingency_table out;
    out.ref.reserve(size() + o.size());
    out.test.reserve(size() + o.size());
    out.count.reserve(size() + o.size());
    std::size_t i = 0, j = 0;
    while (i < size() || j < o.size()) {
      bool take_a, take_b;
      if (i == size()) {
        take_a = false;
        take_b = true;
      } else if (j == o.size()) {
        take_a = true;
        take_b = false;
      } else {
        const auto ka = std::make_pair(ref[i], test[i]), kb = std::make_pair(o.ref[j], o.test[j]);
        take_a = !(kb < ka);
        take_b = !(ka < kb);
      }
      out.ref.push_back(take_a ? ref[i] : o.ref[j]);
      out.test.push_back(take_a ? test[i] : o.test[j]);
      out.count.push_back((take_a ? count[i] : 0) + (take_b ? o.count[j] : 0));
      i += take_a;
      j += take_b;
    }
    *this = std::move(out);
    return *this;
  }
  friend contingency_table operator+(contingency_table a, const contingency_table& b) { return a.merge(b); }
  friend bool operator==(const contingency_table& a, const contingency_table& b) {
    return a.ref == b.ref && a.test == b.test && a.count == b.count;
  }
  friend bool operator!=(const contingency_table& a, const contingency_table& b) { return !(a == b); }

  // Throws unless the invariants hold (sorted, unique, counts > 0, equal lengths).
  void validate() const {
    if (ref.size() != test.size() || ref.size() != count.size())
      throw std::invalid_argument("segrank: contingency table columns differ in length");
    for (std::size_t k = 0; k < size(); ++k) {
      if (count[k] == 0) throw std::invalid_argument("segrank: contingency table holds a zero count");
      if (k && !(std::make_pair(ref[k - 1], test[k - 1]) < std::make_pair(ref[k], test[k])))
        throw std::invalid_argument("segrank: contingency table pairs are not sorted and unique");
    }
  }
};

struct contingency_options {
  bool exclude_boundary = false;       // drop the one-pixel band at reference label transitions
  std::array<int, 3> halo{{0, 0, 0}};  // per view axis: trailing context slices (0 or 1), not counted
  int threads = 1;
};

namespace detail {

#if defined(__GNUC__) || defined(__clang__)
#define SEGRANK_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SEGRANK_ALWAYS_INLINE inline
#endif

inline void prefetch_address(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

// Prefetches the cache lines of [p, p + bytes): a prefetch past the end of an array is harmless.
inline void prefetch_span(const void* p, std::size_t bytes) {
  for (std::size_t off = 0; off < bytes; off += 64) prefetch_address(static_cast<const char*>(p) + off);
}

// How a label pair is stored and hashed: both ids in one 64-bit word when they fit in 32 bits,
// else as two words.
struct packed_pair_key {
  std::uint64_t k = 0;
  static packed_pair_key of(std::uint64_t r, std::uint64_t s) { return {(r << 32) | s}; }
  std::uint64_t ref() const { return k >> 32; }
  std::uint64_t test() const { return k & 0xffffffffu; }
  std::uint64_t mix() const { return k * 0x9E3779B97F4A7C15ull; }  // top bits index the tables
  bool operator==(const packed_pair_key& o) const { return k == o.k; }
};
struct wide_pair_key {
  std::uint64_t r = 0, s = 0;
  static wide_pair_key of(std::uint64_t r, std::uint64_t s) { return {r, s}; }
  std::uint64_t ref() const { return r; }
  std::uint64_t test() const { return s; }
  std::uint64_t mix() const {
    std::uint64_t x = r * 0x9E3779B97F4A7C15ull ^ (s + 0x632BE59BD9B4E019ull);
    x ^= x >> 31;
    return x * 0xD6E8FEB86659FD93ull;
  }
  bool operator==(const wide_pair_key& o) const { return r == o.r && s == o.s; }
};

// Open-addressing (linear probing) counters keyed by the label pair. Count 0 marks an empty
// slot, so every id, 0 and the dtype maximum included, is a valid key.
template <class Key>
class pair_counter {
 public:
  using key_type = Key;
  pair_counter() { rehash(1 << 12); }
  void add(Key key, std::uint64_t n) {
    std::size_t i = index(key);
    for (;;) {
      slot& e = slots_[i];
      if (e.n == 0) {
        e.key = key;
        e.n = n;
        if (++used_ * 4 > slots_.size() * 3) rehash(slots_.size() * 2);  // load <= 3/4
        return;
      }
      if (e.key == key) {
        e.n += n;
        return;
      }
      i = (i + 1) & mask_;
    }
  }
  void add(std::uint64_t r, std::uint64_t s, std::uint64_t n) { add(Key::of(r, s), n); }
  void prefetch(Key key) const { prefetch_address(&slots_[index(key)]); }
  template <class F>
  void for_each(F&& f) const {
    for (const auto& e : slots_)
      if (e.n) f(e.key.ref(), e.key.test(), e.n);
  }
  std::size_t size() const { return used_; }

 private:
  struct slot {
    Key key{};
    std::uint64_t n = 0;
  };
  std::size_t index(Key key) const { return static_cast<std::size_t>(key.mix() >> shift_); }
  void rehash(std::size_t capacity) {
    std::vector<slot> old;
    old.swap(slots_);
    slots_.assign(capacity, slot{});
    mask_ = capacity - 1;
    shift_ = 64;
    for (std::size_t c = capacity; c > 1; c >>= 1) --shift_;
    used_ = 0;
    for (const auto& e : old)
      if (e.n) add(e.key, e.n);
  }
  std::vector<slot> slots_;
  std::size_t mask_ = 0, used_ = 0;
  int shift_ = 64;
};
using packed_pair_counter = pair_counter<packed_pair_key>;
using wide_pair_counter = pair_counter<wide_pair_key>;

// A small direct-mapped cache of recent pairs in front of the big table. Consecutive rows of a
// label image cross the same objects, so most runs hit a pair counted a row or two before;
// the cache keeps those updates in L1/L2 instead of a random access into a table of MBs.
template <class Counter>
class cached_counter {
  using Key = typename Counter::key_type;

 public:
  explicit cached_counter(Counter& main) : main_(main), slots_(size) {}
  cached_counter(const cached_counter&) = delete;
  cached_counter& operator=(const cached_counter&) = delete;
  ~cached_counter() { flush(); }

  void prefetch(std::uint64_t r, std::uint64_t s) const { prefetch_address(&slots_[index(Key::of(r, s))]); }
  // The same in two steps, for loops that prefetch ahead: the slot index of a pair is computed
  // once (the hash of a wide key costs two multiplications), prefetched, then used by add_at.
  static std::size_t slot_of(std::uint64_t r, std::uint64_t s) { return index(Key::of(r, s)); }
  void prefetch_slot(std::size_t i) const { prefetch_address(&slots_[i]); }

  // Inlined into the run loops: a call per run costs more than the update itself.
  SEGRANK_ALWAYS_INLINE void add(std::uint64_t r, std::uint64_t s, std::uint64_t n) {
    add_at(slot_of(r, s), r, s, n);
  }
  // add(r, s, n) with i = slot_of(r, s).
  SEGRANK_ALWAYS_INLINE void add_at(std::size_t i, std::uint64_t r, std::uint64_t s, std::uint64_t n) {
    // An empty slot (n = 0) may match too: it then simply starts counting.
    const Key key = Key::of(r, s);
    slot& e = slots_[i];
    if (e.key == key) {
      e.n += n;
      return;
    }
    if (e.n) evict(e);
    e = slot{key, n};
  }
  void flush() {
    drain();
    for (auto& e : slots_) {
      if (e.n) main_.add(e.key, e.n);
      e.n = 0;
    }
  }

 private:
  // 16384 slots of packed keys (256 KB), 32768 of wide keys (768 KB): the pairs of a few rows,
  // and most of a plane's, within L2; fewer conflict evictions into the big table than 8192.
  static constexpr int bits = sizeof(Key) > 8 ? 15 : 14;
  static constexpr std::size_t size = std::size_t(1) << bits;
  static constexpr std::size_t batch = 32;
  struct slot {
    Key key{};
    std::uint64_t n = 0;
  };

  static std::size_t index(Key key) { return static_cast<std::size_t>(key.mix() >> (64 - bits)); }
  // Evicted counts go to the big table in batches, prefetched first: its slots are mostly
  // outside the caches, and a batch overlaps those misses.
  void evict(const slot& e) {
    pending_[used_++] = e;
    if (used_ == batch) drain();
  }
  void drain() {
    for (std::size_t k = 0; k < used_; ++k) main_.prefetch(pending_[k].key);
    for (std::size_t k = 0; k < used_; ++k) main_.add(pending_[k].key, pending_[k].n);
    used_ = 0;
  }

  Counter& main_;
  std::vector<slot> slots_;
  slot pending_[batch];
  std::size_t used_ = 0;
};

// The open run: pair (r, s) seen `len` times in a row so far (len 0: no open run).
struct run_state {
  std::uint64_t r = 0, s = 0, len = 0;
};

template <class T>
inline T load_at(const char* p, std::ptrdiff_t i, std::ptrdiff_t stride) {
  return *reinterpret_cast<const T*>(p + i * stride);
}

// Run counting along one stretch of a row, as events: a run ends where the pair differs from
// the previous pixel's, and (banded) where a band pixel starts or ends. `n` pixels are counted,
// `n_full` exist along the row (its halo included); `pr1`, `pr0` are the reference's next row
// and next plane at the same position (nullptr where there is none). Any strides.
template <class R, class S, bool Banded, class Counter>
void runs_portable(const char* pr, std::ptrdiff_t sr, const char* ps, std::ptrdiff_t ss, std::ptrdiff_t n,
                   std::ptrdiff_t n_full, const char* pr1, const char* pr0, run_state& st, Counter& ctr) {
  bool open = st.len > 0;
  R cr = static_cast<R>(st.r);
  S cs = static_cast<S>(st.s);
  std::ptrdiff_t start = -static_cast<std::ptrdiff_t>(st.len);
  for (std::ptrdiff_t j = 0; j < n; ++j) {
    const R r = load_at<R>(pr, j, sr);
    const S s = load_at<S>(ps, j, ss);
    const bool band = Banded && ((j + 1 < n_full && load_at<R>(pr, j + 1, sr) != r) ||
                                 (pr1 && load_at<R>(pr1, j, sr) != r) || (pr0 && load_at<R>(pr0, j, sr) != r));
    if (band) {
      if (open) ctr.add(cr, cs, static_cast<std::uint64_t>(j - start));
      open = false;
    } else if (!open || r != cr || s != cs) {
      if (open) ctr.add(cr, cs, static_cast<std::uint64_t>(j - start));
      open = true;
      cr = r;
      cs = s;
      start = j;
    }
  }
  st.r = cr;
  st.s = cs;
  st.len = open ? static_cast<std::uint64_t>(n - start) : 0;
}

#if SEGRANK_X86_DISPATCH
// Equality masks over 32 consecutive elements: bit k set when p[k] == q[k] (and, for the pair
// versions, also p2[k] == q2[k]; same-width pairs are combined before the movemask).
template <class T>
SEGRANK_TARGET_AVX2 inline __m256i eq_vec_avx2(const T* p, const T* q) {
  static_assert(std::is_unsigned<T>::value, "label storage types are unsigned");
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  if constexpr (sizeof(T) == 1) return _mm256_cmpeq_epi8(a, b);
  if constexpr (sizeof(T) == 2) return _mm256_cmpeq_epi16(a, b);
  if constexpr (sizeof(T) == 4) return _mm256_cmpeq_epi32(a, b);
  if constexpr (sizeof(T) == 8) return _mm256_cmpeq_epi64(a, b);
}

// Bits of one 256-bit compare result, one per element of width W bytes.
template <int W>
SEGRANK_TARGET_AVX2 inline std::uint32_t lane_bits_avx2(__m256i c) {
  if (W == 1) return static_cast<std::uint32_t>(_mm256_movemask_epi8(c));
  if (W == 2) {
    const __m128i packed = _mm_packs_epi16(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    return static_cast<std::uint32_t>(_mm_movemask_epi8(packed));
  }
  if (W == 4) return static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(c)));
  return static_cast<std::uint32_t>(_mm256_movemask_pd(_mm256_castsi256_pd(c)));
}

template <class T>
SEGRANK_TARGET_AVX2 inline std::uint32_t eq32_avx2(const T* p, const T* q) {
  constexpr int lanes = 32 / sizeof(T);
  std::uint32_t m = 0;
  for (int k = 0; k < 32; k += lanes) m |= lane_bits_avx2<sizeof(T)>(eq_vec_avx2(p + k, q + k)) << k;
  return m;
}

template <class R, class S>
SEGRANK_TARGET_AVX2 inline std::uint32_t eq32_pair_avx2(const R* r, const R* rq, const S* s, const S* sq) {
  if constexpr (sizeof(R) == sizeof(S)) {
    constexpr int lanes = 32 / sizeof(R);
    std::uint32_t m = 0;
    for (int k = 0; k < 32; k += lanes)
      m |= lane_bits_avx2<sizeof(R)>(_mm256_and_si256(eq_vec_avx2(r + k, rq + k), eq_vec_avx2(s + k, sq + k))) << k;
    return m;
  } else {
    return eq32_avx2(r, rq) & eq32_avx2(s, sq);
  }
}

// The same events on contiguous rows, 32 pixels at a time: a bit mask of event positions
// (pair differs from the previous pixel; band starts or ends), then one step per event.
template <class R, class S, bool Banded, class Counter>
SEGRANK_TARGET_AVX2 void runs_avx2(const R* r, const S* s, std::ptrdiff_t n, std::ptrdiff_t n_full, const R* r1,
                                   const R* r0, run_state& st, Counter& ctr) {
  if (n < 34) {
    runs_portable<R, S, Banded>(reinterpret_cast<const char*>(r), sizeof(R), reinterpret_cast<const char*>(s),
                                sizeof(S), n, n_full, reinterpret_cast<const char*>(r1),
                                reinterpret_cast<const char*>(r0), st, ctr);
    return;
  }
  // The first pixel against the carried run, by the portable rule.
  runs_portable<R, S, Banded>(reinterpret_cast<const char*>(r), sizeof(R), reinterpret_cast<const char*>(s),
                              sizeof(S), 1, n_full, reinterpret_cast<const char*>(r1),
                              reinterpret_cast<const char*>(r0), st, ctr);
  bool open = st.len > 0;  // always true without a band
  R cr = static_cast<R>(st.r);
  S cs = static_cast<S>(st.s);
  std::ptrdiff_t start = 1 - static_cast<std::ptrdiff_t>(st.len);
  std::uint32_t prev_band = (Banded && !open) ? 1u : 0u;  // pixel 0 was band iff no run is open after it
  std::ptrdiff_t i = 1;
  const std::ptrdiff_t stop = Banded ? std::min(n, n_full - 1) : n;  // the band test reads pixel i + 32
  if constexpr (!Banded) {
    // Two passes per block of pixels: event positions first (branch-free bit flattening), then
    // one counter update per run from that list, with no detection work in between.
    constexpr std::ptrdiff_t block = 1024;
    constexpr std::ptrdiff_t prefetch_ahead = block;  // elements
    std::uint32_t pos[block + 64];
    while (i + 32 <= stop) {
      const std::ptrdiff_t base = i;
      const std::ptrdiff_t end = std::min(stop - 31, base + block);
      std::size_t count = 0;
      for (; i < end; i += 32) {
        // The counting pass below runs from L1 and leaves the memory bus idle: ask for the
        // block after next now, so that its rows arrive while this one is counted.
        prefetch_span(r + i + prefetch_ahead, 32 * sizeof(R));
        prefetch_span(s + i + prefetch_ahead, 32 * sizeof(S));
        std::uint32_t events = ~eq32_pair_avx2(r + i, r + i - 1, s + i, s + i - 1);
        const std::size_t n_ev = static_cast<std::size_t>(_mm_popcnt_u32(events));
        const std::uint32_t off = static_cast<std::uint32_t>(i - base);
        for (int k = 0; k < 8; ++k) {  // fixed trip count: positions past n_ev are overwritten later
          pos[count + static_cast<std::size_t>(k)] = off + static_cast<std::uint32_t>(_tzcnt_u32(events));
          events = _blsr_u32(events);
        }
        for (std::size_t k = 8; k < n_ev; ++k) {
          pos[count + k] = off + static_cast<std::uint32_t>(_tzcnt_u32(events));
          events = _blsr_u32(events);
        }
        count += n_ev;
      }
      // Prefetch the counter slot of the run 8 events later; slot indices wait in a ring.
      constexpr std::size_t ahead = 8, ring = 16;
      std::size_t slot_ring[ring];
      for (std::size_t k = 0; k < ahead && k < count; ++k) {
        const std::ptrdiff_t jp = base + static_cast<std::ptrdiff_t>(pos[k]);
        slot_ring[k] = Counter::slot_of(r[jp], s[jp]);
        ctr.prefetch_slot(slot_ring[k]);
      }
      std::size_t cur = Counter::slot_of(cr, cs);
      for (std::size_t k = 0; k < count; ++k) {
        if (k + ahead < count) {
          const std::ptrdiff_t jp = base + static_cast<std::ptrdiff_t>(pos[k + ahead]);
          const std::size_t h = Counter::slot_of(r[jp], s[jp]);
          slot_ring[(k + ahead) % ring] = h;
          ctr.prefetch_slot(h);
        }
        const std::ptrdiff_t j = base + static_cast<std::ptrdiff_t>(pos[k]);
        ctr.add_at(cur, cr, cs, static_cast<std::uint64_t>(j - start));
        cr = r[j];
        cs = s[j];
        cur = slot_ring[k % ring];
        start = j;
      }
    }
  }
  for (; Banded && i + 32 <= stop; i += 32) {
    std::uint32_t events = ~eq32_pair_avx2(r + i, r + i - 1, s + i, s + i - 1);
    std::uint32_t same = eq32_avx2(r + i, r + i + 1);
    if (r1) same &= eq32_avx2(r + i, r1 + i);
    if (r0) same &= eq32_avx2(r + i, r0 + i);
    const std::uint32_t band = ~same;
    events |= band | (band << 1) | prev_band;
    prev_band = band >> 31;
    while (events) {
      const int k = __builtin_ctz(events);
      events &= events - 1;
      const std::ptrdiff_t j = i + k;
      if (open) ctr.add(cr, cs, static_cast<std::uint64_t>(j - start));
      if ((band >> k) & 1u) {
        open = false;
      } else {
        open = true;
        cr = r[j];
        cs = s[j];
        start = j;
      }
    }
  }
  st.r = cr;
  st.s = cs;
  st.len = open ? static_cast<std::uint64_t>(i - start) : 0;
  if (i < n)
    runs_portable<R, S, Banded>(reinterpret_cast<const char*>(r + i), sizeof(R), reinterpret_cast<const char*>(s + i),
                                sizeof(S), n - i, n_full - i, r1 ? reinterpret_cast<const char*>(r1 + i) : nullptr,
                                r0 ? reinterpret_cast<const char*>(r0 + i) : nullptr, st, ctr);
}
#endif

template <class R, class S, bool Banded, class Counter>
void runs_row(const char* pr, std::ptrdiff_t sr, const char* ps, std::ptrdiff_t ss, std::ptrdiff_t n,
              std::ptrdiff_t n_full, const char* pr1, const char* pr0, run_state& st, Counter& ctr) {
#if SEGRANK_X86_DISPATCH
  if (active_simd() == simd_level::avx2 && sr == std::ptrdiff_t(sizeof(R)) && ss == std::ptrdiff_t(sizeof(S))) {
    runs_avx2<R, S, Banded>(reinterpret_cast<const R*>(pr), reinterpret_cast<const S*>(ps), n, n_full,
                            reinterpret_cast<const R*>(pr1), reinterpret_cast<const R*>(pr0), st, ctr);
    return;
  }
#endif
  runs_portable<R, S, Banded>(pr, sr, ps, ss, n, n_full, pr1, pr0, st, ctr);
}

template <class T>
using storage_t = std::make_unsigned_t<T>;

template <class T>
std::uint64_t canonical_id(std::uint64_t raw) {
  if (std::is_signed<T>::value)
    return static_cast<std::uint64_t>(static_cast<std::int64_t>(static_cast<T>(static_cast<storage_t<T>>(raw))));
  return raw;
}

template <class T>
array_view<storage_t<T>> as_storage(const array_view<T>& v) {
  array_view<storage_t<T>> u;
  u.data = reinterpret_cast<const storage_t<T>*>(v.data);
  u.ndim = v.ndim;
  u.shape = v.shape;
  u.strides = v.strides;
  return u;
}

}  // namespace detail

// Accumulates a contingency table over any number of same-typed view pairs (blocks).
// R, S: std::uint8_t, uint16_t, uint32_t, uint64_t, int32_t or int64_t (any integer type works).
template <class R, class S>
class contingency_accumulator {
  static_assert(std::is_integral<R>::value && std::is_integral<S>::value, "labels are integers");
  using UR = detail::storage_t<R>;
  using US = detail::storage_t<S>;
  static constexpr bool wide = sizeof(R) > 4 || sizeof(S) > 4;
  using counter = std::conditional_t<wide, detail::wide_pair_counter, detail::packed_pair_counter>;

 public:
  void add(const array_view<R>& reference, const array_view<S>& test, const contingency_options& options = {}) {
    detail::check_same_shape(reference, test);
    for (int k = 0; k < max_ndim; ++k) {
      const int h = options.halo[static_cast<std::size_t>(k)];
      if (h < 0 || h > 1) throw std::invalid_argument("segrank: halo is 0 or 1 slice per axis");
      if (h && (k >= reference.ndim || reference.shape[k] < 1))
        throw std::invalid_argument("segrank: halo on an axis the views do not have");
    }
    const auto ref = detail::as_storage(reference);
    const auto tst = detail::as_storage(test);
    if (options.exclude_boundary)
      add_banded(ref, tst, options);
    else
      add_plain(ref, tst, options);
  }

  contingency_table table() const {
    // Raw ids sort like their canonical forms (sign extension keeps the order of the raw
    // patterns), so entries are sorted raw, in the narrowest form, then widened on output.
    contingency_table t;
    if constexpr (wide) {
      struct entry {
        std::uint64_t r, s, n;
      };
      std::vector<entry> all;
      all.reserve(counter_.size());
      counter_.for_each([&](std::uint64_t r, std::uint64_t s, std::uint64_t n) { all.push_back({r, s, n}); });
      std::sort(all.begin(), all.end(), [](const entry& a, const entry& b) { return a.r < b.r || (a.r == b.r && a.s < b.s); });
      reserve(t, all.size());
      for (const auto& e : all) push(t, e.r, e.s, e.n);
    } else {
      std::vector<std::pair<std::uint64_t, std::uint64_t>> all;  // (r << 32 | s, n)
      all.reserve(counter_.size());
      counter_.for_each([&](std::uint64_t r, std::uint64_t s, std::uint64_t n) { all.emplace_back((r << 32) | s, n); });
      std::sort(all.begin(), all.end());
      reserve(t, all.size());
      for (const auto& e : all) push(t, e.first >> 32, e.first & 0xffffffffu, e.second);
    }
    return t;
  }

  std::size_t pairs() const { return counter_.size(); }

 private:
  static void reserve(contingency_table& t, std::size_t n) {
    t.ref.reserve(n);
    t.test.reserve(n);
    t.count.reserve(n);
  }
  static void push(contingency_table& t, std::uint64_t r, std::uint64_t s, std::uint64_t n) {
    t.ref.push_back(detail::canonical_id<R>(r));
    t.test.push_back(detail::canonical_id<S>(s));
    t.count.push_back(n);
  }

  template <class Fn>
  void run_threads(std::ptrdiff_t total, int requested, Fn&& count_range) {
    const int threads = useful_threads(requested, total, std::ptrdiff_t(1) << 21);
    const std::ptrdiff_t chunks = chunk_count(total, threads);
    std::vector<counter> extra(static_cast<std::size_t>(threads - 1));
    std::vector<std::unique_ptr<detail::cached_counter<counter>>> caches;
    for (int t = 0; t < threads; ++t)
      caches.emplace_back(new detail::cached_counter<counter>(t == 0 ? counter_ : extra[static_cast<std::size_t>(t - 1)]));
    parallel_chunks(chunks, threads, [&](int t, std::ptrdiff_t chunk) {
      detail::cached_counter<counter>& ctr = *caches[static_cast<std::size_t>(t)];
      detail::run_state st;
      count_range(total * chunk / chunks, total * (chunk + 1) / chunks, st, ctr);
      if (st.len) ctr.add(st.r, st.s, st.len);
    });
    caches.clear();  // flushes every cache into its counter
    for (const auto& c : extra) c.for_each([&](std::uint64_t r, std::uint64_t s, std::uint64_t n) { counter_.add(r, s, n); });
  }

  template <class T>
  static array_view<T> shrink(array_view<T> v, const std::array<int, 3>& halo) {
    for (int k = 0; k < v.ndim; ++k) v.shape[k] -= halo[static_cast<std::size_t>(k)];
    return v;
  }

  void add_plain(const array_view<UR>& ref, const array_view<US>& tst, const contingency_options& o) {
    const detail::pair_walk w = detail::make_pair_walk(shrink(ref, o.halo), shrink(tst, o.halo), true);
    const std::ptrdiff_t length = w.row_length(), total = w.rows() * length;
    run_threads(total, o.threads, [&](std::ptrdiff_t begin, std::ptrdiff_t end, detail::run_state& st, auto& ctr) {
      for (std::ptrdiff_t pos = begin; pos < end;) {
        const std::ptrdiff_t r = pos / length, col = pos % length, n = std::min(length - col, end - pos);
        detail::runs_row<UR, US, false>(w.row_a(r) + col * w.sa[2], w.sa[2], w.row_b(r) + col * w.sb[2], w.sb[2], n,
                                        n, nullptr, nullptr, st, ctr);
        pos += n;
      }
    });
  }

  void add_banded(const array_view<UR>& ref, const array_view<US>& tst, const contingency_options& o) {
    const detail::pair_walk w = detail::make_pair_walk(ref, tst, false);
    std::array<std::ptrdiff_t, 3> counted = w.shape;
    for (int k = 0; k < 3; ++k)
      if (w.axis[k] >= 0) counted[k] -= o.halo[static_cast<std::size_t>(w.axis[k])];
    const std::ptrdiff_t length = counted[2], total = counted[0] * counted[1] * length;
    run_threads(total, o.threads, [&](std::ptrdiff_t begin, std::ptrdiff_t end, detail::run_state& st, auto& ctr) {
      for (std::ptrdiff_t pos = begin; pos < end;) {
        const std::ptrdiff_t row = pos / length, col = pos % length, n = std::min(length - col, end - pos);
        const std::ptrdiff_t i0 = row / counted[1], i1 = row % counted[1];
        const char* pr = w.a + i0 * w.sa[0] + i1 * w.sa[1];
        const char* ps = w.b + i0 * w.sb[0] + i1 * w.sb[1];
        const char* pr1 = i1 + 1 < w.shape[1] ? pr + w.sa[1] : nullptr;
        const char* pr0 = i0 + 1 < w.shape[0] ? pr + w.sa[0] : nullptr;
        const std::ptrdiff_t off = col * w.sa[2];
        detail::runs_row<UR, US, true>(pr + off, w.sa[2], ps + col * w.sb[2], w.sb[2], n, w.shape[2] - col,
                                    pr1 ? pr1 + off : nullptr, pr0 ? pr0 + off : nullptr, st, ctr);
        pos += n;
      }
    });
  }

  counter counter_;
};

// One-shot table for one pair of views.
template <class R, class S>
contingency_table contingency(const array_view<R>& reference, const array_view<S>& test,
                              const contingency_options& options = {}) {
  contingency_accumulator<R, S> acc;
  acc.add(reference, test, options);
  return acc.table();
}

}  // namespace segrank
