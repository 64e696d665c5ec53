// Fashion-MNIST from IDX files (Xiao et al. 2017), plain or gzip-compressed.
#include <zlib.h>

#include <array>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/data/loaders.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

constexpr int kClasses = 10;
constexpr int kSide = 28;

// Reads a whole IDX file (gzopen reads plain files too) and checks its header.
absl::StatusOr<std::vector<uint8_t>> ReadIdx(const std::string& dir, const std::string& stem, uint32_t magic,
                                             int dims, std::string* path_out) {
  std::string path = absl::StrCat(dir, "/", stem, ".gz");
  if (!std::filesystem::exists(path)) path = absl::StrCat(dir, "/", stem);
  *path_out = path;
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr)
    return absl::NotFoundError(absl::StrCat("missing Fashion-MNIST file ", dir, "/", stem,
                                            "[.gz] (Debian package dataset-fashion-mnist)"));
  std::vector<uint8_t> bytes;
  std::array<uint8_t, 1 << 16> chunk;
  int n;
  while ((n = gzread(file, chunk.data(), chunk.size())) > 0) bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + n);
  const bool read_error = n < 0;
  gzclose(file);
  if (read_error) return absl::DataLossError(absl::StrCat(path, " is corrupt (decompression failed)"));
  auto be32 = [&bytes](size_t at) {
    return uint32_t{bytes[at]} << 24 | uint32_t{bytes[at + 1]} << 16 | uint32_t{bytes[at + 2]} << 8 | bytes[at + 3];
  };
  const size_t header = 4 + 4 * dims;
  if (bytes.size() < header || be32(0) != magic)
    return absl::DataLossError(absl::StrCat(path, " is not an IDX file of the expected kind"));
  size_t expected = header;
  size_t count = 1;
  for (int d = 0; d < dims; ++d) count *= be32(4 + 4 * d);
  expected += count;
  if (bytes.size() != expected)
    return absl::DataLossError(absl::StrCat(path, " is truncated or has trailing bytes: ", bytes.size(),
                                            " bytes, header says ", expected));
  if (dims == 3 && (be32(8) != kSide || be32(12) != kSide))
    return absl::DataLossError(absl::StrCat(path, " holds images that are not 28x28"));
  bytes.erase(bytes.begin(), bytes.begin() + header);
  return bytes;
}

}  // namespace

absl::StatusOr<ImageDataset> LoadFashionMnist(const std::string& dir) {
  std::vector<std::vector<uint8_t>> by_class(kClasses);
  for (const char* split : {"train", "t10k"}) {
    std::string images_path, labels_path;
    ASSIGN_OR_RETURN(std::vector<uint8_t> images,
                     ReadIdx(dir, absl::StrCat(split, "-images-idx3-ubyte"), 0x00000803, 3, &images_path));
    ASSIGN_OR_RETURN(std::vector<uint8_t> labels,
                     ReadIdx(dir, absl::StrCat(split, "-labels-idx1-ubyte"), 0x00000801, 1, &labels_path));
    constexpr size_t kImageBytes = kSide * kSide;
    if (images.size() != labels.size() * kImageBytes)
      return absl::DataLossError(absl::StrCat(images_path, " and ", labels_path, " disagree on the number of items"));
    for (size_t i = 0; i < labels.size(); ++i) {
      if (labels[i] >= kClasses)
        return absl::DataLossError(absl::StrCat(labels_path, ": label ", int{labels[i]}, " at item ", i));
      by_class[labels[i]].insert(by_class[labels[i]].end(), images.begin() + i * kImageBytes,
                                 images.begin() + (i + 1) * kImageBytes);
    }
  }
  static const char* kNames[kClasses] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                         "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  ImageDataset dataset(1, kSide, kSide);
  for (int c = 0; c < kClasses; ++c) {
    const int count = static_cast<int>(by_class[c].size() / (kSide * kSide));
    RETURN_IF_ERROR(dataset.AddClass(kNames[c], count, std::move(by_class[c])));
  }
  return dataset;
}

}  // namespace reptile
