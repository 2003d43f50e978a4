#pragma once
// SHA-256 (FIPS 180-4), to check export files against manifest.json without linking a crypto
// library into edge applications for one hash.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace deploytool {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t size);
  std::string hex_digest() const;  // of the data so far; more may follow

 private:
  void compress(const std::uint8_t* block);
  std::uint32_t state_[8];
  std::uint8_t buffer_[64];
  std::size_t buffered_ = 0;
  std::uint64_t total_bytes_ = 0;
};

std::string sha256_hex(const std::string& data);
// Throws deploytool::Error when the file cannot be read.
std::string sha256_file(const std::filesystem::path& path);

}  // namespace deploytool
