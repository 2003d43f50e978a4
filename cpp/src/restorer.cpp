#include "deploytool/restorer.hpp"

#include "deploytool/errors.hpp"
#include "deploytool/tiler.hpp"

namespace deploytool {
namespace {

std::string joined_paths(const std::vector<const Image*>& views, const std::string& separator) {
  std::string joined;
  for (const Image* image : views) joined += (joined.empty() ? "" : separator) + image->path;
  return joined;
}

std::string view_names(const Manifest& manifest) {
  std::string names;
  for (const View& view : manifest.views) names += (names.empty() ? "" : ", ") + view.name;
  return names;
}

// Refuses images that are not one of each of the manifest's views, all of one size.
void check_views(const Manifest& manifest, const std::vector<const Image*>& views) {
  const std::string& model_id = manifest.model_id;
  if (views.empty()) throw ImageError(model_id + " needs an image");
  if (manifest.views.size() == 1 && views.size() != 1) {
    throw ImageError(model_id + " takes one image, not " + std::to_string(views.size()));
  }
  if (views.size() != manifest.views.size()) {
    throw ImageError(model_id + " takes " + std::to_string(manifest.views.size()) + " views of one scene (" + view_names(manifest) + "); " +
                     joined_paths(views, " + ") + " is not such a group");
  }
  for (const Image* image : views) {
    if (image->pixels.height != views.front()->pixels.height || image->pixels.width != views.front()->pixels.width) {
      throw ImageError(joined_paths(views, " and ") + " differ in size: the views must match");
    }
  }
}

// The views fitted to their channels in the manifest and stacked on channels in its order.
Pixels stacked_views(const Manifest& manifest, const std::vector<const Image*>& views) {
  const Pixels& first = views.front()->pixels;
  Pixels stacked(first.height, first.width, manifest.channels());
  int offset = 0;
  for (std::size_t v = 0; v < views.size(); ++v) {
    Pixels fitted = fit_channels(views[v]->pixels, manifest.views[v].channels, manifest.model_id, views[v]->path);
    const std::size_t count = std::size_t(first.height) * first.width;
    for (std::size_t i = 0; i < count; ++i) {
      for (int c = 0; c < fitted.channels; ++c) stacked.values[i * stacked.channels + offset + c] = fitted.values[i * fitted.channels + c];
    }
    offset += fitted.channels;
  }
  return stacked;
}

TileOptions tile_options(const Manifest& manifest, int overlap) {
  const Tiling& grid = manifest.tiling;
  TileOptions options;
  options.tile_h = grid.tile_h;
  options.tile_w = grid.tile_w;
  options.scale = manifest.scale;
  options.batch = grid.batch;
  options.overlap = aligned_overlap(overlap, grid.tile_multiple, grid.tile_h, grid.tile_w);
  options.trim = grid.blend.mode == BlendMode::centre ? grid.blend.trim : 0;
  return options;
}

}  // namespace

Restorer::Restorer(Export exported, std::unique_ptr<Backend> backend, std::optional<int> overlap)
    : exported_(std::move(exported)), backend_(std::move(backend)), overlap_(overlap.value_or(exported_.manifest().tiling.overlap)) {
  if (!backend_) throw Error("Restorer needs a backend");
  if (overlap_ < 0) throw Error("overlap must be >= 0, got " + std::to_string(overlap_));
  const Manifest& manifest = exported_.manifest();
  const auto& in = manifest.input_shape;
  const auto& out = manifest.output_shape;
  const BatchShape want_in{in[0], in[1], in[2], in[3]}, want_out{out[0], out[1], out[2], out[3]};
  if (!(backend_->input_shape() == want_in) || !(backend_->output_shape() == want_out)) {
    throw Error(backend_->name() + " runs " + backend_->input_shape().str() + " -> " + backend_->output_shape().str() + ", but " +
                manifest.model_id + "'s graph is " + want_in.str() + " -> " + want_out.str());
  }
}

int Restorer::tiles_for(int height, int width) const {
  const Tiling& grid = exported_.manifest().tiling;
  return count_tiles(round_up(height, grid.tile_multiple), round_up(width, grid.tile_multiple), grid.tile_h, grid.tile_w,
                     aligned_overlap(overlap_, grid.tile_multiple, grid.tile_h, grid.tile_w));
}

Image Restorer::restore(const Image& image) {
  const Manifest& manifest = exported_.manifest();
  if (manifest.views.size() != 1) {
    throw ImageError(manifest.model_id + " takes " + std::to_string(manifest.views.size()) + " views of one scene (" + view_names(manifest) + "); " +
                     image.path + " is not such a group");
  }
  return restore_views({&image});
}

Image Restorer::restore(const std::vector<Image>& views) {
  std::vector<const Image*> pointers;
  for (const Image& image : views) pointers.push_back(&image);
  return restore_views(pointers);
}

Image Restorer::restore_views(const std::vector<const Image*>& views) {
  const Manifest& manifest = exported_.manifest();
  check_views(manifest, views);
  const Image& first = *views.front();
  const int height = first.pixels.height, width = first.pixels.width;
  // The model's input: the image itself when it already has the model's channels (no copy of a
  // large image), else the views fitted and stacked on channels in the manifest's order.
  Pixels stacked;
  const Pixels* input = &first.pixels;
  if (views.size() != 1 || first.pixels.channels != manifest.channels()) {
    stacked = stacked_views(manifest, views);
    input = &stacked;
  }
  const Tiling& grid = manifest.tiling;
  Pixels padded;
  if (round_up(height, grid.tile_multiple) != height || round_up(width, grid.tile_multiple) != width) {
    padded = window_aligned(*input, grid.tile_multiple);
    input = &padded;
  }
  Pixels restored = run_tiled(*input, *backend_, tile_options(manifest, overlap_), height * manifest.scale, width * manifest.scale, on_tiles);
  stacked = Pixels();
  padded = Pixels();

  Image result;
  result.path = first.path;
  result.bit_depth = first.bit_depth;
  result.pixels = restored.channels == first.pixels.channels ? std::move(restored) : restore_channels(restored, first.pixels.channels);
  if (first.has_alpha()) result.alpha = resize_alpha(first.alpha, manifest.scale);
  return result;
}

}  // namespace deploytool
