// pybind11 bindings for segrank's metric kernels (cpp/include/segrank/). The only file that
// knows about Python: it checks arrays, builds views over numpy's memory without copying,
// releases the GIL while counting, and turns C++ results into plain Python values.
// The user-facing API (keyword options, dataclasses, docs) is in python/segrank/metrics/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "segrank/metrics.hpp"

namespace py = pybind11;

namespace {

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Checks every array-level property the kernels rely on; raises TypeError / ValueError.
void check_array(const py::array& a, const char* what) {
  const auto nd = a.ndim();
  if (nd < 1 || nd > segrank::max_ndim)
    throw py::value_error(std::string(what) + " must have 1 to 3 axes, got " + std::to_string(nd));
  if (!a.dtype().attr("isnative").cast<bool>())
    throw py::type_error(std::string(what) + " has non-native byte order (" + dtype_name(a) +
                         "); convert with .astype(dtype.newbyteorder('='))");
  const auto item = a.itemsize();
  if (reinterpret_cast<std::uintptr_t>(a.data()) % static_cast<std::uintptr_t>(item) != 0)
    throw py::value_error(std::string(what) + " is not aligned in memory; pass np.ascontiguousarray(...)");
  for (py::ssize_t k = 0; k < nd; ++k)
    if (a.strides(k) % item != 0)
      throw py::value_error(std::string(what) + " has strides that are not a multiple of its item size");
}

void check_same_shape(const py::array& a, const py::array& b, const char* na, const char* nb) {
  bool same = a.ndim() == b.ndim();
  for (py::ssize_t k = 0; same && k < a.ndim(); ++k) same = a.shape(k) == b.shape(k);
  if (!same) {
    auto shape = [](const py::array& x) {
      std::string s = "(";
      for (py::ssize_t k = 0; k < x.ndim(); ++k) s += (k ? ", " : "") + std::to_string(x.shape(k));
      return s + (x.ndim() == 1 ? ",)" : ")");
    };
    throw py::value_error(std::string(na) + " and " + nb + " differ in shape: " + shape(a) + " vs " + shape(b));
  }
}

template <class T>
segrank::array_view<T> view_of(const py::array& a) {
  std::ptrdiff_t shape[3] = {0, 0, 0}, strides[3] = {0, 0, 0};
  for (py::ssize_t k = 0; k < a.ndim(); ++k) {
    shape[k] = static_cast<std::ptrdiff_t>(a.shape(k));
    strides[k] = static_cast<std::ptrdiff_t>(a.strides(k));
  }
  return segrank::array_view<T>::from_byte_strides(static_cast<const T*>(a.data()), static_cast<int>(a.ndim()), shape,
                                                   strides);
}

py::array require_array(const py::object& obj, const char* what) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(what) + " must be a numpy array, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(obj);
}

// ------------------------------------------------------------------------------------------------
template <class T>
segrank::binary_counts binary_typed(const py::array& a, const py::array& b, const segrank::binary_options& o) {
  const auto va = view_of<T>(a);
  const auto vb = view_of<T>(b);
  py::gil_scoped_release release;
  return segrank::binary_consistency<T>(va, vb, o);
}

py::tuple binary_counts_py(const py::object& a_obj, const py::object& b_obj, const py::object& threshold,
                           bool background, int threads) {
  const py::array a = require_array(a_obj, "a"), b = require_array(b_obj, "b");
  check_array(a, "a");
  check_array(b, "b");
  if (!a.dtype().equal(b.dtype()))
    throw py::type_error("a and b differ in dtype: " + dtype_name(a) + " vs " + dtype_name(b));
  check_same_shape(a, b, "a", "b");
  segrank::binary_options o;
  o.masks = threshold.is_none();
  if (!o.masks) o.threshold = threshold.cast<double>();
  o.background = background;
  o.threads = threads;
  const char kind = a.dtype().kind();
  const auto size = a.itemsize();
  if (kind == 'b') o.masks = true;  // bool arrays are masks whatever the threshold
  segrank::binary_counts c;
  if (kind == 'f' && !o.masks) {
    if (size == 2)
      c = binary_typed<segrank::float16>(a, b, o);
    else if (size == 4)
      c = binary_typed<float>(a, b, o);
    else if (size == 8)
      c = binary_typed<double>(a, b, o);
    else
      throw py::type_error("unsupported probability dtype " + dtype_name(a) + " (float16, float32, float64, uint8)");
  } else if (kind == 'b' || kind == 'u' || kind == 'i') {
    if (!o.masks && !(kind == 'u' && size == 1) && kind != 'b')
      throw py::type_error("a threshold applies to probabilities (float16/32/64 or uint8), not " + dtype_name(a) +
                           "; pass threshold=None to compare " + dtype_name(a) + " arrays as masks (nonzero = foreground)");
    if (size == 1)
      c = binary_typed<std::uint8_t>(a, b, o);
    else if (size == 2)
      c = binary_typed<std::uint16_t>(a, b, o);
    else if (size == 4)
      c = binary_typed<std::uint32_t>(a, b, o);
    else if (size == 8)
      c = binary_typed<std::uint64_t>(a, b, o);
    else
      throw py::type_error("unsupported dtype " + dtype_name(a));
  } else if (kind == 'f') {
    throw py::type_error("threshold=None means masks, but " + dtype_name(a) +
                         " arrays are probabilities: pass a threshold");
  } else {
    throw py::type_error("unsupported dtype " + dtype_name(a) + " (need float16/32/64 probabilities, bool or integer masks)");
  }
  return py::make_tuple(c.n_and, c.n_or, c.ei_units.hi, c.ei_units.lo);
}

