// Tests of the data layer: ImageDataset, PNG and JPEG decoding and area
// resizing, and the Omniglot, Fashion-MNIST and image-folder loaders (and the
// image-folder task source) on real and broken data.
#include <png.h>
#include <zip.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/data/image_dataset.h"
#include "core/data/image_files.h"
#include "core/data/loaders.h"
#include "core/data/png_reader.h"
#include "core/tasks/task_source.h"
#include "gtest/gtest.h"

namespace reptile {
namespace {

namespace fs = std::filesystem;

constexpr char kFashionDir[] = "/usr/share/datasets/fashion-mnist";

std::string OmniglotDir() {
  const char* env = std::getenv("REPTILE_OMNIGLOT_DIR");
  return env != nullptr ? env : std::string(REPTILE_SOURCE_DIR) + "/../shared/data/omniglot";
}

// A fresh empty directory for the current test.
std::string TempDir(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::path(::testing::TempDir()) / "reptile_data_test" /
                       (std::string(info->test_suite_name()) + "." + info->name()) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

bool Mentions(const absl::Status& status, const std::string& text) {
  return !status.ok() && status.message().find(text) != absl::string_view::npos;
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// Writes a PNG with libpng's classic API: `rows` are already packed for
// `bit_depth` (e.g. 8 pixels a byte at depth 1, big-endian at depth 16).
void WritePng(const std::string& path, int width, int bit_depth, int color_type,
              const std::vector<std::vector<uint8_t>>& rows, const std::vector<png_color>& palette = {}) {
  FILE* file = std::fopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    ADD_FAILURE() << "libpng failed to write " << path;
  } else {
    png_init_io(png, file);
    png_set_IHDR(png, info, width, static_cast<png_uint_32>(rows.size()), bit_depth, color_type, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (!palette.empty()) png_set_PLTE(png, info, palette.data(), static_cast<int>(palette.size()));
    png_write_info(png, info);
    for (const auto& row : rows) png_write_row(png, row.data());
    png_write_end(png, nullptr);
  }
  png_destroy_write_struct(&png, &info);
  std::fclose(file);
}

// Writes the PNG, then decodes it both from the file and from memory.
DecodedImage WriteAndDecode(const std::string& name, int channels, int width, int bit_depth, int color_type,
                            const std::vector<std::vector<uint8_t>>& rows, const std::vector<png_color>& palette = {}) {
  const std::string path = TempDir("png") + "/" + name;
  WritePng(path, width, bit_depth, color_type, rows, palette);
  absl::StatusOr<DecodedImage> from_file = ReadPngFile(path, channels);
  EXPECT_TRUE(from_file.ok()) << from_file.status();
  const std::string bytes = ReadFile(path);
  absl::StatusOr<DecodedImage> from_memory =
      DecodePng(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), channels, name);
  EXPECT_TRUE(from_memory.ok()) << from_memory.status();
  if (!from_file.ok() || !from_memory.ok()) return {};
  EXPECT_EQ(from_file->pixels, from_memory->pixels);
  EXPECT_EQ(from_file->channels, channels);
  EXPECT_EQ(from_file->width, width);
  EXPECT_EQ(from_file->height, static_cast<int>(rows.size()));
  return *from_file;
}

std::vector<float> Copy(const ImageDataset& dataset, int cls, int index, int quarter_turns) {
  std::vector<float> out(dataset.image_bytes());
  dataset.CopyExample(cls, index, quarter_turns, out.data());
  return out;
}

// Pixel values / 255, as CopyExample returns them.
std::vector<float> Scaled(const std::vector<int>& values) {
  std::vector<float> out;
  for (int v : values) out.push_back(v / 255.0f);
  return out;
}

::testing::AssertionResult Near(const std::vector<float>& actual, const std::vector<float>& expected) {
  if (actual.size() != expected.size())
    return ::testing::AssertionFailure() << actual.size() << " values, expected " << expected.size();
  for (size_t i = 0; i < actual.size(); ++i)
    if (std::abs(actual[i] - expected[i]) > 1e-6f)
      return ::testing::AssertionFailure() << "value " << i << " is " << actual[i] << ", expected " << expected[i];
  return ::testing::AssertionSuccess();
}

TEST(ImageDatasetTest, CopiesAndRotatesCounterClockwise) {
  ImageDataset dataset(1, 3, 3);
  std::vector<uint8_t> pixels = {0, 1, 2, 3, 4, 5, 6, 7, 8};  // image 0:  0 1 2 / 3 4 5 / 6 7 8
  pixels.resize(18);
  pixels[9] = 255;  // image 1: top-left only
  ASSERT_TRUE(dataset.AddClass("c", 2, std::move(pixels)).ok());
  EXPECT_EQ(dataset.num_classes(), 1);
  EXPECT_EQ(dataset.num_examples(0), 2);
  EXPECT_EQ(dataset.class_name(0), "c");
  EXPECT_EQ(dataset.memory_bytes(), 18);
  EXPECT_TRUE(Near(Copy(dataset, 0, 0, 0), Scaled({0, 1, 2, 3, 4, 5, 6, 7, 8})));
  EXPECT_TRUE(Near(Copy(dataset, 0, 0, 1), Scaled({2, 5, 8, 1, 4, 7, 0, 3, 6})));  // right column becomes the top row
  EXPECT_TRUE(Near(Copy(dataset, 0, 0, 2), Scaled({8, 7, 6, 5, 4, 3, 2, 1, 0})));
  EXPECT_TRUE(Near(Copy(dataset, 0, 0, 3), Scaled({6, 3, 0, 7, 4, 1, 8, 5, 2})));  // i.e. one clockwise turn
  EXPECT_TRUE(Near(Copy(dataset, 0, 0, 4), Copy(dataset, 0, 0, 0)));
  EXPECT_TRUE(Near(Copy(dataset, 0, 0, -1), Copy(dataset, 0, 0, 3)));
  EXPECT_TRUE(Near(Copy(dataset, 0, 1, 0), Scaled({255, 0, 0, 0, 0, 0, 0, 0, 0})));
  EXPECT_TRUE(Near(Copy(dataset, 0, 1, 1), Scaled({0, 0, 0, 0, 0, 0, 255, 0, 0})));  // top-left goes bottom-left
}

TEST(ImageDatasetTest, RotatesEveryChannelAndRejectsWrongSizes) {
  ImageDataset dataset(2, 2, 2);
  ASSERT_TRUE(dataset.AddClass("rg", 1, {1, 2, 3, 4, 10, 20, 30, 40}).ok());
  EXPECT_TRUE(Near(Copy(dataset, 0, 0, 1), Scaled({2, 4, 1, 3, 20, 40, 10, 30})));
  const absl::Status bad = dataset.AddClass("bad", 2, {1, 2, 3});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(bad, "bad")) << bad;
  EXPECT_EQ(dataset.num_classes(), 1);
}

TEST(ResizeAreaTest, AveragesExactly) {
  const DecodedImage blocks{1, 4, 4, {0, 0, 100, 100, 0, 0, 100, 100, 40, 40, 255, 255, 40, 40, 255, 255}};
  EXPECT_EQ(ResizeArea(blocks, 2, 2).pixels, (std::vector<uint8_t>{0, 100, 40, 255}));
  const DecodedImage means{1, 2, 2, {0, 1, 2, 3}};
  EXPECT_EQ(ResizeArea(means, 1, 1).pixels, (std::vector<uint8_t>{2}));  // 1.5 rounds up
  // 3 -> 2: each output covers one and a half inputs.
  const DecodedImage row{1, 1, 3, {0, 90, 180}};
  EXPECT_EQ(ResizeArea(row, 1, 2).pixels, (std::vector<uint8_t>{30, 150}));
  // Enlarging repeats pixels.
  const DecodedImage pair{1, 1, 2, {10, 50}};
  EXPECT_EQ(ResizeArea(pair, 1, 4).pixels, (std::vector<uint8_t>{10, 10, 50, 50}));
  for (int value : {0, 1, 77, 254, 255}) {
    const DecodedImage constant{1, 105, 105, std::vector<uint8_t>(105 * 105, value)};
    const DecodedImage small = ResizeArea(constant, 28, 28);
    EXPECT_EQ(small.height, 28);
    EXPECT_EQ(small.width, 28);
    EXPECT_EQ(small.pixels, std::vector<uint8_t>(28 * 28, value));
  }
  const DecodedImage two_planes{2, 2, 2, {0, 0, 0, 0, 200, 200, 200, 200}};
  EXPECT_EQ(ResizeArea(two_planes, 1, 1).pixels, (std::vector<uint8_t>{0, 200}));
}

TEST(PngReaderTest, DecodesGrey8Bit) {
  const DecodedImage grey = WriteAndDecode("grey.png", 1, 3, 8, PNG_COLOR_TYPE_GRAY, {{0, 50, 100}, {150, 200, 250}});
  EXPECT_EQ(grey.pixels, (std::vector<uint8_t>{0, 50, 100, 150, 200, 250}));
  const DecodedImage rgb = WriteAndDecode("grey.png", 3, 2, 8, PNG_COLOR_TYPE_GRAY, {{7, 9}});
  EXPECT_EQ(rgb.pixels, (std::vector<uint8_t>{7, 9, 7, 9, 7, 9}));
}

TEST(PngReaderTest, Decodes1BitGrey) {
  // 10 pixels a row: 1011000011 / 0100111100, packed most significant bit first.
  const DecodedImage image =
      WriteAndDecode("bits.png", 1, 10, 1, PNG_COLOR_TYPE_GRAY, {{0b10110000, 0b11000000}, {0b01001111, 0b00000000}});
  EXPECT_EQ(image.pixels, (std::vector<uint8_t>{255, 0,   255, 255, 0,   0,   0,   0,   255, 255,  //
                                                0,   255, 0,   0,   255, 255, 255, 255, 0,   0}));
}

TEST(PngReaderTest, Decodes16BitGreyAsSrgb) {
  const DecodedImage image =
      WriteAndDecode("deep.png", 1, 3, 16, PNG_COLOR_TYPE_GRAY, {{0, 0, 0x80, 0x80, 0xff, 0xff}});
  EXPECT_EQ(image.pixels, (std::vector<uint8_t>{0, 128, 255}));
}

TEST(PngReaderTest, DecodesRgbToPlanesAndLuminance) {
  const std::vector<std::vector<uint8_t>> rows = {{255, 0, 0, 0, 255, 0, 255, 255, 255, 0, 0, 0}};
  const DecodedImage rgb = WriteAndDecode("rgb.png", 3, 4, 8, PNG_COLOR_TYPE_RGB, rows);
  EXPECT_EQ(rgb.pixels, (std::vector<uint8_t>{255, 0, 255, 0, 0, 255, 255, 0, 0, 0, 255, 0}));  // R, G, B planes
  const DecodedImage grey = WriteAndDecode("rgb.png", 1, 4, 8, PNG_COLOR_TYPE_RGB, rows);
  ASSERT_EQ(grey.pixels.size(), 4u);
  EXPECT_GT(grey.pixels[0], 0);               // red
  EXPECT_GT(grey.pixels[1], grey.pixels[0]);  // green is brighter
  EXPECT_EQ(grey.pixels[2], 255);             // white
  EXPECT_EQ(grey.pixels[3], 0);               // black
}

TEST(PngReaderTest, DecodesPalette) {
  const std::vector<png_color> palette = {{0, 0, 0}, {255, 0, 0}, {10, 20, 30}, {255, 255, 255}};
  // 2-bit indices 0 1 2 3 / 3 2 1 0.
  const std::vector<std::vector<uint8_t>> rows = {{0b00011011}, {0b11100100}};
  const DecodedImage rgb = WriteAndDecode("palette.png", 3, 4, 2, PNG_COLOR_TYPE_PALETTE, rows, palette);
  EXPECT_EQ(rgb.pixels, (std::vector<uint8_t>{0, 255, 10, 255, 255, 10, 255, 0,     // R
                                              0, 0,   20, 255, 255, 20, 0,   0,     // G
                                              0, 0,   30, 255, 255, 30, 0,   0}));  // B
  const DecodedImage grey = WriteAndDecode("palette.png", 1, 4, 2, PNG_COLOR_TYPE_PALETTE, rows, palette);
  ASSERT_EQ(grey.pixels.size(), 8u);
  EXPECT_EQ(grey.pixels[0], 0);
  EXPECT_EQ(grey.pixels[3], 255);
}

TEST(PngReaderTest, DropsAlphaKeepingColour) {
  const DecodedImage image =
      WriteAndDecode("alpha.png", 1, 3, 8, PNG_COLOR_TYPE_GRAY_ALPHA, {{100, 0, 200, 128, 30, 255}});
  EXPECT_EQ(image.pixels, (std::vector<uint8_t>{100, 200, 30}));
  const DecodedImage rgb = WriteAndDecode("rgba.png", 3, 1, 8, PNG_COLOR_TYPE_RGB_ALPHA, {{10, 20, 30, 0}});
  EXPECT_EQ(rgb.pixels, (std::vector<uint8_t>{10, 20, 30}));
}

TEST(PngReaderTest, ErrorsNameTheSource) {
  const std::string garbage = "definitely not a png";
  const auto bad = DecodePng(reinterpret_cast<const uint8_t*>(garbage.data()), garbage.size(), 1, "garbage.png");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(bad.status(), "garbage.png")) << bad.status();

