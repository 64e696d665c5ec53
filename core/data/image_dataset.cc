#include "core/data/image_dataset.h"

#include "absl/strings/str_cat.h"

namespace reptile {

ImageDataset::ImageDataset(int channels, int height, int width) : channels_(channels), height_(height), width_(width) {}

absl::Status ImageDataset::AddClass(std::string name, int count, std::vector<uint8_t> pixels) {
  if (count < 0 || static_cast<int64_t>(pixels.size()) != count * image_bytes())
    return absl::InvalidArgumentError(absl::StrCat("class ", name, ": ", pixels.size(), " bytes for ", count,
                                                   " images of ", image_bytes(), " bytes"));
  classes_.push_back({std::move(name), count, std::move(pixels)});
  return absl::OkStatus();
}

void ImageDataset::CopyExample(int cls, int index, int quarter_turns, float* out) const {
  const uint8_t* image = classes_[cls].pixels.data() + index * image_bytes();
  const int h = height_, w = width_;
  quarter_turns = ((quarter_turns % 4) + 4) % 4;
  for (int c = 0; c < channels_; ++c) {
    const uint8_t* plane = image + int64_t{c} * h * w;
    float* target = out + int64_t{c} * h * w;
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) {
        // The source pixel that a counter-clockwise turn moves to (y, x).
        int sy = y, sx = x;
        switch (quarter_turns) {
          case 1: sy = x; sx = w - 1 - y; break;
          case 2: sy = h - 1 - y; sx = w - 1 - x; break;
          case 3: sy = h - 1 - x; sx = y; break;
          default: break;
        }
        target[y * w + x] = plane[sy * w + sx] * (1.0f / 255.0f);
      }
    }
  }
}

int64_t ImageDataset::memory_bytes() const {
  int64_t total = 0;
  for (const ClassImages& c : classes_) total += static_cast<int64_t>(c.pixels.size());
  return total;
}

}  // namespace reptile