// ------------------------------------------------------------------------------------------------
// A bank of models: probs of shape (n, *spatial), one view per model over probs[m] (no copy).
void check_bank(const py::array& probs) {
  const auto nd = probs.ndim();
  if (nd < 2 || nd > segrank::max_ndim + 1)
    throw py::value_error("probs must have shape (n_models, *spatial) with 1 to 3 spatial axes, got " +
                          std::to_string(nd) + " axes");
  if (probs.strides(0) % probs.itemsize() != 0)
    throw py::value_error("probs has strides that are not a multiple of its item size");
  // each model's array must pass the checks of a single image
  if (probs.shape(0) > 0) check_array(py::reinterpret_borrow<py::array>(probs.attr("__getitem__")(0)), "probs[i]");
}

template <class T>
std::vector<segrank::array_view<T>> bank_views(const py::array& probs) {
  const int nd = static_cast<int>(probs.ndim()) - 1;
  std::ptrdiff_t shape[3] = {0, 0, 0}, strides[3] = {0, 0, 0};
  for (int k = 0; k < nd; ++k) {
    shape[k] = static_cast<std::ptrdiff_t>(probs.shape(k + 1));
    strides[k] = static_cast<std::ptrdiff_t>(probs.strides(k + 1));
  }
  const char* base = static_cast<const char*>(probs.data());
  std::vector<segrank::array_view<T>> views;
  for (py::ssize_t m = 0; m < probs.shape(0); ++m)
    views.push_back(segrank::array_view<T>::from_byte_strides(
        reinterpret_cast<const T*>(base + m * probs.strides(0)), nd, shape, strides));
  return views;
}

// Calls fn(views) with the views typed by probs' dtype (float32 or float64), GIL released.
template <class Fn>
auto with_bank(const py::object& probs_obj, Fn&& fn) {
  const py::array probs = require_array(probs_obj, "probs");
  check_bank(probs);
  const char kind = probs.dtype().kind();
  const auto size = probs.itemsize();
  if (kind == 'f' && size == 4) {
    const auto views = bank_views<float>(probs);
    py::gil_scoped_release release;
    return fn(views);
  }
  if (kind == 'f' && size == 8) {
    const auto views = bank_views<double>(probs);
    py::gil_scoped_release release;
    return fn(views);
  }
  throw py::type_error("probs must be float32 or float64 probabilities, got " + dtype_name(probs));
}

template <class T>
py::array_t<T> vector_to_numpy(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

py::tuple pairwise_py(const py::object& probs, double threshold) {
  segrank::agreement_options o;
  o.threshold = threshold;
  const segrank::pairwise_sums s =
      with_bank(probs, [&](const auto& views) { return segrank::pairwise_agreement(views, o); });
  std::vector<std::int64_t> both(s.both.begin(), s.both.end());
  return py::make_tuple(vector_to_numpy(both, {s.n, s.n}), vector_to_numpy(s.ei, {s.n, s.n}));
}

py::tuple consensus_py(const py::object& probs, const std::vector<double>& weights, double threshold) {
  segrank::agreement_options o;
  o.threshold = threshold;
  const segrank::consensus_sums s =
      with_bank(probs, [&](const auto& views) { return segrank::consensus_agreement(views, weights, o); });
  const py::ssize_t n = s.n();
  auto as_i64 = [&](const std::vector<std::uint64_t>& v) {
    return vector_to_numpy(std::vector<std::int64_t>(v.begin(), v.end()), {n});
  };
  return py::make_tuple(as_i64(s.model_fg), as_i64(s.cons_fg), as_i64(s.both), vector_to_numpy(s.ei, {n}));
}

// ------------------------------------------------------------------------------------------------
py::array_t<std::uint64_t> to_numpy(std::vector<std::uint64_t>&& v) {
  auto* heap = new std::vector<std::uint64_t>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<std::uint64_t>*>(p); });
  return py::array_t<std::uint64_t>({static_cast<py::ssize_t>(heap->size())}, {sizeof(std::uint64_t)}, heap->data(),
                                    owner);
}