  const std::string path = TempDir("png") + "/cut.png";
  WritePng(path, 3, 8, PNG_COLOR_TYPE_GRAY, {{1, 2, 3}, {4, 5, 6}});
  WriteFile(path, ReadFile(path).substr(0, 40));
  const auto cut = ReadPngFile(path, 1);
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(cut.status(), path)) << cut.status();

  const auto missing = ReadPngFile(path + ".missing", 1);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Mentions(missing.status(), path + ".missing")) << missing.status();
}

std::string BigEndian(uint32_t value) {
  return {static_cast<char>(value >> 24), static_cast<char>(value >> 16), static_cast<char>(value >> 8),
          static_cast<char>(value)};
}

// A PNG whose header claims `width` x `height` 8-bit grey pixels, followed by
// a single compressed row: a few dozen bytes that would demand the whole image.
std::string PngClaiming(uint32_t width, uint32_t height) {
  auto chunk = [](const std::string& type, const std::string& body) {
    const std::string typed = type + body;
    const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(typed.data()), static_cast<uInt>(typed.size()));
    return BigEndian(static_cast<uint32_t>(body.size())) + typed + BigEndian(static_cast<uint32_t>(crc));
  };
  // 8-bit grey, deflate, no filter, no interlace.
  const std::string ihdr = BigEndian(width) + BigEndian(height) + std::string("\x08\x00\x00\x00\x00", 5);
  const std::string row(1 + 64, '\0');  // filter byte and 64 pixels
  std::string idat(compressBound(row.size()), '\0');
  uLongf idat_size = idat.size();
  compress(reinterpret_cast<Bytef*>(idat.data()), &idat_size, reinterpret_cast<const Bytef*>(row.data()), row.size());
  idat.resize(idat_size);
  return "\x89PNG\r\n\x1a\n" + chunk("IHDR", ihdr) + chunk("IDAT", idat) + chunk("IEND", "");
}

