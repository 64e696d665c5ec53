#include "core/data/png_reader.h"

#include <png.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace reptile {

absl::StatusOr<DecodedImage> DecodePng(const uint8_t* data, size_t size, int channels, const std::string& what) {
  if (channels != 1 && channels != 3) return absl::InvalidArgumentError("PNG decoding supports 1 or 3 channels");
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, data, size))
    return absl::InvalidArgumentError(absl::StrCat(what, " is not a readable PNG: ", image.message));
  image.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  constexpr uint32_t kMaxSide = 1 << 14;
  if (image.width == 0 || image.height == 0 || image.width > kMaxSide || image.height > kMaxSide) {
    png_image_free(&image);
    return absl::InvalidArgumentError(absl::StrCat(what, ": PNG size ", image.width, "x", image.height, " not supported"));
  }
  std::vector<uint8_t> interleaved(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, /*background=*/nullptr, interleaved.data(), 0, nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is a corrupt PNG: ", image.message));
  }
  DecodedImage out;
  out.channels = channels;
  out.height = static_cast<int>(image.height);
  out.width = static_cast<int>(image.width);
  const int64_t plane = int64_t{out.height} * out.width;
  out.pixels.resize(plane * channels);
  for (int64_t i = 0; i < plane; ++i)
    for (int c = 0; c < channels; ++c) out.pixels[c * plane + i] = interleaved[i * channels + c];
  return out;
}

absl::StatusOr<DecodedImage> ReadPngFile(const std::string& path, int channels) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read image ", path));
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return DecodePng(bytes.data(), bytes.size(), channels, path);
}

DecodedImage ResizeArea(const DecodedImage& in, int height, int width) {
  DecodedImage out;
  out.channels = in.channels;
  out.height = height;
  out.width = width;
  out.pixels.resize(int64_t{in.channels} * height * width);
  // Weights of input columns (rows) for each output column (row): the length
  // of their overlap with the output pixel's footprint.
  auto overlaps = [](int in_size, int out_size) {
    std::vector<std::vector<std::pair<int, double>>> table(out_size);
    const double scale = static_cast<double>(in_size) / out_size;
    for (int o = 0; o < out_size; ++o) {
      const double lo = o * scale, hi = (o + 1) * scale;
      for (int i = static_cast<int>(lo); i < in_size && i < hi; ++i) {
        const double w = std::min<double>(hi, i + 1) - std::max<double>(lo, i);
        if (w > 1e-12) table[o].push_back({i, w / scale});
      }
    }
    return table;
  };
  const auto rows = overlaps(in.height, height), cols = overlaps(in.width, width);
  for (int c = 0; c < in.channels; ++c) {
    const uint8_t* src = in.pixels.data() + int64_t{c} * in.height * in.width;
    uint8_t* dst = out.pixels.data() + int64_t{c} * height * width;
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        double sum = 0;
        for (const auto& [sy, wy] : rows[y])
          for (const auto& [sx, wx] : cols[x]) sum += wy * wx * src[sy * in.width + sx];
        dst[y * width + x] = static_cast<uint8_t>(std::clamp(sum + 0.5, 0.0, 255.0));
      }
    }
  }
  return out;
}

}  // namespace reptile