py::tuple table_to_py(segrank::contingency_table&& t) {
  return py::make_tuple(to_numpy(std::move(t.ref)), to_numpy(std::move(t.test)), to_numpy(std::move(t.count)));
}

template <class R, class S>
segrank::contingency_table table_typed(const py::array& r, const py::array& s, const segrank::contingency_options& o) {
  const auto vr = view_of<R>(r);
  const auto vs = view_of<S>(s);
  py::gil_scoped_release release;
  return segrank::contingency<R, S>(vr, vs, o);
}

// Label dtypes: uint8/16/32/64, int8/16/32/64 (bool as uint8).
template <class R>
segrank::contingency_table table_dispatch_test(const py::array& r, const py::array& s,
                                               const segrank::contingency_options& o) {
  const char kind = s.dtype().kind();
  const auto size = s.itemsize();
  if (kind == 'u' || kind == 'b') {
    if (size == 1) return table_typed<R, std::uint8_t>(r, s, o);
    if (size == 2) return table_typed<R, std::uint16_t>(r, s, o);
    if (size == 4) return table_typed<R, std::uint32_t>(r, s, o);
    if (size == 8) return table_typed<R, std::uint64_t>(r, s, o);
  } else if (kind == 'i') {
    if (size == 1) return table_typed<R, std::int8_t>(r, s, o);
    if (size == 2) return table_typed<R, std::int16_t>(r, s, o);
    if (size == 4) return table_typed<R, std::int32_t>(r, s, o);
    if (size == 8) return table_typed<R, std::int64_t>(r, s, o);
  }
  throw py::type_error("test labels must be an integer array, got " + dtype_name(s));
}

py::tuple contingency_py(const py::object& r_obj, const py::object& s_obj, bool exclude_boundary,
                         const std::vector<int>& halo, int threads) {
  const py::array r = require_array(r_obj, "reference"), s = require_array(s_obj, "test");
  check_array(r, "reference");
  check_array(s, "test");
  check_same_shape(r, s, "reference", "test");
  segrank::contingency_options o;
  o.exclude_boundary = exclude_boundary;
  o.threads = threads;
  if (!halo.empty() && static_cast<py::ssize_t>(halo.size()) != r.ndim())
    throw py::value_error("halo needs one entry per axis (" + std::to_string(r.ndim()) + "), got " +
                          std::to_string(halo.size()));
  for (std::size_t k = 0; k < halo.size(); ++k) {
    if (halo[k] != 0 && halo[k] != 1) throw py::value_error("halo entries are 0 or 1");
    if (halo[k] && r.shape(static_cast<py::ssize_t>(k)) < 1)
      throw py::value_error("halo on an empty axis");
    o.halo[k] = halo[k];
  }
  const char kind = r.dtype().kind();
  const auto size = r.itemsize();
  segrank::contingency_table t;
  if (kind == 'u' || kind == 'b') {
    if (size == 1) t = table_dispatch_test<std::uint8_t>(r, s, o);
    else if (size == 2) t = table_dispatch_test<std::uint16_t>(r, s, o);
    else if (size == 4) t = table_dispatch_test<std::uint32_t>(r, s, o);
    else if (size == 8) t = table_dispatch_test<std::uint64_t>(r, s, o);
    else throw py::type_error("reference labels: unsupported dtype " + dtype_name(r));
  } else if (kind == 'i') {
    if (size == 1) t = table_dispatch_test<std::int8_t>(r, s, o);
    else if (size == 2) t = table_dispatch_test<std::int16_t>(r, s, o);
    else if (size == 4) t = table_dispatch_test<std::int32_t>(r, s, o);
    else if (size == 8) t = table_dispatch_test<std::int64_t>(r, s, o);
    else throw py::type_error("reference labels: unsupported dtype " + dtype_name(r));
  } else {
    throw py::type_error("reference labels must be an integer array, got " + dtype_name(r));
  }
  return table_to_py(std::move(t));
}

// ------------------------------------------------------------------------------------------------
using u64_array = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;

segrank::contingency_table table_from_py(const u64_array& r, const u64_array& s, const u64_array& c) {
  segrank::contingency_table t;
  if (r.ndim() != 1 || s.ndim() != 1 || c.ndim() != 1) throw py::value_error("table columns must be 1-d");
  t.ref.assign(r.data(), r.data() + r.size());
  t.test.assign(s.data(), s.data() + s.size());
  t.count.assign(c.data(), c.data() + c.size());
  t.validate();
  return t;
}

