#pragma once
// Whole images through a backend as `deploytool run` does (deploytool/inference.py): channels
// fitted to the model's views, window-aligned, tiled, blended, cropped, and returned in the
// input's format (gray/RGB, alpha upscaled alongside, same bit depth).
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "deploytool/backend.hpp"
#include "deploytool/export.hpp"
#include "deploytool/image.hpp"

namespace deploytool {

class Restorer {
 public:
  // `overlap`: input pixels between neighbouring tiles; the export's default when not given.
  Restorer(Export exported, std::unique_ptr<Backend> backend, std::optional<int> overlap = std::nullopt);

  // One image for a single-view model.
  Image restore(const Image& image);
  // One image per view of the manifest, in its order (dual-pixel: left, right).
  Image restore(const std::vector<Image>& views);

  // Tiles the backend runs for an image of this size.
  int tiles_for(int height, int width) const;
  const Export& exported() const { return exported_; }
  Backend& backend() { return *backend_; }

  std::function<void(int)> on_tiles;  // called after each batch with its number of real tiles

 private:
  Image restore_views(const std::vector<const Image*>& views);

  Export exported_;
  std::unique_ptr<Backend> backend_;
  int overlap_;
};

}  // namespace deploytool
