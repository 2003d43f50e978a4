#include "standin.hpp"

#include "deploytool/errors.hpp"

namespace deploytool::testing {

StandinModel::StandinModel(BatchShape input, BatchShape output) : input_(input), output_(output), scale_(output.height / input.height) {
  if (input.channels % output.channels != 0 || output.height != input.height * scale_ || output.width != input.width * scale_) {
    throw Error("the stand-in model needs input channels a multiple of the output's and an integer scale");
  }
}

void StandinModel::operator()(const float* input, float* output) {
  const int groups = input_.channels / output_.channels;
  const int in_h = input_.height, in_w = input_.width, out_h = output_.height, out_w = output_.width;
  for (int b = 0; b < output_.batch; ++b) {
    const float offset = static_cast<float>(0.003 * double((calls_ * output_.batch + b) % 17));
    for (int c = 0; c < output_.channels; ++c) {
      for (int y = 0; y < out_h; ++y) {
        for (int x = 0; x < out_w; ++x) {
          float total = 0.0f;
          for (int g = 0; g < groups; ++g) {
            const float value = input[((std::size_t(b) * input_.channels + g * output_.channels + c) * in_h + y / scale_) * in_w + x / scale_];
            total = g == 0 ? value : total + value;
          }
          const float base = total / float(groups);
          const float pattern = static_cast<float>(0.001 * double((y * 31 + x * 17 + c * 7) % 23));
          output[((std::size_t(b) * output_.channels + c) * out_h + y) * out_w + x] = ((base * 1.1f - 0.05f) + offset) + pattern;
        }
      }
    }
  }
  ++calls_;
}

}  // namespace deploytool::testing
