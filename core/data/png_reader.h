// Decodes PNG images (from memory or a file) with libpng and resizes them by
// area averaging, the resampling every loader of this project uses.
#ifndef REPTILE_CORE_DATA_PNG_READER_H_
#define REPTILE_CORE_DATA_PNG_READER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace reptile {

// The largest image decoded (PNG here, JPEG in image_files.cc), checked against
// the header before any pixel buffer is allocated, so a small file cannot
// demand a huge one. Photos from phones and cameras (12-24 Mpx, up to
// 6000x4000) fit; the datasets' images are far smaller. At the limit decoding
// takes about 175 MB (RGBA rows and the planar copy).
inline constexpr uint32_t kMaxImageSide = 8192;
inline constexpr uint64_t kMaxImagePixels = 25'000'000;

struct DecodedImage {
  int channels = 0;  // 1 (grey) or 3 (RGB)
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;  // planar: channel, row, column
};

// Decodes any PNG (palette, grey, RGB, alpha, 1..16 bit) to 8-bit `channels`
// (1: luminance, 3: RGB; alpha is dropped). `what` names the source in errors.
// Images larger than 8192 pixels a side or 25 megapixels are refused
// (InvalidArgument) before their pixels are allocated.
absl::StatusOr<DecodedImage> DecodePng(const uint8_t* data, size_t size,
                                       int channels, const std::string& what);
absl::StatusOr<DecodedImage> ReadPngFile(const std::string& path, int channels);

// Area-averaging resize (each output pixel is the mean of the input area it
// covers, with fractional overlaps weighted exactly).
DecodedImage ResizeArea(const DecodedImage& in, int height, int width);

}  // namespace reptile

#endif  // REPTILE_CORE_DATA_PNG_READER_H_