py::tuple merge_tables_py(const u64_array& r1, const u64_array& s1, const u64_array& c1, const u64_array& r2,
                          const u64_array& s2, const u64_array& c2) {
  auto a = table_from_py(r1, s1, c1);
  const auto b = table_from_py(r2, s2, c2);
  {
    py::gil_scoped_release release;
    a.merge(b);
  }
  return table_to_py(std::move(a));
}

py::tuple adapted_rand_py(const u64_array& r, const u64_array& s, const u64_array& c, const std::string& convention) {
  const auto conv = segrank::parse_rand_convention(convention);
  const auto t = table_from_py(r, s, c);
  const auto x = segrank::adapted_rand(t, conv);
  return py::make_tuple(x.precision, x.recall, x.f);
}

py::object u128_to_py(const segrank::uint128& v) {
  return (py::int_(v.hi).attr("__lshift__")(64)).attr("__or__")(py::int_(v.lo));
}

py::tuple adapted_rand_sums_py(const u64_array& r, const u64_array& s, const u64_array& c,
                               const std::string& convention) {
  const auto x = segrank::adapted_rand_sums(table_from_py(r, s, c), segrank::parse_rand_convention(convention));
  return py::make_tuple(u128_to_py(x.both), u128_to_py(x.ref), u128_to_py(x.test));
}

py::tuple vi_py(const u64_array& r, const u64_array& s, const u64_array& c, const std::string& convention) {
  const auto x = segrank::variation_of_information(table_from_py(r, s, c), segrank::parse_vi_convention(convention));
  return py::make_tuple(x.split, x.merge);
}

py::tuple iou_py(const u64_array& r, const u64_array& s, const u64_array& c) {
  auto x = segrank::iou(table_from_py(r, s, c));
  py::array_t<double> values(static_cast<py::ssize_t>(x.iou.size()));
  std::copy(x.iou.begin(), x.iou.end(), values.mutable_data());
  return py::make_tuple(to_numpy(std::move(x.ref_ids)), to_numpy(std::move(x.test_ids)),
                        to_numpy(std::move(x.ref_index)), to_numpy(std::move(x.test_index)), values);
}

}  // namespace

PYBIND11_MODULE(_metrics, m) {
  m.doc() = "segrank C++ metric kernels (private: use segrank.metrics)";
  m.attr("__version__") = SEGRANK_VERSION;
  m.attr("EI_FRACTION_BITS") = segrank::ei_fraction_bits;

  m.def("binary_counts", &binary_counts_py, py::arg("a"), py::arg("b"), py::arg("threshold"), py::arg("background"),
        py::arg("threads"),
        "(n_and, n_or, ei_units_hi, ei_units_lo) for two probability maps (threshold) or masks (threshold=None).");
  m.def("pairwise_agreement", &pairwise_py, py::arg("probs"), py::arg("threshold"),
        "(both int64 (n, n), ei float64 (n, n)) for probs of shape (n, *spatial), float32 or float64.");
  m.def("consensus_agreement", &consensus_py, py::arg("probs"), py::arg("weights"), py::arg("threshold"),
        "(model_fg, cons_fg, both as int64 (n,), ei float64 (n,)) against the leave-one-out consensus.");
  m.def("contingency", &contingency_py, py::arg("reference"), py::arg("test"), py::arg("exclude_boundary"),
        py::arg("halo"), py::arg("threads"), "(ref_ids, test_ids, counts) as uint64 arrays, sorted by (ref, test).");
  m.def("merge_tables", &merge_tables_py);
  m.def("adapted_rand", &adapted_rand_py, py::arg("ref"), py::arg("test"), py::arg("count"), py::arg("convention"));
  m.def("adapted_rand_sums", &adapted_rand_sums_py, py::arg("ref"), py::arg("test"), py::arg("count"),
        py::arg("convention"));
  m.def("variation_of_information", &vi_py, py::arg("ref"), py::arg("test"), py::arg("count"), py::arg("convention"));
  m.def("iou", &iou_py, py::arg("ref"), py::arg("test"), py::arg("count"));
  m.def("simd_level", [] { return std::string(segrank::simd_name(segrank::active_simd())); },
        "The SIMD path the kernels use now: 'avx2' or 'portable'.");
  m.def(
      "set_simd_level",
      [](const std::string& name) {
        if (name != "portable" && name != "avx2")
          throw py::value_error("SIMD level is 'portable' or 'avx2', got '" + name + "'");
        return std::string(segrank::simd_name(
            segrank::set_simd(name == "avx2" ? segrank::simd_level::avx2 : segrank::simd_level::portable)));
      },
      "Choose the SIMD path (for tests and benchmarks); returns the level now in use.");
}
