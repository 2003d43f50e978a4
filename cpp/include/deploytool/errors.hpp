#pragma once
// Errors a user can act on: every message is one complete line (deploytool-infer prints it as
// "error: <message>"), in the same words as the Python tool where both report the same failure.
#include <stdexcept>
#include <string>

namespace deploytool {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// An image that cannot be read, written, or fed to the model.
class ImageError : public Error {
 public:
  using Error::Error;
};

// A runtime (TensorRT, CUDA) that is not usable in this build or on this machine.
class BackendUnavailable : public Error {
 public:
  using Error::Error;
};

}  // namespace deploytool