TEST(PngReaderTest, RefusesImagesPastTheSizeLimitBeforeAllocating) {
  const std::string dir = TempDir("png");
  // 16384 x 16384 was accepted before and took 1 GiB (grey) to 1.75 GiB (RGB).
  for (const auto& [width, height] : {std::pair<uint32_t, uint32_t>{16384, 16384}, {8193, 1}, {1, 100000},
                                      {6000, 5000}, {8192, 8192}}) {
    const std::string path = dir + "/claims_" + std::to_string(width) + "x" + std::to_string(height) + ".png";
    const std::string png = PngClaiming(width, height);
    ASSERT_LT(png.size(), 200u);
    WriteFile(path, png);
    for (int channels : {1, 3}) {
      const auto refused = ReadPngFile(path, channels);
      EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_TRUE(Mentions(refused.status(), path)) << refused.status();
      EXPECT_TRUE(Mentions(refused.status(), "the limit is 8192 pixels a side and 25 megapixels")) << refused.status();
    }
  }
  // Photos up to 24 megapixels (6000 x 4000) pass the limit; this one is
  // then refused only because its pixels are missing.
  WriteFile(dir + "/photo.png", PngClaiming(6000, 4000));
  const auto photo = ReadPngFile(dir + "/photo.png", 3);
  EXPECT_TRUE(Mentions(photo.status(), "corrupt PNG")) << photo.status();
  // The longest side accepted decodes.
  const DecodedImage wide = WriteAndDecode("wide.png", 1, 8192, 8, PNG_COLOR_TYPE_GRAY, {std::vector<uint8_t>(8192, 7)});
  EXPECT_EQ(wide.width, 8192);
}

