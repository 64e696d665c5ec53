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
constexpr size_t kImageBytes = kSide * kSide;
constexpr uint32_t kImagesMagic = 0x00000803;  // unsigned bytes, 3 dimensions
constexpr uint32_t kLabelsMagic = 0x00000801;  // unsigned bytes, 1 dimension

struct IdxFile {
  std::string path;
  std::vector<uint8_t> data;  // the items, header removed
};

// Reads `dir`/`stem`.gz, or else `dir`/`stem` (gzread reads plain files too),
// and checks the header: magic number, 28x28 items for images, and a size that
// matches the item count.
absl::StatusOr<IdxFile> ReadIdx(const std::string& dir, const std::string& stem, uint32_t magic) {
  IdxFile idx{absl::StrCat(dir, "/", stem, ".gz"), {}};
  std::error_code error;
  if (!std::filesystem::exists(idx.path, error)) idx.path = absl::StrCat(dir, "/", stem);
  gzFile file = gzopen(idx.path.c_str(), "rb");
  if (file == nullptr)
    return absl::NotFoundError(
        absl::StrCat("missing Fashion-MNIST file ", dir, "/", stem, "[.gz] (Debian package dataset-fashion-mnist)"));
  std::vector<uint8_t>& bytes = idx.data;
  std::array<uint8_t, 1 << 16> chunk;
  int n;
  while ((n = gzread(file, chunk.data(), chunk.size())) > 0)
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + n);
  gzclose(file);
  if (n < 0) return absl::DataLossError(absl::StrCat(idx.path, " is corrupt or truncated (decompression failed)"));

  auto be32 = [&bytes](size_t at) {
    return uint32_t{bytes[at]} << 24 | uint32_t{bytes[at + 1]} << 16 | uint32_t{bytes[at + 2]} << 8 | bytes[at + 3];
  };
  const int dims = magic & 0xff;
  const size_t header = 4 + 4 * dims;
  if (bytes.size() < header || be32(0) != magic)
    return absl::DataLossError(absl::StrCat(idx.path, " is not an IDX file with magic number ", magic));
  if (dims == 3 && (be32(8) != kSide || be32(12) != kSide))
    return absl::DataLossError(absl::StrCat(idx.path, " holds ", be32(8), "x", be32(12), " images, not 28x28"));
  const size_t expected = header + size_t{be32(4)} * (dims == 3 ? kImageBytes : 1);
  if (bytes.size() != expected)
    return absl::DataLossError(absl::StrCat(idx.path, " is truncated or has trailing bytes: ", bytes.size(),
                                            " bytes, header says ", expected));
  bytes.erase(bytes.begin(), bytes.begin() + header);
  return idx;
}

}  // namespace

absl::StatusOr<ImageDataset> LoadFashionMnist(const std::string& dir) {
  std::vector<std::vector<uint8_t>> by_class(kClasses);
  for (const char* split : {"train", "t10k"}) {
    ASSIGN_OR_RETURN(const IdxFile images, ReadIdx(dir, absl::StrCat(split, "-images-idx3-ubyte"), kImagesMagic));
    ASSIGN_OR_RETURN(const IdxFile labels, ReadIdx(dir, absl::StrCat(split, "-labels-idx1-ubyte"), kLabelsMagic));
    if (images.data.size() != labels.data.size() * kImageBytes)
      return absl::DataLossError(absl::StrCat(images.path, " and ", labels.path, " disagree on the number of items"));
    for (size_t i = 0; i < labels.data.size(); ++i) {
      const int label = labels.data[i];
      if (label >= kClasses) return absl::DataLossError(absl::StrCat(labels.path, ": label ", label, " at item ", i));
      const auto image = images.data.begin() + i * kImageBytes;
      by_class[label].insert(by_class[label].end(), image, image + kImageBytes);
    }
  }
  static const char* kNames[kClasses] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                         "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  ImageDataset dataset(1, kSide, kSide);
  for (int c = 0; c < kClasses; ++c) {
    const int count = static_cast<int>(by_class[c].size() / kImageBytes);
    RETURN_IF_ERROR(dataset.AddClass(kNames[c], count, std::move(by_class[c])));
  }
  return dataset;
}

}  // namespace reptile
