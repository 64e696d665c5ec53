// A folder of class folders of PNG or JPEG images (e.g. Mini-ImageNet, or a
// user's own few-shot task for `reptile adapt`).
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/data/loaders.h"
#include "core/data/image_files.h"
#include "core/fingerprint.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

namespace fs = std::filesystem;

bool IsImageFile(const fs::path& path) {
  std::string extension = path.extension().string();
  for (char& c : extension) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return extension == ".png" || extension == ".jpg" || extension == ".jpeg";
}

// The sub-folders (want_folders) or image files of `dir`, sorted by name.
absl::StatusOr<std::vector<fs::path>> SortedEntries(const fs::path& dir, bool want_folders) {
  std::error_code error;
  fs::directory_iterator it(dir, error);
  if (error) return absl::NotFoundError(absl::StrCat("cannot list image folder ", dir.string(), ": ", error.message()));
  std::vector<fs::path> paths;
  for (; it != fs::directory_iterator(); it.increment(error)) {
    std::error_code unreadable;  // an entry that cannot be inspected is no folder
    const bool is_folder = it->is_directory(unreadable);
    if (want_folders ? is_folder : (!is_folder && IsImageFile(it->path()))) paths.push_back(it->path());
  }
  if (error) return absl::DataLossError(absl::StrCat("cannot list image folder ", dir.string(), ": ", error.message()));
  std::sort(paths.begin(), paths.end());
  return paths;
}

// A folder's class folders and their image files, sorted, with the
// channels to decode to (0 resolved from the first image).
struct FolderListing {
  std::vector<fs::path> class_dirs;
  std::vector<std::vector<fs::path>> files;
  int channels = 0;
};

absl::StatusOr<FolderListing> ListFolder(const std::string& dir, int channels, int image_size) {
  if (image_size <= 0) return absl::InvalidArgumentError(absl::StrCat("image size ", image_size, " for ", dir));
  FolderListing listing;
  ASSIGN_OR_RETURN(listing.class_dirs, SortedEntries(dir, /*want_folders=*/true));
  if (listing.class_dirs.empty())
    return absl::NotFoundError(absl::StrCat("image folder ", dir, " has no class folders"));
  for (const fs::path& class_dir : listing.class_dirs) {
    ASSIGN_OR_RETURN(std::vector<fs::path> files, SortedEntries(class_dir, /*want_folders=*/false));
    if (files.empty())
      return absl::NotFoundError(absl::StrCat("class folder ", class_dir.string(), " has no .png or .jpg files"));
    listing.files.push_back(std::move(files));
  }
  listing.channels = channels;
  if (channels == 0) {
    ASSIGN_OR_RETURN(listing.channels, ImageFileChannels(listing.files[0][0].string()));
  }
  return listing;
}

// The classes of a split CSV in the Ravi & Larochelle format ("filename,label"
// header, then a line per image; the images in `images_dir`), sorted by
// label, each class's files in the order of the CSV.
absl::StatusOr<FolderListing> ListCsv(const std::string& csv, const std::string& images_dir, int channels) {
  std::ifstream in(csv);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read split file ", csv));
  std::map<std::string, std::vector<fs::path>> classes;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (number == 1) {
      if (line != "filename,label")
        return absl::InvalidArgumentError(absl::StrCat(csv, ":1: expected the header filename,label"));
      continue;
    }
    if (line.empty()) continue;
    const size_t comma = line.find(',');
    if (comma == std::string::npos || comma == 0 || comma + 1 == line.size() ||
        line.find('/') != std::string::npos || line.find("..") != std::string::npos)
      return absl::InvalidArgumentError(absl::StrCat(csv, ":", number, ": expected filename,label"));
    classes[line.substr(comma + 1)].push_back(fs::path(images_dir) / line.substr(0, comma));
  }
  if (classes.empty()) return absl::NotFoundError(absl::StrCat("split file ", csv, " names no images"));
  FolderListing listing;
  for (auto& [label, files] : classes) {
    listing.class_dirs.push_back(fs::path(label));
    listing.files.push_back(std::move(files));
  }
  listing.channels = channels;
  if (channels == 0) {
    ASSIGN_OR_RETURN(listing.channels, ImageFileChannels(listing.files[0][0].string()));
  }
  return listing;
}