TEST(ImageFolderTest, LoadsClassFoldersInOrder) {
  const std::string root = TempDir("folder");
  // Classes in reverse creation order, images of different sizes.
  for (const std::string name : {"b_class", "a_class"}) {
    fs::create_directories(root + "/" + name);
    const uint8_t value = name == "a_class" ? 10 : 200;
    WritePng(root + "/" + name + "/1.png", 8, 8, PNG_COLOR_TYPE_GRAY,
             std::vector<std::vector<uint8_t>>(8, std::vector<uint8_t>(8, value)));
    WritePng(root + "/" + name + "/0.png", 6, 8, PNG_COLOR_TYPE_RGB,
             std::vector<std::vector<uint8_t>>(6, std::vector<uint8_t>(18, value / 2)));
  }
  WriteFile(root + "/a_class/notes.txt", "ignored");
  const auto dataset = LoadImageFolder(root, 1, 4);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->num_classes(), 2);
  EXPECT_EQ(dataset->class_name(0), "a_class");
  EXPECT_EQ(dataset->class_name(1), "b_class");
  EXPECT_EQ(dataset->num_examples(0), 2);
  EXPECT_EQ(dataset->height(), 4);
  EXPECT_TRUE(Near(Copy(*dataset, 1, 0, 0), std::vector<float>(16, 100 / 255.0f)));  // 0.png first
  EXPECT_TRUE(Near(Copy(*dataset, 1, 1, 0), std::vector<float>(16, 200 / 255.0f)));
  EXPECT_EQ(dataset->memory_bytes(), 4 * 16);
}

TEST(ImageFolderTest, ErrorsNameTheFileOrFolder) {
  const std::string root = TempDir("folder");
  fs::create_directories(root + "/only");
  WritePng(root + "/only/good.png", 2, 8, PNG_COLOR_TYPE_GRAY, {{1, 2}});
  WriteFile(root + "/only/broken.png", "PNG? no");
  const auto broken = LoadImageFolder(root, 1, 4);
  EXPECT_TRUE(Mentions(broken.status(), root + "/only/broken.png")) << broken.status();

  const auto missing = LoadImageFolder(root + "/missing", 1, 4);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Mentions(missing.status(), root + "/missing")) << missing.status();
}

