// pybind11 bindings for segrank's metric kernels. Kernels live in cpp/include/segrank/.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_metrics, m) {
  m.doc() = "segrank C++ metric kernels";
  m.attr("__version__") = SEGRANK_VERSION;
}
