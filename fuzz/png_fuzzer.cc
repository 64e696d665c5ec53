// Fuzzes image decoding as the loaders and `reptile adapt` use it: the input
// is a PNG file, decoded to grey and to RGB, then resized by area averaging
// to Fashion-MNIST's 28x28 and to a size that depends on the input.
#include <cstddef>
#include <cstdint>
#include <utility>

#include "core/data/png_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (int channels : {1, 3}) {
    absl::StatusOr<reptile::DecodedImage> image = reptile::DecodePng(data, size, channels, "fuzz.png");
    if (!image.ok()) continue;
    if (image->pixels.size() != static_cast<size_t>(channels) * image->height * image->width) __builtin_trap();
    const int height = 1 + static_cast<int>(size % 97), width = 1 + static_cast<int>(size / 97 % 97);
    for (const auto& [h, w] : {std::pair{28, 28}, std::pair{height, width}}) {
      const reptile::DecodedImage resized = reptile::ResizeArea(*image, h, w);
      if (resized.pixels.size() != static_cast<size_t>(channels) * h * w) __builtin_trap();
    }
  }
  return 0;
}