absl::StatusOr<ImageDataset> Decode(const FolderListing& listing, int image_size) {
  ImageDataset dataset(listing.channels, image_size, image_size);
  for (size_t k = 0; k < listing.class_dirs.size(); ++k) {
    const std::vector<fs::path>& files = listing.files[k];
    std::vector<uint8_t> pixels;
    for (const fs::path& file : files) {
      ASSIGN_OR_RETURN(const DecodedImage image, ReadImageFile(file.string(), listing.channels));
      const DecodedImage resized = ResizeArea(image, image_size, image_size);
      pixels.insert(pixels.end(), resized.pixels.begin(), resized.pixels.end());
    }
    RETURN_IF_ERROR(dataset.AddClass(listing.class_dirs[k].filename().string(), static_cast<int>(files.size()),
                                     std::move(pixels)));
  }
  return dataset;
}

// $REPTILE_CACHE_DIR, else $XDG_CACHE_HOME/reptile, else ~/.cache/reptile;
// "" if none is set.
std::string CacheFolder() {
  if (const char* dir = std::getenv("REPTILE_CACHE_DIR"); dir != nullptr && *dir != '\0') return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0')
    return absl::StrCat(xdg, "/reptile");
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') return absl::StrCat(home, "/.cache/reptile");
  return "";
}

// What the decoded images depend on: the folder, every file's name, size and
// modification time, the channels and the size.
std::string CacheKey(const std::string& dir, const FolderListing& listing, int image_size) {
  std::error_code error;
  std::string text = absl::StrCat("reptile image folder v1\n", fs::absolute(dir, error).lexically_normal().string(),
                                  "\n", listing.channels, " ", image_size, "\n");
  for (const std::vector<fs::path>& files : listing.files) {
    for (const fs::path& file : files) {
      struct stat info {};
      stat(file.c_str(), &info);
      absl::StrAppend(&text, file.string(), "\t", info.st_size, "\t", info.st_mtim.tv_sec, ".", info.st_mtim.tv_nsec,
                      "\n");
    }
  }
  return ToHex(Sha256(text.data(), text.size()));
}

}  // namespace

absl::StatusOr<ImageDataset> LoadImageFolder(const std::string& dir, int channels, int image_size) {
  ASSIGN_OR_RETURN(const FolderListing listing, ListFolder(dir, channels, image_size));
  return Decode(listing, image_size);
}

namespace {

// Decoded through the machine's cache file (see LoadImageFolderShared).
absl::StatusOr<ImageDataset> LoadShared(const std::string& source, const FolderListing& listing, int image_size) {
  const std::string cache = CacheFolder();
  std::error_code error;
  if (cache.empty() || (fs::create_directories(cache, error), error)) return Decode(listing, image_size);
  const std::string path = absl::StrCat(cache, "/image-folder-", CacheKey(source, listing, image_size), ".bin");
  absl::StatusOr<ImageDataset> mapped = ImageDataset::MapFile(path);
  if (mapped.ok()) return mapped;
  ASSIGN_OR_RETURN(ImageDataset decoded, Decode(listing, image_size));
  if (!decoded.WriteFile(path).ok()) return decoded;  // a read-only cache: this process's own copy
  mapped = ImageDataset::MapFile(path);
  if (mapped.ok()) return mapped;
  return decoded;
}

}  // namespace

absl::StatusOr<ImageDataset> LoadImageFolderShared(const std::string& dir, int channels, int image_size) {
  ASSIGN_OR_RETURN(const FolderListing listing, ListFolder(dir, channels, image_size));
  return LoadShared(dir, listing, image_size);
}

absl::StatusOr<ImageDataset> LoadImageCsvShared(const std::string& csv, const std::string& images_dir, int channels,
                                                int image_size) {
  if (image_size <= 0) return absl::InvalidArgumentError(absl::StrCat("image size ", image_size, " for ", csv));
  ASSIGN_OR_RETURN(const FolderListing listing, ListCsv(csv, images_dir, channels));
  return LoadShared(csv, listing, image_size);
}

}  // namespace reptile
