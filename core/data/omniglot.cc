// Omniglot from the official zips (Lake et al. 2015).
#include <zip.h>

#include <cstdio>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/data/loaders.h"
#include "core/data/png_reader.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

constexpr int kCharacters = 1623;
constexpr int kDrawers = 20;
constexpr const char* kZips[] = {"images_background.zip", "images_evaluation.zip"};

struct Character {
  std::string name;                        // <Alphabet>/characterNN
  std::vector<std::vector<uint8_t>> drawers;  // indexed by drawer - 1
};

// Parses "<root>/<Alphabet>/characterNN/IIII_SS.png" into the id and drawer.
bool ParseEntry(const std::string& entry, std::string* name, int* id, int* drawer) {
  const std::vector<std::string> parts = absl::StrSplit(entry, '/');
  if (parts.size() != 4 || parts[3].size() != 11 || parts[3].substr(4, 1) != "_" ||
      parts[3].substr(7) != ".png")
    return false;
  *name = absl::StrCat(parts[1], "/", parts[2]);
  return absl::SimpleAtoi(parts[3].substr(0, 4), id) && absl::SimpleAtoi(parts[3].substr(5, 2), drawer);
}

absl::Status ReadZip(const std::string& path, int image_size, std::map<int, Character>* characters) {
  int error = 0;
  zip_t* archive = zip_open(path.c_str(), ZIP_RDONLY, &error);
  if (archive == nullptr) {
    zip_error_t description;
    zip_error_init_with_code(&description, error);
    absl::Status status = (error == ZIP_ER_NOENT ? absl::NotFoundError("missing Omniglot file ")
                                                 : absl::DataLossError("cannot open Omniglot zip "));
    status = absl::Status(status.code(), absl::StrCat(status.message(), path, ": ", zip_error_strerror(&description),
                                                      " (see README, Data)"));
    zip_error_fini(&description);
    return status;
  }
  const zip_int64_t entries = zip_get_num_entries(archive, 0);
  std::vector<uint8_t> buffer;
  absl::Status status;
  for (zip_int64_t i = 0; i < entries && status.ok(); ++i) {
    zip_stat_t stat;
    if (zip_stat_index(archive, i, 0, &stat) != 0) {
      status = absl::DataLossError(absl::StrCat(path, ": unreadable entry ", i));
      break;
    }
    const std::string entry = stat.name;
    if (entry.empty() || entry.back() == '/') continue;  // folders
    std::string name;
    int id = 0, drawer = 0;
    if (!ParseEntry(entry, &name, &id, &drawer) || id < 1 || id > kCharacters || drawer < 1 || drawer > kDrawers) {
      status = absl::DataLossError(absl::StrCat(path, ": unexpected entry ", entry,
                                                " (want <root>/<Alphabet>/characterNN/IIII_SS.png)"));
      break;
    }
    buffer.resize(stat.size);
    zip_file_t* file = zip_fopen_index(archive, i, 0);
    const bool read_ok = file != nullptr && zip_fread(file, buffer.data(), stat.size) == static_cast<zip_int64_t>(stat.size);
    if (file != nullptr) zip_fclose(file);
    if (!read_ok) {
      status = absl::DataLossError(absl::StrCat(path, ": cannot read entry ", entry));
      break;
    }
    absl::StatusOr<DecodedImage> image = DecodePng(buffer.data(), buffer.size(), 1, absl::StrCat(path, ":", entry));
    if (!image.ok()) {
      status = absl::DataLossError(image.status().message());
      break;
    }
    DecodedImage small = ResizeArea(*image, image_size, image_size);
    for (uint8_t& p : small.pixels) p = 255 - p;  // ink bright, background 0
    Character& character = (*characters)[id];
    character.name = name;
    character.drawers.resize(kDrawers);
    character.drawers[drawer - 1] = std::move(small.pixels);
  }
  zip_discard(archive);
  return status;
}

}  // namespace

absl::StatusOr<ImageDataset> LoadOmniglot(const std::string& dir, int image_size) {
  std::map<int, Character> characters;
  for (const char* zip : kZips) RETURN_IF_ERROR(ReadZip(absl::StrCat(dir, "/", zip), image_size, &characters));
  if (static_cast<int>(characters.size()) != kCharacters)
    return absl::DataLossError(absl::StrCat("Omniglot in ", dir, " has ", characters.size(), " characters, not ",
                                            kCharacters));
  ImageDataset dataset(1, image_size, image_size);
  for (auto& [id, character] : characters) {
    std::vector<uint8_t> pixels;
    pixels.reserve(int64_t{kDrawers} * image_size * image_size);
    for (int d = 0; d < kDrawers; ++d) {
      if (character.drawers[d].empty())
        return absl::DataLossError(absl::StrCat("Omniglot in ", dir, ": character ", id, " (", character.name,
                                                ") lacks drawer ", d + 1));
      pixels.insert(pixels.end(), character.drawers[d].begin(), character.drawers[d].end());
    }
    RETURN_IF_ERROR(dataset.AddClass(character.name, kDrawers, std::move(pixels)));
  }
  return dataset;
}

}  // namespace reptile
