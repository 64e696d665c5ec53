// Fuzzes JPEG decoding as IMAGE_FOLDER and `reptile adapt` use it: the input
// is a JPEG file, decoded to grey and to RGB (libjpeg-turbo's errors jump
// back out of the decoder; nothing may leak or crash), then resized to 28x28.
//
// With REPTILE_FUZZ_WRITE_SEEDS=<folder> in the environment the binary
// instead writes seed inputs there (a grey and a colour JPEG made by
// WriteJpegFile) and exits (fuzz/make_corpus.sh).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/data/image_files.h"
#include "fuzz/seed_writer.h"

namespace {

void WriteSeeds(const std::string& folder) {
  for (int channels : {1, 3}) {
    reptile::DecodedImage image;
    image.channels = channels;
    image.height = 6;
    image.width = 9;
    for (int i = 0; i < channels * 6 * 9; ++i) image.pixels.push_back(static_cast<uint8_t>(i * 37));
    if (!reptile::WriteJpegFile(folder + (channels == 1 ? "/grey_9x6.jpg" : "/colour_9x6.jpg"), image, 75).ok()) abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  WriteSeedsIfAsked(WriteSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (int channels : {1, 3}) {
    absl::StatusOr<reptile::DecodedImage> image = reptile::DecodeJpeg(data, size, channels, "fuzz.jpg");
    if (!image.ok()) continue;
    if (image->pixels.size() != static_cast<size_t>(channels) * image->height * image->width) __builtin_trap();
    const reptile::DecodedImage resized = reptile::ResizeArea(*image, 28, 28);
    if (resized.pixels.size() != static_cast<size_t>(channels) * 28 * 28) __builtin_trap();
  }
  return 0;
}
