// A folder of class folders of PNG images (e.g. Mini-ImageNet, or a user's
// own few-shot task for `reptile adapt`).
#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/data/loaders.h"
#include "core/data/png_reader.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

namespace fs = std::filesystem;

// The sub-folders (want_folders) or .png files of `dir`, sorted by name.
absl::StatusOr<std::vector<fs::path>> SortedEntries(const fs::path& dir, bool want_folders) {
  std::error_code error;
  fs::directory_iterator it(dir, error);
  if (error) return absl::NotFoundError(absl::StrCat("cannot list image folder ", dir.string(), ": ", error.message()));
  std::vector<fs::path> paths;
  for (; it != fs::directory_iterator(); it.increment(error)) {
    std::error_code unreadable;  // an entry that cannot be inspected is no folder
    const bool is_folder = it->is_directory(unreadable);
    if (want_folders ? is_folder : (!is_folder && it->path().extension() == ".png")) paths.push_back(it->path());
  }
  if (error) return absl::DataLossError(absl::StrCat("cannot list image folder ", dir.string(), ": ", error.message()));
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

absl::StatusOr<ImageDataset> LoadImageFolder(const std::string& dir, int channels, int image_size) {
  if (image_size <= 0) return absl::InvalidArgumentError(absl::StrCat("image size ", image_size, " for ", dir));
  ASSIGN_OR_RETURN(const std::vector<fs::path> class_dirs, SortedEntries(dir, /*want_folders=*/true));
  if (class_dirs.empty()) return absl::NotFoundError(absl::StrCat("image folder ", dir, " has no class folders"));
  ImageDataset dataset(channels, image_size, image_size);
  for (const fs::path& class_dir : class_dirs) {
    ASSIGN_OR_RETURN(const std::vector<fs::path> files, SortedEntries(class_dir, /*want_folders=*/false));
    if (files.empty())
      return absl::NotFoundError(absl::StrCat("class folder ", class_dir.string(), " has no .png files"));
    std::vector<uint8_t> pixels;
    for (const fs::path& file : files) {
      ASSIGN_OR_RETURN(const DecodedImage image, ReadPngFile(file.string(), channels));
      const DecodedImage resized = ResizeArea(image, image_size, image_size);
      pixels.insert(pixels.end(), resized.pixels.begin(), resized.pixels.end());
    }
    RETURN_IF_ERROR(dataset.AddClass(class_dir.filename().string(), static_cast<int>(files.size()), std::move(pixels)));
  }
  return dataset;
}

}  // namespace reptile
