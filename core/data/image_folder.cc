// A folder of class folders of PNG images (e.g. Mini-ImageNet, or a user's
// own few-shot task for `reptile adapt`).
#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/data/loaders.h"
#include "core/data/png_reader.h"
#include "core/status_macros.h"

namespace reptile {

absl::StatusOr<ImageDataset> LoadImageFolder(const std::string& dir, int channels, int image_size) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::is_directory(dir, error)) return absl::NotFoundError(absl::StrCat("image folder ", dir, " does not exist"));
  std::vector<fs::path> class_dirs;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_directory()) class_dirs.push_back(entry.path());
  std::sort(class_dirs.begin(), class_dirs.end());
  if (class_dirs.empty()) return absl::NotFoundError(absl::StrCat(dir, " has no class folders"));
  ImageDataset dataset(channels, image_size, image_size);
  for (const fs::path& class_dir : class_dirs) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(class_dir))
      if (entry.is_regular_file() && entry.path().extension() == ".png") files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    if (files.empty()) return absl::NotFoundError(absl::StrCat("class folder ", class_dir.string(), " has no .png files"));
    std::vector<uint8_t> pixels;
    for (const fs::path& file : files) {
      ASSIGN_OR_RETURN(DecodedImage image, ReadPngFile(file.string(), channels));
      DecodedImage resized = ResizeArea(image, image_size, image_size);
      pixels.insert(pixels.end(), resized.pixels.begin(), resized.pixels.end());
    }
    RETURN_IF_ERROR(dataset.AddClass(class_dir.filename().string(), static_cast<int>(files.size()), std::move(pixels)));
  }
  return dataset;
}

}  // namespace reptile
