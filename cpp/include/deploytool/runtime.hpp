#pragma once
// The deploytool C++ runtime: open an export, restore images with the same pixels as
// `deploytool run`.
//
//   auto exported = deploytool::Export::open("build/my-export");
//   deploytool::Restorer restorer(exported, deploytool::tensorrt_backend(exported));
//   deploytool::Image out = restorer.restore(deploytool::read_image("photo.png"));
//   deploytool::write_image("photo_out.png", out);
#include "deploytool/backend.hpp"
#include "deploytool/errors.hpp"
#include "deploytool/export.hpp"
#include "deploytool/image.hpp"
#include "deploytool/restorer.hpp"
#include "deploytool/sha256.hpp"
#include "deploytool/tiler.hpp"
