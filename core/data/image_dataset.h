// Labelled images held as uint8, grouped by class: in this process's memory,
// or in a file mapped read-only, which every process that maps it shares
// (WriteFile, MapFile). Read-only after loading, so any number of threads
// may share one instance without locks.
#ifndef REPTILE_CORE_DATA_IMAGE_DATASET_H_
#define REPTILE_CORE_DATA_IMAGE_DATASET_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace reptile {

class ImageDataset {
 public:
  ImageDataset(int channels, int height, int width);

  // Adds a class whose `pixels` hold `count` images of channels*height*width
  // bytes each (planar: channel, row, column). Fails if the size disagrees.
  absl::Status AddClass(std::string name, int count, std::vector<uint8_t> pixels);

  int channels() const { return channels_; }
  int height() const { return height_; }
  int width() const { return width_; }
  int64_t image_bytes() const { return int64_t{channels_} * height_ * width_; }
  int num_classes() const { return static_cast<int>(classes_.size()); }
  int num_examples(int cls) const { return classes_[cls].count; }
  const std::string& class_name(int cls) const { return classes_[cls].name; }

  // Writes example `index` of class `cls`, rotated counter-clockwise by
  // quarter_turns * 90 degrees (square images only when quarter_turns != 0),
  // as channels*height*width floats in [0, 1] to `out`.
  void CopyExample(int cls, int index, int quarter_turns, float* out) const;

  // Bytes held by all images.
  int64_t memory_bytes() const;
  // True if the images lie in a mapped file, shared with other processes.
  bool mapped() const { return mapped_; }

  // Writes the dataset to `path` in the form MapFile reads, whole or not at
  // all (a temporary file of this process, renamed into place).
  absl::Status WriteFile(const std::string& path) const;
  // Maps a file WriteFile wrote, read-only. InvalidArgument naming the file
  // if it is not one, or its sizes do not add up.
  static absl::StatusOr<ImageDataset> MapFile(const std::string& path);

 private:
  struct ClassImages {
    std::string name;
    int count;
    const uint8_t* pixels;               // count * image_bytes(), in storage
    std::shared_ptr<const void> storage;  // a vector, or the mapping
  };
  bool mapped_ = false;
  int channels_, height_, width_;
  std::vector<ClassImages> classes_;
};

}  // namespace reptile

#endif  // REPTILE_CORE_DATA_IMAGE_DATASET_H_
