// Omniglot from the official zips (Lake et al. 2015). Each zip is read in one
// pass; every PNG is decoded and area-resized, dark ink on a light page as in
// the files and in the reference implementation.
#include <zip.h>

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
  std::string name;                           // <Alphabet>/characterNN
  std::vector<std::vector<uint8_t>> drawers;  // indexed by drawer - 1
};

// Parses "<root>/<Alphabet>/characterNN/IIII_SS.png" into name, id and drawer.
bool ParseEntry(const std::string& entry, std::string* name, int* id, int* drawer) {
  const std::vector<std::string> parts = absl::StrSplit(entry, '/');
  if (parts.size() != 4 || parts[3].size() != 11 || parts[3][4] != '_' || parts[3].substr(7) != ".png") return false;
  *name = absl::StrCat(parts[1], "/", parts[2]);
  return absl::SimpleAtoi(parts[3].substr(0, 4), id) && absl::SimpleAtoi(parts[3].substr(5, 2), drawer) && *id >= 1 &&
         *id <= kCharacters && *drawer >= 1 && *drawer <= kDrawers;
}

absl::Status OpenError(const std::string& path, int code) {
  zip_error_t error;
  zip_error_init_with_code(&error, code);
  const std::string message = absl::StrCat(path, ": ", zip_error_strerror(&error));
  zip_error_fini(&error);
  if (code == ZIP_ER_NOENT) return absl::NotFoundError(absl::StrCat("missing Omniglot zip ", message));
  return absl::DataLossError(absl::StrCat("cannot open Omniglot zip ", message));
}

// Reads the entry `index` of `archive` into `bytes`.
bool ReadEntry(zip_t* archive, zip_int64_t index, zip_uint64_t size, std::vector<uint8_t>* bytes) {
  bytes->resize(size);
  zip_file_t* file = zip_fopen_index(archive, index, 0);
  if (file == nullptr) return false;
  const bool ok = zip_fread(file, bytes->data(), size) == static_cast<zip_int64_t>(size);
  zip_fclose(file);
  return ok;
}

absl::Status ReadEntries(zip_t* archive, const std::string& path, int image_size,
                         std::map<int, Character>* characters) {
  std::vector<uint8_t> bytes;
  const zip_int64_t entries = zip_get_num_entries(archive, 0);
  for (zip_int64_t i = 0; i < entries; ++i) {
    zip_stat_t stat;
    if (zip_stat_index(archive, i, 0, &stat) != 0)
      return absl::DataLossError(absl::StrCat(path, ": unreadable entry #", i));
    const std::string entry = stat.name;
    if (entry.empty() || entry.back() == '/') continue;  // a folder
    std::string name;
    int id = 0, drawer = 0;
    if (!ParseEntry(entry, &name, &id, &drawer))
      return absl::DataLossError(
          absl::StrCat(path, ": unexpected entry ", entry, " (want <root>/<Alphabet>/characterNN/IIII_SS.png)"));
    // An Omniglot PNG is about 300 bytes; a huge declared size is a damaged
    // or hostile archive, not a reason to allocate gigabytes.
    constexpr zip_uint64_t kMaxEntryBytes = 1 << 20;
    if (stat.size > kMaxEntryBytes)
      return absl::DataLossError(absl::StrCat(path, ": entry ", entry, " claims ", stat.size, " bytes"));
    if (!ReadEntry(archive, i, stat.size, &bytes))
      return absl::DataLossError(absl::StrCat(path, ": cannot read entry ", entry));
    absl::StatusOr<DecodedImage> image = DecodePng(bytes.data(), bytes.size(), 1, absl::StrCat(path, ":", entry));
    if (!image.ok()) return absl::DataLossError(image.status().message());
    DecodedImage small = ResizeArea(*image, image_size, image_size);
    Character& character = (*characters)[id];
    character.name = name;
    character.drawers.resize(kDrawers);
    character.drawers[drawer - 1] = std::move(small.pixels);
  }
  return absl::OkStatus();
}

absl::Status ReadZip(const std::string& path, int image_size, std::map<int, Character>* characters) {
  int code = 0;
  zip_t* archive = zip_open(path.c_str(), ZIP_RDONLY, &code);
  if (archive == nullptr) return OpenError(path, code);
  const absl::Status status = ReadEntries(archive, path, image_size, characters);
  zip_discard(archive);
  return status;
}

}  // namespace

absl::StatusOr<ImageDataset> LoadOmniglot(const std::string& dir, int image_size) {
  if (image_size <= 0) return absl::InvalidArgumentError(absl::StrCat("Omniglot image size ", image_size));
  std::map<int, Character> characters;  // by global character id
  for (const char* zip : kZips) RETURN_IF_ERROR(ReadZip(absl::StrCat(dir, "/", zip), image_size, &characters));
  if (static_cast<int>(characters.size()) != kCharacters)
    return absl::DataLossError(
        absl::StrCat("Omniglot in ", dir, " has ", characters.size(), " characters, not ", kCharacters));
  ImageDataset dataset(1, image_size, image_size);
  for (auto& [id, character] : characters) {
    std::vector<uint8_t> pixels;
    pixels.reserve(int64_t{kDrawers} * image_size * image_size);
    for (int d = 0; d < kDrawers; ++d) {
      if (character.drawers[d].empty())
        return absl::DataLossError(
            absl::StrCat("Omniglot in ", dir, ": character ", id, " (", character.name, ") lacks drawer ", d + 1));
      pixels.insert(pixels.end(), character.drawers[d].begin(), character.drawers[d].end());
    }
    RETURN_IF_ERROR(dataset.AddClass(character.name, kDrawers, std::move(pixels)));
  }
  return dataset;
}

}  // namespace reptile