TEST(FashionMnistTest, LoadsTheDebianPackage) {
  const auto start = std::chrono::steady_clock::now();
  const auto dataset = LoadFashionMnist(kFashionDir);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  std::cout << "Fashion-MNIST load: " << Seconds(start) << " s, " << dataset->memory_bytes() << " bytes" << std::endl;
  EXPECT_EQ(dataset->num_classes(), 10);
  for (int c = 0; c < 10; ++c) EXPECT_EQ(dataset->num_examples(c), 7000);
  EXPECT_EQ(dataset->class_name(0), "T-shirt/top");
  EXPECT_EQ(dataset->class_name(9), "Ankle boot");
  EXPECT_EQ(dataset->memory_bytes(), 70000 * 28 * 28);
  const std::vector<float> image = Copy(*dataset, 9, 0, 0);
  EXPECT_GT(*std::max_element(image.begin(), image.end()), 0.5f);
}

TEST(FashionMnistTest, ReadsPlainFilesAndNamesBrokenOnes) {
  const std::string dir = TempDir("fashion");
  for (const char* f : {"train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"})
    fs::copy_file(std::string(kFashionDir) + "/" + f, dir + "/" + f);
  for (const std::string f : {"train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"}) {  // stored uncompressed
    gzFile in = gzopen((std::string(kFashionDir) + "/" + f + ".gz").c_str(), "rb");
    ASSERT_NE(in, nullptr);
    std::string plain(100000, '\0');
    plain.resize(gzread(in, plain.data(), static_cast<unsigned>(plain.size())));
    gzclose(in);
    WriteFile(dir + "/" + f, plain);
  }
  ASSERT_TRUE(LoadFashionMnist(dir).ok());

  fs::resize_file(dir + "/t10k-images-idx3-ubyte.gz", 100000);
  const auto truncated = LoadFashionMnist(dir);
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(truncated.status(), dir + "/t10k-images-idx3-ubyte.gz")) << truncated.status();

  std::string labels = ReadFile(dir + "/train-labels-idx1-ubyte");
  WriteFile(dir + "/train-labels-idx1-ubyte", labels.substr(0, labels.size() - 1));
  const auto short_labels = LoadFashionMnist(dir);
  EXPECT_TRUE(Mentions(short_labels.status(), dir + "/train-labels-idx1-ubyte")) << short_labels.status();

  labels[3] = 0x03;  // an image magic number in a label file
  WriteFile(dir + "/train-labels-idx1-ubyte", labels);
  const auto wrong_magic = LoadFashionMnist(dir);
  EXPECT_TRUE(Mentions(wrong_magic.status(), dir + "/train-labels-idx1-ubyte")) << wrong_magic.status();

  fs::remove(dir + "/train-labels-idx1-ubyte");
  const auto missing = LoadFashionMnist(dir);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Mentions(missing.status(), "train-labels-idx1-ubyte")) << missing.status();
}

// "<Alphabet>/characterNN" of every character id, read from the zips' entry names.
std::map<int, std::string> OmniglotNamesById(const std::string& dir) {
  std::map<int, std::string> names;
  for (const char* zip : {"images_background.zip", "images_evaluation.zip"}) {
    zip_t* archive = zip_open((dir + "/" + zip).c_str(), ZIP_RDONLY, nullptr);
    EXPECT_NE(archive, nullptr) << zip;
    if (archive == nullptr) continue;
    for (zip_int64_t i = 0; i < zip_get_num_entries(archive, 0); ++i) {
      const fs::path entry = zip_get_name(archive, i, 0);
      if (entry.extension() != ".png") continue;
      names[std::stoi(entry.filename().string().substr(0, 4))] =
          (entry.parent_path().parent_path().filename() / entry.parent_path().filename()).string();
    }
    zip_discard(archive);
  }
  return names;
}

