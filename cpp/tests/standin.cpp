#include "standin.hpp"

#include <vector>

#include "deploytool/errors.hpp"

namespace deploytool::testing {

StandinModel::StandinModel(BatchShape input, BatchShape output) : input_(input), output_(output), scale_(output.height / input.height) {
  if (input.channels % output.channels != 0 || output.height != input.height * scale_ || output.width != input.width * scale_) {
    throw Error("the stand-in model needs input channels a multiple of the output's and an integer scale");
  }
}

void StandinModel::operator()(const float* input, float* output) {
  // tests/standin.py's NEIGHBOURHOOD
  static constexpr float kNeighbourhood[3][3] = {{0.05f, 0.10f, 0.02f}, {0.12f, 0.40f, 0.08f}, {0.03f, 0.15f, 0.05f}};
  const int groups = input_.channels / output_.channels;
  const int in_h = input_.height, in_w = input_.width, out_h = output_.height, out_w = output_.width;
  std::vector<float> base(std::size_t(in_h) * in_w), neighbourhood(std::size_t(in_h) * in_w);
  for (int b = 0; b < output_.batch; ++b) {
    const float offset = static_cast<float>(0.003 * double((calls_ * output_.batch + b) % 17));
    for (int c = 0; c < output_.channels; ++c) {
      for (int y = 0; y < in_h; ++y) {
        for (int x = 0; x < in_w; ++x) {
          float total = 0.0f;
          for (int g = 0; g < groups; ++g) {
            const float value = input[((std::size_t(b) * input_.channels + g * output_.channels + c) * in_h + y) * in_w + x];
            total = g == 0 ? value : total + value;
          }
          base[std::size_t(y) * in_w + x] = total / float(groups);
        }
      }
      for (int y = 0; y < in_h; ++y) {
        for (int x = 0; x < in_w; ++x) {
          float sum = 0.0f;
          for (int dy = 0; dy < 3; ++dy) {
            for (int dx = 0; dx < 3; ++dx) {
              const int sy = y + dy - 1, sx = x + dx - 1;
              const float value = sy >= 0 && sy < in_h && sx >= 0 && sx < in_w ? base[std::size_t(sy) * in_w + sx] : 0.0f;
              const float term = value * kNeighbourhood[dy][dx];
              sum = dy == 0 && dx == 0 ? term : sum + term;
            }
          }
          neighbourhood[std::size_t(y) * in_w + x] = sum;
        }
      }
      for (int y = 0; y < out_h; ++y) {
        for (int x = 0; x < out_w; ++x) {
          const float value = neighbourhood[std::size_t(y / scale_) * in_w + x / scale_];
          const float pattern = static_cast<float>(0.001 * double((y * 31 + x * 17 + c * 7) % 23));
          output[((std::size_t(b) * output_.channels + c) * out_h + y) * out_w + x] = ((value * 1.1f - 0.05f) + offset) + pattern;
        }
      }
    }
  }
  ++calls_;
}

}  // namespace deploytool::testing
