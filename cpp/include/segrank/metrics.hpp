// segrank's consistency-metric kernels: header-only C++17, no Python, no file I/O.
//   binary.hpp       NHD / consistency / EI counts from probability maps or masks
//   contingency.hpp  contingency tables between label arrays (runs, blocks, halo, threads)
//   rand.hpp         adapted Rand, variation of information, IoU pairs from a table
//   agreement.hpp    pairwise and leave-one-out consensus sums across a bank of models
#pragma once

#include "agreement.hpp"
#include "binary.hpp"
#include "contingency.hpp"
#include "rand.hpp"
#include "view.hpp"