TEST(OmniglotTest, LoadsTheOfficialZips) {
  const std::string dir = OmniglotDir();
  const auto start = std::chrono::steady_clock::now();
  const auto dataset = LoadOmniglot(dir, 28);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  std::cout << "Omniglot load (32,460 PNGs): " << Seconds(start) << " s, " << dataset->memory_bytes() << " bytes"
            << std::endl;
  ASSERT_EQ(dataset->num_classes(), 1623);
  EXPECT_EQ(dataset->height(), 28);
  EXPECT_EQ(dataset->memory_bytes(), 1623 * 20 * 28 * 28);

  const std::map<int, std::string> names = OmniglotNamesById(dir);
  ASSERT_EQ(names.size(), 1623u);
  EXPECT_EQ(names.begin()->first, 1);
  int cls = 0;
  for (const auto& [id, name] : names) {
    EXPECT_EQ(dataset->class_name(cls), name) << "class " << cls << " should be character id " << id;
    EXPECT_EQ(dataset->num_examples(cls), 20);
    ++cls;
  }

  for (int c : {0, 500, 1622}) {
    for (int i : {0, 19}) {
      const std::vector<float> image = Copy(*dataset, c, i, 0);
      double ink = 0;
      int background = 0;
      for (float v : image) {
        ASSERT_GE(v, 0.0f);
        ASSERT_LE(v, 1.0f);
        ink += 1.0f - v;  // dark ink on a light page
        background += v == 1.0f;
      }
      EXPECT_GT(ink, 5.0) << "class " << c << " image " << i;  // there is a stroke
      EXPECT_GT(background, 28 * 28 / 2);                      // on a mostly empty page
    }
  }
}

TEST(OmniglotTest, ErrorsNameTheZipOrEntry) {
  const auto missing = LoadOmniglot("/nonexistent/omniglot", 28);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Mentions(missing.status(), "/nonexistent/omniglot/images_background.zip")) << missing.status();

  const std::string dir = TempDir("omniglot");
  const std::string zip_path = dir + "/images_background.zip";
  const auto write_zip = [&zip_path](const char* entry, const std::string& contents) {
    zip_t* archive = zip_open(zip_path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, nullptr);
    ASSERT_NE(archive, nullptr);
    zip_source_t* source = zip_source_buffer(archive, contents.data(), contents.size(), 0);
    ASSERT_NE(source, nullptr);
    ASSERT_GE(zip_file_add(archive, entry, source, ZIP_FL_OVERWRITE), 0);
    ASSERT_EQ(zip_close(archive), 0);
  };
  write_zip("images_background/Alphabet/character01/0001_01.png", "hello, not a PNG");
  const auto not_png = LoadOmniglot(dir, 28);
  EXPECT_EQ(not_png.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(not_png.status(), "images_background/Alphabet/character01/0001_01.png")) << not_png.status();

  write_zip("images_background/README.txt", "stray file");
  const auto stray = LoadOmniglot(dir, 28);
  EXPECT_TRUE(Mentions(stray.status(), "images_background/README.txt")) << stray.status();

  WriteFile(zip_path, "not a zip at all");
  const auto not_zip = LoadOmniglot(dir, 28);
  EXPECT_EQ(not_zip.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(not_zip.status(), zip_path)) << not_zip.status();
}

// Writes a JPEG of `channels` (1: grey, 3: RGB) at quality 100, every pixel
// `value` (per channel).
void WriteJpeg(const std::string& path, int width, int height, int channels, std::vector<uint8_t> value) {
  DecodedImage image;
  image.channels = channels;
  image.height = height;
  image.width = width;
  for (int c = 0; c < channels; ++c) image.pixels.insert(image.pixels.end(), int64_t{width} * height, value[c]);
  ASSERT_TRUE(WriteJpegFile(path, image, 100).ok()) << path;
}

::testing::AssertionResult AllNear(const DecodedImage& image, const std::vector<int>& per_channel, int tolerance) {
  const int64_t plane = int64_t{image.height} * image.width;
  for (int c = 0; c < image.channels; ++c)
    for (int64_t i = 0; i < plane; ++i)
      if (std::abs(image.pixels[c * plane + i] - per_channel[c]) > tolerance)
        return ::testing::AssertionFailure() << "channel " << c << " pixel " << i << " is "
                                             << int(image.pixels[c * plane + i]) << ", expected " << per_channel[c];
  return ::testing::AssertionSuccess();
}

