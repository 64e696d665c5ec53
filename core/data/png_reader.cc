#include "core/data/png_reader.h"

#include <png.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace reptile {
namespace {

// One input sample contributing to an output sample, with the length of their
// overlap in units where an input sample is out_size long and an output sample
// in_size long (so all weights are integers and sum to in_size).
struct Tap {
  int index;
  int64_t weight;
};

std::vector<std::vector<Tap>> AreaTaps(int in_size, int out_size) {
  std::vector<std::vector<Tap>> taps(out_size);
  for (int o = 0; o < out_size; ++o) {
    const int64_t lo = int64_t{o} * in_size, hi = lo + in_size;
    for (int i = static_cast<int>(lo / out_size); int64_t{i} * out_size < hi; ++i) {
      const int64_t weight = std::min(hi, int64_t{i + 1} * out_size) - std::max(lo, int64_t{i} * out_size);
      if (weight > 0) taps[o].push_back({i, weight});
    }
  }
  return taps;
}

}  // namespace

absl::StatusOr<DecodedImage> DecodePng(const uint8_t* data, size_t size, int channels, const std::string& what) {
  if (channels != 1 && channels != 3)
    return absl::InvalidArgumentError(absl::StrCat(what, ": cannot decode to ", channels, " channels (only 1 or 3)"));
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, data, size))
    return absl::InvalidArgumentError(absl::StrCat(what, " is not a readable PNG: ", image.message));
  if (image.width == 0 || image.height == 0) {
    png_image_free(&image);
    return absl::InvalidArgumentError(absl::StrCat(what, ": PNG is ", image.width, "x", image.height, ", empty"));
  }
  if (image.width > kMaxImageSide || image.height > kMaxImageSide || uint64_t{image.width} * image.height > kMaxImagePixels) {
    png_image_free(&image);
    return absl::InvalidArgumentError(absl::StrCat(what, ": PNG is ", image.width, "x", image.height,
                                                   " pixels; the limit is ", kMaxImageSide, " pixels a side and ",
                                                   kMaxImagePixels / 1'000'000, " megapixels"));
  }
  // Untagged 16-bit samples are sRGB like 8-bit ones (set after begin_read,
  // which clears the flags).
  image.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
  // Alpha, if present, is read unpremultiplied and then dropped, so colours
  // stay as stored rather than composited onto some background.
  const int alpha = (image.format & PNG_FORMAT_FLAG_ALPHA) != 0 ? 1 : 0;
  image.format = (channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB) | (alpha ? PNG_FORMAT_FLAG_ALPHA : 0);
  std::vector<uint8_t> interleaved(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, /*background=*/nullptr, interleaved.data(), /*row_stride=*/0,
                             /*colormap=*/nullptr))
    return absl::InvalidArgumentError(absl::StrCat(what, " is a corrupt PNG: ", image.message));
  DecodedImage out;
  out.channels = channels;
  out.height = static_cast<int>(image.height);
  out.width = static_cast<int>(image.width);
  const int64_t plane = int64_t{out.height} * out.width;
  const int stride = channels + alpha;
  out.pixels.resize(plane * channels);
  for (int c = 0; c < channels; ++c)
    for (int64_t i = 0; i < plane; ++i) out.pixels[c * plane + i] = interleaved[i * stride + c];
  return out;
}

absl::StatusOr<DecodedImage> ReadPngFile(const std::string& path, int channels) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open image ", path));
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat("cannot read image ", path));
  return DecodePng(bytes.data(), bytes.size(), channels, path);
}

// Separable and in integers: rows first (sums of at most 255 * in.width), then
// columns, then one rounded division by the total weight in.height * in.width.
DecodedImage ResizeArea(const DecodedImage& in, int height, int width) {
  DecodedImage out;
  out.channels = in.channels;
  out.height = height;
  out.width = width;
  out.pixels.resize(int64_t{in.channels} * height * width);
  const std::vector<std::vector<Tap>> row_taps = AreaTaps(in.height, height), col_taps = AreaTaps(in.width, width);
  const int64_t total = int64_t{in.height} * in.width;
  std::vector<int64_t> narrowed(int64_t{in.height} * width);  // in.height rows of `width` sums
  for (int c = 0; c < in.channels; ++c) {
    const uint8_t* src = in.pixels.data() + int64_t{c} * in.height * in.width;
    uint8_t* dst = out.pixels.data() + int64_t{c} * height * width;
    for (int y = 0; y < in.height; ++y) {
      const uint8_t* row = src + int64_t{y} * in.width;
      for (int x = 0; x < width; ++x) {
        int64_t sum = 0;
        for (const Tap& tap : col_taps[x]) sum += tap.weight * row[tap.index];
        narrowed[int64_t{y} * width + x] = sum;
      }
    }
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        int64_t sum = 0;
        for (const Tap& tap : row_taps[y]) sum += tap.weight * narrowed[int64_t{tap.index} * width + x];
        dst[int64_t{y} * width + x] = static_cast<uint8_t>((sum + total / 2) / total);
      }
    }
  }
  return out;
}

}  // namespace reptile
