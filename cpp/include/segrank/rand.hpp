// Scores from a contingency table (contingency.hpp): adapted Rand precision / recall / F, the
// variation of information (split, merge), and the IoU of overlapping object pairs.
//
// Naming follows skimage and method.md throughout: the reference (unperturbed, "image_true")
// labels the rows i with sizes a_i, the test (perturbed) labels the columns j with sizes b_j, and
//   precision = pairs together in both / pairs together in the reference,
//   recall    = pairs together in both / pairs together in the test.
// (elf and the SNEMI3D script name these two the other way round; F is symmetric.)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "contingency.hpp"
#include "detail/common.hpp"

namespace segrank {

// Which pixels count, what background means, and how pairs are counted.
enum class rand_convention {
  // method.md (default): pixels where either labelling is foreground; background pixels there
  // are singletons; pairs counted as n(n-1). Equals skimage.metrics.adapted_rand_error(
  // true, test, ignore_labels=()) on those pixels after every background pixel gets a unique id.
  method,
  // skimage.metrics.adapted_rand_error(true, test) with its defaults: pixels where the reference
  // is foreground; test id 0 is an ordinary label; pairs counted as n(n-1).
  skimage,
  // elf.evaluation.rand_index(test, true) with its defaults (as funlib / waterz): every pixel;
  // id 0 is an ordinary label; sums of squared counts (n^2).
  elf,
  // SNEMI3D challenge script: pixels where the reference is foreground; test background pixels
  // are singletons; sums of squared counts (n^2).
  snemi3d,
};

inline rand_convention parse_rand_convention(const std::string& name) {
  if (name == "method") return rand_convention::method;
  if (name == "skimage") return rand_convention::skimage;
  if (name == "elf") return rand_convention::elf;
  if (name == "snemi3d") return rand_convention::snemi3d;
  throw std::invalid_argument("segrank: unknown Rand convention '" + name +
                              "' (expected method, skimage, elf or snemi3d)");
}

// Pixel sets for the variation of information.
enum class vi_convention {
  method,  // pixels where either labelling is foreground, background pixels singletons
  all,     // every pixel, id 0 an ordinary label (skimage and elf defaults)
};

inline vi_convention parse_vi_convention(const std::string& name) {
  if (name == "method") return vi_convention::method;
  if (name == "all" || name == "skimage" || name == "elf") return vi_convention::all;
  throw std::invalid_argument("segrank: unknown VI convention '" + name + "' (expected method or all)");
}

struct rand_scores {
  double precision, recall, f;  // NaN where the pair counts they divide by are 0
};

struct vi_scores {
  double split, merge;  // H(test | ref), H(ref | test) in bits; NaN for an empty pixel set
};

// The exact integer sums every Rand convention is made of.
struct rand_sums {
  uint128 both, ref, test;  // sum f(n_ij), sum f(a_i), sum f(b_j) over the counted clusters
};

namespace detail {

// Column sums b_j (over rows selected by `row_ok`), as sorted (id, size) pairs.
template <class RowOk>
std::vector<std::pair<std::uint64_t, std::uint64_t>> column_sums(const contingency_table& t, RowOk row_ok) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> cols;
  cols.reserve(t.size());
  for (std::size_t k = 0; k < t.size(); ++k)
    if (row_ok(t.ref[k])) cols.emplace_back(t.test[k], t.count[k]);
  std::sort(cols.begin(), cols.end());
  std::size_t m = 0;
  for (std::size_t k = 0; k < cols.size(); ++k) {
    if (m && cols[m - 1].first == cols[k].first)
      cols[m - 1].second += cols[k].second;
    else
      cols[m++] = cols[k];
  }
  cols.resize(m);
  return cols;
}

// Row sums a_i, as (id, size) pairs in table order.
inline std::vector<std::pair<std::uint64_t, std::uint64_t>> row_sums(const contingency_table& t) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> rows;
  for (std::size_t k = 0; k < t.size(); ++k) {
    if (!rows.empty() && rows.back().first == t.ref[k])
      rows.back().second += t.count[k];
    else
      rows.emplace_back(t.ref[k], t.count[k]);
  }
  return rows;
}

inline uint128 pairs_term(std::uint64_t n, bool squares) {
  return squares ? uint128::mul(n, n) : uint128::mul(n, n - 1);
}

inline double nan() { return std::numeric_limits<double>::quiet_NaN(); }

}  // namespace detail