TEST(JpegReaderTest, DecodesGreyAndColourToEitherAndRefusesWhatIsNotAnImage) {
  const std::string dir = TempDir("jpeg");
  WriteJpeg(dir + "/grey.jpg", 9, 7, 1, {128});
  WriteJpeg(dir + "/red.JPEG", 8, 8, 3, {250, 10, 10});
  absl::StatusOr<DecodedImage> grey = ReadImageFile(dir + "/grey.jpg", 1);
  ASSERT_TRUE(grey.ok()) << grey.status();
  EXPECT_EQ(grey->width, 9);
  EXPECT_EQ(grey->height, 7);
  EXPECT_TRUE(AllNear(*grey, {128}, 1));
  absl::StatusOr<DecodedImage> grey_as_rgb = ReadImageFile(dir + "/grey.jpg", 3);
  ASSERT_TRUE(grey_as_rgb.ok()) << grey_as_rgb.status();
  EXPECT_TRUE(AllNear(*grey_as_rgb, {128, 128, 128}, 1));
  absl::StatusOr<DecodedImage> red = ReadImageFile(dir + "/red.JPEG", 3);
  ASSERT_TRUE(red.ok()) << red.status();
  EXPECT_TRUE(AllNear(*red, {250, 10, 10}, 3));
  EXPECT_EQ(*ImageFileChannels(dir + "/grey.jpg"), 1);
  EXPECT_EQ(*ImageFileChannels(dir + "/red.JPEG"), 3);

  const std::string whole = ReadFile(dir + "/red.JPEG");
  WriteFile(dir + "/cut.jpg", whole.substr(0, 40));
  const absl::StatusOr<DecodedImage> cut = ReadImageFile(dir + "/cut.jpg", 3);
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(cut.status(), dir + "/cut.jpg: ") || Mentions(cut.status(), dir + "/cut.jpg is a corrupt JPEG"))
      << cut.status();
  // Cut inside the image data: libjpeg would pad it with grey; refused instead.
  WriteFile(dir + "/short.jpg", whole.substr(0, whole.size() - 30));
  EXPECT_TRUE(Mentions(ReadImageFile(dir + "/short.jpg", 3).status(), "short.jpg is a corrupt JPEG: Premature end"))
      << ReadImageFile(dir + "/short.jpg", 3).status();
  WriteFile(dir + "/text.jpg", "hello");
  EXPECT_TRUE(Mentions(ReadImageFile(dir + "/text.jpg", 1).status(), "text.jpg is neither a PNG nor a JPEG"));
}

// <root>/<split>/class<k>/ with `per_class` grey images of value 40 * k,
// alternately JPEG and PNG.
void WriteGreySplit(const std::string& root, const std::string& split, int classes, int per_class) {
  for (int k = 0; k < classes; ++k) {
    const std::string dir = absl::StrCat(root, "/", split, "/class", k);
    fs::create_directories(dir);
    for (int i = 0; i < per_class; ++i) {
      const uint8_t v = static_cast<uint8_t>(40 * k);
      if (i % 2 == 0) {
        WriteJpeg(absl::StrCat(dir, "/", i, ".jpg"), 12, 12, 1, {v});
      } else {
        WritePng(absl::StrCat(dir, "/", i, ".png"), 12, 8, PNG_COLOR_TYPE_GRAY, std::vector<std::vector<uint8_t>>(12, std::vector<uint8_t>(12, v)));
      }
    }
  }
}

// An IMAGE_FOLDER task on `root`, its decoded images cached in a folder of
// the test's own, empty at first.
TaskConfig FolderTask(const std::string& root) {
  fs::remove_all(root + "_cache");
  setenv("REPTILE_CACHE_DIR", (root + "_cache").c_str(), 1);
  TaskConfig task;
  task.set_family(IMAGE_FOLDER);
  task.set_data_dir(root);
  task.set_ways(3);
  task.set_train_shots(2);
  task.set_eval_shots(1);
  task.set_query_shots(2);
  task.set_image_size(6);
  return task;
}

TEST(ImageFolderTest, AGreySetKeepsOneChannelAndEvaluationsDrawFromItsValidationSplit) {
  const std::string root = TempDir("folder");
  WriteGreySplit(root, "train", 4, 3);
  WriteGreySplit(root, "val", 3, 3);
  WriteGreySplit(root, "test", 5, 3);
  TaskConfig task = FolderTask(root);
  task.add_normalize_mean(0.5f);
  task.add_normalize_std(0.25f);
  absl::StatusOr<std::shared_ptr<const TaskSource>> source = TaskSource::Create(task);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->image_channels(), 1);
  EXPECT_EQ((*source)->num_classes(false), 4);
  EXPECT_EQ((*source)->num_validation_classes(), 3);
  EXPECT_EQ((*source)->num_classes(true), 5);

  TaskSpec spec;
  spec.set_family(IMAGE_FOLDER);
  spec.set_meta_test(true);
  spec.set_validation(true);
  spec.set_support_shots(1);
  spec.set_query_shots(2);
  for (int c : {2, 0, 1}) spec.add_class_ids(c);
  absl::StatusOr<TaskExamples> examples = (*source)->Materialize(spec);
  ASSERT_TRUE(examples.ok()) << examples.status();
  EXPECT_EQ(examples->support_x.sizes(), torch::IntArrayRef({3, 1, 6, 6}));
  // Class 2 of val/ is grey 80: (80/255 - 0.5) / 0.25, within JPEG's error.
  EXPECT_NEAR(examples->support_x[0].mean().item<float>(), (80 / 255.0 - 0.5) / 0.25, 0.02);
  spec.clear_class_ids();
  for (int c : {0, 1, 3}) spec.add_class_ids(c);  // val/ has three classes
  EXPECT_TRUE(Mentions((*source)->Materialize(spec).status(), "outside the validation split of 3 classes"));
  spec.set_meta_test(false);
  EXPECT_TRUE(Mentions((*source)->Materialize(spec).status(), "only an evaluation episode"));
}

