#pragma once
// The deterministic stand-in model of tests/standin.py, in C++ (the same float32 operations in
// the same order): the mean of the input channels c, c + C_out, ..., summed over its 3x3
// neighbourhood in the tile (zero outside it) so the tiler's padding reaches the output; then
// nearest-neighbour x scale, times 1.1 minus 0.05 (so clipping shows), plus an offset from the
// tile's index in the run (a misplaced tile shows) and a pattern from the pixel's place in the
// output tile (a wrong weight or an off-by-one crop shows).
#include "deploytool/backend.hpp"

namespace deploytool::testing {

class StandinModel {
 public:
  StandinModel(BatchShape input, BatchShape output);
  void operator()(const float* input, float* output);
  long calls() const { return calls_; }

 private:
  BatchShape input_, output_;
  int scale_;
  long calls_ = 0;
};

}  // namespace deploytool::testing