inline rand_sums adapted_rand_sums(const contingency_table& t, rand_convention c = rand_convention::method) {
  rand_sums s;
  const bool squares = c == rand_convention::elf || c == rand_convention::snemi3d;
  const bool ref_fg_only = c == rand_convention::skimage || c == rand_convention::snemi3d;
  for (std::size_t k = 0; k < t.size(); ++k) {
    const std::uint64_t i = t.ref[k], j = t.test[k], n = t.count[k];
    switch (c) {
      case rand_convention::method:
        if (i && j) s.both += detail::pairs_term(n, false);
        break;
      case rand_convention::skimage:
        if (i) s.both += detail::pairs_term(n, false);
        break;
      case rand_convention::elf:
        s.both += detail::pairs_term(n, true);
        break;
      case rand_convention::snemi3d:
        if (i) s.both += j ? detail::pairs_term(n, true) : uint128(n);  // test background: singletons
        break;
    }
  }
  for (const auto& row : detail::row_sums(t)) {
    if (row.first == 0 && c != rand_convention::elf) continue;  // reference background: ignored or singletons
    s.ref += detail::pairs_term(row.second, squares);
  }
  const auto cols = detail::column_sums(t, [&](std::uint64_t i) { return !ref_fg_only || i != 0; });
  for (const auto& col : cols) {
    if (col.first == 0) {
      if (c == rand_convention::method) continue;                          // singletons: 0 pairs
      if (c == rand_convention::snemi3d) { s.test += uint128(col.second); continue; }  // singletons: n x 1^2
    }
    s.test += detail::pairs_term(col.second, squares);
  }
  return s;
}

// Adapted Rand precision, recall and F-score (F = 1 - adapted Rand error).
// F is computed as skimage does, both / (0.5 ref + 0.5 test), which equals 2PR / (P + R).
inline rand_scores adapted_rand(const contingency_table& t, rand_convention c = rand_convention::method) {
  const rand_sums s = adapted_rand_sums(t, c);
  const double both = s.both.to_double(), ref = s.ref.to_double(), test = s.test.to_double();
  rand_scores r;
  r.precision = ref > 0 ? both / ref : detail::nan();
  r.recall = test > 0 ? both / test : detail::nan();
  const double denom = 0.5 * ref + 0.5 * test;
  r.f = denom > 0 ? both / denom : detail::nan();
  return r;
}

// Variation of information, split = H(test | ref) and merge = H(ref | test), in bits:
//   split = (sum_i a_i log2 a_i - sum_ij n_ij log2 n_ij) / n,
//   merge = (sum_j b_j log2 b_j - sum_ij n_ij log2 n_ij) / n,
// where singletons (method convention: background pixels) contribute 0 to every sum.
inline vi_scores variation_of_information(const contingency_table& t, vi_convention c = vi_convention::method) {
  const bool method = c == vi_convention::method;
  auto xlogx = [](std::uint64_t v) { return v > 1 ? static_cast<double>(v) * std::log2(static_cast<double>(v)) : 0.0; };
  double joint = 0, rows = 0, cols = 0;
  std::uint64_t n = 0;
  for (std::size_t k = 0; k < t.size(); ++k) {
    const bool bg_i = t.ref[k] == 0, bg_j = t.test[k] == 0;
    if (method && bg_i && bg_j) continue;  // outside the mask
    n += t.count[k];
    if (!method || (!bg_i && !bg_j)) joint += xlogx(t.count[k]);
  }
  for (const auto& row : detail::row_sums(t))
    if (!method || row.first != 0) rows += xlogx(row.second);
  for (const auto& col : detail::column_sums(t, [](std::uint64_t) { return true; }))
    if (!method || col.first != 0) cols += xlogx(col.second);
  if (n == 0) return {detail::nan(), detail::nan()};
  const double nd = static_cast<double>(n);
  // Clamp tiny negative round-off: conditional entropies are >= 0.
  return {std::max(0.0, (rows - joint) / nd), std::max(0.0, (cols - joint) / nd)};
}

// IoU of every overlapping pair of foreground objects, for instance metrics (mAP):
// iou = n_ij / (a_i + b_j - n_ij) with the objects' full sizes a_i, b_j from the table.
// Objects without any overlap are still listed in ref_ids / test_ids (they are misses).
struct iou_pairs {
  std::vector<std::uint64_t> ref_ids, test_ids;            // sorted foreground ids (64-bit patterns)
  std::vector<std::uint64_t> ref_index, test_index;        // per pair: positions in ref_ids / test_ids
  std::vector<double> iou;                                 // per pair
};

inline iou_pairs iou(const contingency_table& t) {
  iou_pairs out;
  std::vector<std::uint64_t> row_size;
  for (const auto& row : detail::row_sums(t)) {
    if (row.first == 0) continue;
    out.ref_ids.push_back(row.first);
    row_size.push_back(row.second);
  }
  const auto cols = detail::column_sums(t, [](std::uint64_t) { return true; });
  std::vector<std::uint64_t> col_size;
  for (const auto& col : cols) {
    if (col.first == 0) continue;
    out.test_ids.push_back(col.first);
    col_size.push_back(col.second);
  }
  std::size_t ri = 0;
  for (std::size_t k = 0; k < t.size(); ++k) {
    if (t.ref[k] == 0 || t.test[k] == 0) continue;
    while (out.ref_ids[ri] != t.ref[k]) ++ri;  // both in table order
    const std::size_t ci = static_cast<std::size_t>(
        std::lower_bound(out.test_ids.begin(), out.test_ids.end(), t.test[k]) - out.test_ids.begin());
    const std::uint64_t n = t.count[k];
    out.ref_index.push_back(ri);
    out.test_index.push_back(ci);
    out.iou.push_back(static_cast<double>(n) / static_cast<double>(row_size[ri] + col_size[ci] - n));
  }
  return out;
}

}  // namespace segrank
