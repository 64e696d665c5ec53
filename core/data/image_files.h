// Image files as the loaders read them: PNG (core/data/png_reader.h) or JPEG
// (libjpeg-turbo), told apart by their first bytes, decoded to 8-bit grey or
// RGB with the same size limits; and JPEG files written, for generated
// datasets. Stateless; thread-safe.
#ifndef REPTILE_CORE_DATA_IMAGE_FILES_H_
#define REPTILE_CORE_DATA_IMAGE_FILES_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "core/data/png_reader.h"

namespace reptile {

// Decodes a baseline or progressive JPEG, grey or colour, to `channels`
// (1: luminance, 3: RGB). InvalidArgument naming `what` if it is corrupt,
// CMYK, or larger than PNG's limits.
absl::StatusOr<DecodedImage> DecodeJpeg(const uint8_t* data, size_t size, int channels, const std::string& what);

// The channels an image file holds (1: grey, 3: colour; grey+alpha counts
// as grey, palettes and RGBA as colour), read from its header.
absl::StatusOr<int> ImageFileChannels(const std::string& path);

// Reads and decodes a PNG or JPEG file to `channels`. NotFound if it cannot
// be opened; InvalidArgument naming the path if it is neither format or is
// corrupt.
absl::StatusOr<DecodedImage> ReadImageFile(const std::string& path, int channels);

// Writes `image` (1 or 3 channels) as a baseline JPEG of `quality` (1-100).
// Internal naming the path if it cannot be written.
absl::Status WriteJpegFile(const std::string& path, const DecodedImage& image, int quality);

}  // namespace reptile

#endif  // REPTILE_CORE_DATA_IMAGE_FILES_H_
