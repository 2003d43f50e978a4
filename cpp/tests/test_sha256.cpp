#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "deploytool/errors.hpp"
#include "deploytool/sha256.hpp"
#include "fixtures.hpp"

namespace dt = deploytool;

TEST(Sha256, FipsVectors) {
  EXPECT_EQ(dt::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(dt::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(dt::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(dt::sha256_hex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PiecesEqualWhole) {
  std::string data;
  for (int i = 0; i < 1000; ++i) data.push_back(char(i * 7));
  for (std::size_t cut : {0u, 1u, 55u, 56u, 63u, 64u, 65u, 999u}) {
    dt::Sha256 hash;
    hash.update(data.data(), cut);
    hash.update(data.data() + cut, data.size() - cut);
    EXPECT_EQ(hash.hex_digest(), dt::sha256_hex(data)) << cut;
  }
}

TEST(Sha256, DigestCanBeReadAgainAndTheHashGoesOn) {
  dt::Sha256 hash;
  hash.update("ab", 2);
  EXPECT_EQ(hash.hex_digest(), dt::sha256_hex("ab"));
  EXPECT_EQ(hash.hex_digest(), dt::sha256_hex("ab"));
  hash.update("c", 1);
  EXPECT_EQ(hash.hex_digest(), dt::sha256_hex("abc"));
}

TEST(Sha256, File) {
  dt::testing::TempFolder folder("sha256_test");
  auto path = folder.dir / "data.bin";
  std::ofstream(path, std::ios::binary) << "abc";
  EXPECT_EQ(dt::sha256_file(path), dt::sha256_hex("abc"));
  std::filesystem::remove(path);
  EXPECT_THROW(dt::sha256_file(path), dt::Error);
}