TEST(ImageFolderTest, DecodedImagesAreCachedOnceAndDecodedAgainWhenAFileChanges) {
  const std::string root = TempDir("cached");
  WriteGreySplit(root, "train", 3, 3);
  WriteGreySplit(root, "test", 3, 3);
  const TaskConfig task = FolderTask(root);
  auto cache_files = [&root] {
    int files = 0;
    for (const auto& entry : fs::directory_iterator(root + "_cache")) files += entry.path().extension() == ".bin";
    return files;
  };
  auto first_image = [&](const TaskSource& source) {
    TaskSpec spec;
    spec.set_family(IMAGE_FOLDER);
    spec.set_meta_test(true);
    spec.set_support_shots(3);
    spec.set_query_shots(0);
    for (int c : {0, 1, 2}) spec.add_class_ids(c);
    return source.Materialize(spec)->support_x[0].mean().item<float>();
  };
  absl::StatusOr<std::shared_ptr<const TaskSource>> decoded = TaskSource::Create(task);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE((*decoded)->images_shared());
  EXPECT_EQ(cache_files(), 2);  // train and test
  absl::StatusOr<std::shared_ptr<const TaskSource>> mapped = TaskSource::Create(task);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(cache_files(), 2);
  EXPECT_EQ(first_image(**mapped), first_image(**decoded));
  // Every image of test/class0 made white: decoded again, into a new file.
  for (const auto& entry : fs::directory_iterator(root + "/test/class0")) {
    if (entry.path().extension() == ".jpg") WriteJpeg(entry.path().string(), 12, 12, 1, {255});
    if (entry.path().extension() == ".png")
      WritePng(entry.path().string(), 12, 8, PNG_COLOR_TYPE_GRAY,
               std::vector<std::vector<uint8_t>>(12, std::vector<uint8_t>(12, 255)));
  }
  absl::StatusOr<std::shared_ptr<const TaskSource>> changed = TaskSource::Create(task);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_EQ(cache_files(), 3);
  EXPECT_NEAR(first_image(**changed), 1.0, 0.01);
}

TEST(ImageFolderTest, AnUnreadableImageAShortClassAndAnEmptySplitAreNamed) {
  const std::string root = TempDir("bad");
  WriteGreySplit(root, "train", 3, 3);
  WriteGreySplit(root, "test", 3, 3);
  ASSERT_TRUE(TaskSource::Create(FolderTask(root)).ok());

  WriteFile(root + "/test/class1/9.jpg", "not an image");
  const auto unreadable = TaskSource::Create(FolderTask(root));
  EXPECT_TRUE(Mentions(unreadable.status(), root + "/test/class1/9.jpg")) << unreadable.status();
  fs::remove(root + "/test/class1/9.jpg");

  fs::remove(root + "/test/class2/0.jpg");
  fs::remove(root + "/test/class2/1.png");
  const auto short_class = TaskSource::Create(FolderTask(root));
  EXPECT_TRUE(Mentions(short_class.status(), "class folder " + root + "/test/class2 has 1 images; a task takes 3"))
      << short_class.status();

  fs::remove_all(root + "/test");
  fs::create_directories(root + "/test");
  const auto empty = TaskSource::Create(FolderTask(root));
  EXPECT_TRUE(Mentions(empty.status(), "image folder " + root + "/test has no class folders")) << empty.status();
}

TEST(ImageFolderTest, SplitFilesInTheRavisFormatNameImagesInOneFolder) {
  const std::string root = TempDir("csv");
  fs::create_directories(root + "/images");
  std::string train = "filename,label\n", test = "filename,label\r\n";
  for (int k = 0; k < 6; ++k) {
    for (int i = 0; i < 3; ++i) {
      const std::string file = absl::StrCat("n", k, "_", i, ".jpg");
      WriteJpeg(root + "/images/" + file, 10, 10, 3, {static_cast<uint8_t>(40 * k), 0, 0});
      absl::StrAppend(k < 3 ? &train : &test, file, ",n0", 5 - k, k < 3 ? "\n" : "\r\n");
    }
  }
  WriteFile(root + "/train.csv", train);
  WriteFile(root + "/test.csv", test);
  absl::StatusOr<std::shared_ptr<const TaskSource>> source = TaskSource::Create(FolderTask(root));
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->image_channels(), 3);
  EXPECT_EQ((*source)->num_classes(false), 3);
  EXPECT_EQ((*source)->num_classes(true), 3);
  EXPECT_EQ((*source)->num_validation_classes(), 0);

  WriteFile(root + "/test.csv", test + "../secret.jpg,n01\n");
  EXPECT_TRUE(Mentions(TaskSource::Create(FolderTask(root)).status(), root + "/test.csv:11: expected filename,label"));
}

}  // namespace
}  // namespace reptile
