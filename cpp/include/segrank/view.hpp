// Strided N-d views (1 to 3 axes) over caller-owned memory, and the row-by-row walk the kernels
// share. Strides are in bytes (numpy's convention); `from_element_strides` converts.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace segrank {

constexpr int max_ndim = 3;

template <class T>
struct array_view {
  const T* data = nullptr;
  int ndim = 0;
  std::array<std::ptrdiff_t, max_ndim> shape{};
  std::array<std::ptrdiff_t, max_ndim> strides{};  // in bytes

  static array_view from_byte_strides(const T* data, int ndim, const std::ptrdiff_t* shape,
                                      const std::ptrdiff_t* byte_strides) {
    if (ndim < 1 || ndim > max_ndim)
      throw std::invalid_argument("segrank: views have 1 to 3 axes, got " + std::to_string(ndim));
    array_view v;
    v.data = data;
    v.ndim = ndim;
    for (int k = 0; k < ndim; ++k) {
      if (shape[k] < 0) throw std::invalid_argument("segrank: negative extent in view shape");
      if (byte_strides[k] % static_cast<std::ptrdiff_t>(alignof(T)) != 0)
        throw std::invalid_argument("segrank: view stride is not a multiple of the element alignment");
      v.shape[k] = shape[k];
      v.strides[k] = byte_strides[k];
    }
    if (reinterpret_cast<std::uintptr_t>(data) % alignof(T) != 0)
      throw std::invalid_argument("segrank: view data pointer is misaligned");
    return v;
  }

  static array_view from_element_strides(const T* data, int ndim, const std::ptrdiff_t* shape,
                                         const std::ptrdiff_t* element_strides) {
    std::ptrdiff_t b[max_ndim] = {0, 0, 0};
    for (int k = 0; k < ndim && k < max_ndim; ++k)
      b[k] = element_strides[k] * static_cast<std::ptrdiff_t>(sizeof(T));
    return from_byte_strides(data, ndim, shape, b);
  }

  // A C-ordered contiguous view, e.g. array_view<float>::c_order(p, {512, 512}).
  static array_view c_order(const T* data, std::initializer_list<std::ptrdiff_t> shape) {
    std::ptrdiff_t s[max_ndim] = {0, 0, 0}, st[max_ndim] = {0, 0, 0};
    const int n = static_cast<int>(shape.size());
    if (n < 1 || n > max_ndim)
      throw std::invalid_argument("segrank: views have 1 to 3 axes, got " + std::to_string(n));
    std::copy(shape.begin(), shape.end(), s);
    std::ptrdiff_t step = static_cast<std::ptrdiff_t>(sizeof(T));
    for (int k = n - 1; k >= 0; --k) {
      st[k] = step;
      step *= s[k];
    }
    return from_byte_strides(data, n, s, st);
  }

  std::ptrdiff_t size() const {
    std::ptrdiff_t n = 1;
    for (int k = 0; k < ndim; ++k) n *= shape[k];
    return n;
  }
};

namespace detail {

// Two same-shaped views walked together as rows: axes 0 and 1 index rows, axis 2 runs along a
// row. Axes are reordered so that rows follow the first view's smallest stride, and (when
// allowed) merged so that a contiguous image is one long row.
struct pair_walk {
  std::array<std::ptrdiff_t, 3> shape{1, 1, 1};
  std::array<std::ptrdiff_t, 3> sa{0, 0, 0}, sb{0, 0, 0};  // byte strides
  std::array<int, 3> axis{-1, -1, -1};                       // original axis of each walk axis (-1: padding)
  const char* a = nullptr;
  const char* b = nullptr;

  std::ptrdiff_t rows() const { return shape[0] * shape[1]; }
  std::ptrdiff_t row_length() const { return shape[2]; }
  const char* row_a(std::ptrdiff_t r) const {
    return a + (r / shape[1]) * sa[0] + (r % shape[1]) * sa[1];
  }
  const char* row_b(std::ptrdiff_t r) const {
    return b + (r / shape[1]) * sb[0] + (r % shape[1]) * sb[1];
  }
};

template <class TA, class TB>
void check_same_shape(const array_view<TA>& a, const array_view<TB>& b) {
  bool same = a.ndim == b.ndim;
  for (int k = 0; same && k < a.ndim; ++k) same = a.shape[k] == b.shape[k];
  if (!same) throw std::invalid_argument("segrank: the two arrays differ in shape");
}

inline std::ptrdiff_t abs_stride(std::ptrdiff_t s) { return s < 0 ? -s : s; }

// `merge_axes`: collapse axes whose memory layout allows it in both views (element-wise kernels,
// and run counting without a boundary band).
template <class TA, class TB>
pair_walk make_pair_walk(const array_view<TA>& a, const array_view<TB>& b, bool merge_axes) {
  check_same_shape(a, b);
  const int n = a.ndim;
  // Order original axes by decreasing |stride| of `a` (stable), so the last one is the fastest.
  std::array<int, 3> order{0, 1, 2};
  std::stable_sort(order.begin(), order.begin() + n, [&](int x, int y) {
    return abs_stride(a.strides[x]) > abs_stride(a.strides[y]);
  });
  struct ax { std::ptrdiff_t shape, sa, sb; int axis; };
  ax inner[3];  // merged axes, innermost first
  int m = 0;
  for (int k = n - 1; k >= 0; --k) {
    const int src = order[k];
    const ax cur{a.shape[src], a.strides[src], b.strides[src], src};
    if (merge_axes && m > 0) {
      ax& last = inner[m - 1];
      if (cur.shape == 1) continue;  // a unit axis adds nothing to the walk
      if (last.shape == 1) { last = cur; continue; }
      if (cur.sa == last.shape * last.sa && cur.sb == last.shape * last.sb) {
        last.shape *= cur.shape;  // the views step uniformly across the seam
        last.axis = -1;
        continue;
      }
    }
    inner[m++] = cur;
  }
  pair_walk w;
  w.a = reinterpret_cast<const char*>(a.data);
  w.b = reinterpret_cast<const char*>(b.data);
  for (int k = 0; k < m; ++k) {
    w.shape[2 - k] = inner[k].shape;
    w.sa[2 - k] = inner[k].sa;
    w.sb[2 - k] = inner[k].sb;
    w.axis[2 - k] = inner[k].axis;
  }
  return w;
}

}  // namespace detail
}  // namespace segrank
