#include "core/data/image_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace reptile {
namespace {

// The file: magic, channels, height, width, classes (int32 each); per class
// its image count and name length (int32) and name; zeros up to a multiple
// of 64; then every class's pixels in order.
constexpr char kMagic[8] = {'R', 'P', 'T', 'I', 'M', 'G', 'S', '1'};
constexpr int64_t kAlign = 64;
constexpr int32_t kMaxClasses = 10'000'000, kMaxNameBytes = 4096;

// Reads fields front to back from a mapped file, never past its end.
class Cursor {
 public:
  Cursor(const uint8_t* data, int64_t size) : data_(data), size_(size) {}
  bool Int(int32_t* out) { return Bytes(out, sizeof(*out)); }
  bool Bytes(void* out, int64_t n) {
    if (n < 0 || n > size_ - at_) return false;
    std::memcpy(out, data_ + at_, static_cast<size_t>(n));
    at_ += n;
    return true;
  }
  int64_t at() const { return at_; }

 private:
  const uint8_t* data_;
  int64_t size_, at_ = 0;
};

}  // namespace

ImageDataset::ImageDataset(int channels, int height, int width) : channels_(channels), height_(height), width_(width) {}

absl::Status ImageDataset::AddClass(std::string name, int count, std::vector<uint8_t> pixels) {
  if (count < 0 || static_cast<int64_t>(pixels.size()) != count * image_bytes())
    return absl::InvalidArgumentError(absl::StrCat("class ", name, ": ", pixels.size(), " bytes for ", count,
                                                   " images of ", image_bytes(), " bytes"));
  auto storage = std::make_shared<const std::vector<uint8_t>>(std::move(pixels));
  classes_.push_back({std::move(name), count, storage->data(), storage});
  return absl::OkStatus();
}

absl::Status ImageDataset::WriteFile(const std::string& path) const {
  const std::string temporary = absl::StrCat(path, ".", getpid(), ".tmp");
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    auto put = [&out](int32_t v) { out.write(reinterpret_cast<const char*>(&v), sizeof(v)); };
    out.write(kMagic, sizeof(kMagic));
    for (int32_t v : {channels_, height_, width_, static_cast<int32_t>(classes_.size())}) put(v);
    int64_t header = sizeof(kMagic) + 4 * sizeof(int32_t);
    for (const ClassImages& c : classes_) {
      put(c.count);
      put(static_cast<int32_t>(c.name.size()));
      out.write(c.name.data(), static_cast<std::streamsize>(c.name.size()));
      header += 2 * sizeof(int32_t) + static_cast<int64_t>(c.name.size());
    }
    const std::string padding(static_cast<size_t>((kAlign - header % kAlign) % kAlign), '\0');
    out.write(padding.data(), static_cast<std::streamsize>(padding.size()));
    for (const ClassImages& c : classes_)
      out.write(reinterpret_cast<const char*>(c.pixels), static_cast<std::streamsize>(c.count * image_bytes()));
    if (!out.flush()) {
      std::remove(temporary.c_str());
      return absl::InternalError(absl::StrCat("cannot write ", temporary));
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(temporary.c_str());
    return absl::InternalError(absl::StrCat("cannot rename ", temporary, " to ", path, ": ", reason));
  }
  return absl::OkStatus();
}

absl::StatusOr<ImageDataset> ImageDataset::MapFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  struct stat info;
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode) || info.st_size < static_cast<off_t>(sizeof(kMagic))) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not an image dataset file"));
  }
  const int64_t size = info.st_size;
  void* data = mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (data == MAP_FAILED) return absl::InternalError(absl::StrCat("cannot map ", path, ": ", std::strerror(errno)));
  std::shared_ptr<const void> mapping(data, [size](const void* p) { munmap(const_cast<void*>(p), size); });
  const auto* bytes = static_cast<const uint8_t*>(data);
  auto refuse = [&path](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not an image dataset file: ", why));
  };
  Cursor cursor(bytes, size);
  char magic[sizeof(kMagic)];
  int32_t channels = 0, height = 0, width = 0, classes = 0;
  if (!cursor.Bytes(magic, sizeof(magic)) || std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) return refuse("magic");
  if (!cursor.Int(&channels) || !cursor.Int(&height) || !cursor.Int(&width) || !cursor.Int(&classes) ||
      (channels != 1 && channels != 3) || height <= 0 || width <= 0 || height > 8192 || width > 8192 || classes < 0 ||
      classes > kMaxClasses)
    return refuse("header");
  ImageDataset dataset(channels, height, width);
  std::vector<std::pair<std::string, int32_t>> names;
  int64_t images = 0;
  for (int32_t k = 0; k < classes; ++k) {
    int32_t count = 0, length = 0;
    if (!cursor.Int(&count) || !cursor.Int(&length) || count < 0 || length < 0 || length > kMaxNameBytes)
      return refuse(absl::StrCat("class ", k));
    std::string name(static_cast<size_t>(length), '\0');
    if (!cursor.Bytes(name.data(), length)) return refuse(absl::StrCat("class ", k, "'s name"));
    names.emplace_back(std::move(name), count);
    images += count;
  }
  const int64_t start = (cursor.at() + kAlign - 1) / kAlign * kAlign;
  if (start + images * dataset.image_bytes() != size) return refuse("its size is not its images'");
  int64_t at = start;
  for (auto& [name, count] : names) {
    dataset.classes_.push_back({std::move(name), count, bytes + at, mapping});
    at += count * dataset.image_bytes();
  }
  dataset.mapped_ = true;
  return dataset;
}

void ImageDataset::CopyExample(int cls, int index, int quarter_turns, float* out) const {
  const uint8_t* image = classes_[cls].pixels + index * image_bytes();
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
  for (const ClassImages& c : classes_) total += c.count * image_bytes();
  return total;
}

}  // namespace reptile
