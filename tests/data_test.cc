#include <png.h>
#include <zip.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "core/data/image_dataset.h"
#include "core/data/loaders.h"
#include "core/data/png_reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_support.h"

namespace reptile {
namespace {

using ::testing::HasSubstr;

constexpr char kFashionDir[] = "/usr/share/datasets/fashion-mnist";

std::string EncodePng(const std::vector<uint8_t>& pixels, int width, int height, uint32_t format) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = width;
  image.height = height;
  image.format = format;
  png_alloc_size_t size = 0;
  EXPECT_TRUE(png_image_write_to_memory(&image, nullptr, &size, 0, pixels.data(), 0, nullptr));
  std::string bytes(size, '\0');
  EXPECT_TRUE(png_image_write_to_memory(&image, bytes.data(), &size, 0, pixels.data(), 0, nullptr));
  bytes.resize(size);
  return bytes;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(ImageDatasetTest, CopiesAndRotatesCounterClockwise) {
  ImageDataset dataset(1, 2, 2);
  // 0 1
  // 2 3  (values x 85)
  ASSERT_TRUE(dataset.AddClass("c", 1, {0, 85, 170, 255}).ok());
  EXPECT_FALSE(dataset.AddClass("bad", 2, {1, 2, 3}).ok());
  float out[4];
  dataset.CopyExample(0, 0, 0, out);
  EXPECT_FLOAT_EQ(out[1], 85 / 255.0f);
  dataset.CopyExample(0, 0, 1, out);  // counter-clockwise: top row becomes 1 3
  EXPECT_FLOAT_EQ(out[0], 85 / 255.0f);
  EXPECT_FLOAT_EQ(out[1], 1.0f);
  EXPECT_FLOAT_EQ(out[2], 0.0f);
  dataset.CopyExample(0, 0, 2, out);
  EXPECT_FLOAT_EQ(out[0], 1.0f);
  dataset.CopyExample(0, 0, 3, out);  // clockwise: top row 2 0
  EXPECT_FLOAT_EQ(out[0], 170 / 255.0f);
  EXPECT_FLOAT_EQ(out[1], 0.0f);
  EXPECT_EQ(dataset.memory_bytes(), 4);
}

TEST(PngReaderTest, ResizeAreaAveragesExactly) {
  DecodedImage in{1, 4, 4, {0, 0, 100, 100, 0, 0, 100, 100, 40, 40, 255, 255, 40, 40, 255, 255}};
  DecodedImage out = ResizeArea(in, 2, 2);
  EXPECT_EQ(out.pixels, (std::vector<uint8_t>{0, 100, 40, 255}));
  DecodedImage constant{1, 105, 105, std::vector<uint8_t>(105 * 105, 77)};
  for (uint8_t v : ResizeArea(constant, 28, 28).pixels) EXPECT_EQ(v, 77);
}

TEST(PngReaderTest, DecodesGreyAndColourAndRejectsGarbage) {
  const std::vector<uint8_t> grey = {0, 50, 100, 150, 200, 250};
  auto decoded = DecodePng(reinterpret_cast<const uint8_t*>(EncodePng(grey, 3, 2, PNG_FORMAT_GRAY).data()),
                           EncodePng(grey, 3, 2, PNG_FORMAT_GRAY).size(), 1, "grey.png");
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->width, 3);
  EXPECT_EQ(decoded->height, 2);
  EXPECT_EQ(decoded->pixels, grey);
  const std::vector<uint8_t> rgb = {255, 0, 0, 0, 255, 0};  // red, green
  const std::string rgb_png = EncodePng(rgb, 2, 1, PNG_FORMAT_RGB);
  auto planar = DecodePng(reinterpret_cast<const uint8_t*>(rgb_png.data()), rgb_png.size(), 3, "rgb.png");
  ASSERT_TRUE(planar.ok());
  EXPECT_EQ(planar->pixels, (std::vector<uint8_t>{255, 0, 0, 255, 0, 0}));  // R plane, G plane, B plane
  const std::string garbage = "definitely not a png";
  auto bad = DecodePng(reinterpret_cast<const uint8_t*>(garbage.data()), garbage.size(), 1, "garbage.png");
  EXPECT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("garbage.png"));
  const std::string truncated = EncodePng(grey, 3, 2, PNG_FORMAT_GRAY).substr(0, 40);
  EXPECT_FALSE(DecodePng(reinterpret_cast<const uint8_t*>(truncated.data()), truncated.size(), 1, "t.png").ok());
}

TEST(ImageFolderTest, LoadsClassFoldersAndNamesBadFiles) {
  const std::string root = testing::TempDir("folder");
  for (const char* name : {"b_class", "a_class"}) {
    std::filesystem::create_directories(root + "/" + name);
    for (int i = 0; i < 2; ++i)
      WriteFile(root + "/" + name + "/" + std::to_string(i) + ".png",
                EncodePng(std::vector<uint8_t>(8 * 8, name[0] == 'a' ? 10 : 200), 8, 8, PNG_FORMAT_GRAY));
  }
  auto dataset = LoadImageFolder(root, 1, 4);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->num_classes(), 2);
  EXPECT_EQ(dataset->class_name(0), "a_class");
  EXPECT_EQ(dataset->num_examples(1), 2);
  float out[16];
  dataset->CopyExample(1, 0, 0, out);
  EXPECT_FLOAT_EQ(out[5], 200 / 255.0f);

  WriteFile(root + "/a_class/broken.png", "PNG? no");
  auto broken = LoadImageFolder(root, 1, 4);
  EXPECT_THAT(broken.status().message(), HasSubstr("broken.png"));
  EXPECT_EQ(LoadImageFolder(root + "/missing", 1, 4).status().code(), absl::StatusCode::kNotFound);
}

TEST(FashionMnistTest, LoadsTheDebianPackageAndNamesATruncatedFile) {
  const auto start = std::chrono::steady_clock::now();
  auto dataset = LoadFashionMnist(kFashionDir);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  std::cout << "Fashion-MNIST load: "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s" << std::endl;
  EXPECT_EQ(dataset->num_classes(), 10);
  for (int c = 0; c < 10; ++c) EXPECT_EQ(dataset->num_examples(c), 7000);
  EXPECT_EQ(dataset->class_name(9), "Ankle boot");

  const std::string dir = testing::TempDir("fashion");
  for (const char* f : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                        "t10k-labels-idx1-ubyte.gz"})
    std::filesystem::copy_file(std::string(kFashionDir) + "/" + f, dir + "/" + f);
  std::filesystem::resize_file(dir + "/t10k-images-idx3-ubyte.gz", 100000);
  auto truncated = LoadFashionMnist(dir);
  EXPECT_FALSE(truncated.ok());
  EXPECT_THAT(truncated.status().message(), HasSubstr("t10k-images-idx3-ubyte.gz"));
  std::filesystem::remove(dir + "/train-labels-idx1-ubyte.gz");
  EXPECT_THAT(LoadFashionMnist(dir).status().message(), HasSubstr("train-labels-idx1-ubyte"));
}

TEST(OmniglotTest, LoadsTheOfficialZips) {
  const auto start = std::chrono::steady_clock::now();
  auto dataset = LoadOmniglot(testing::OmniglotDir(), 28);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  std::cout << "Omniglot load: " << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
            << " s, " << dataset->memory_bytes() / 1e6 << " MB" << std::endl;
  EXPECT_EQ(dataset->num_classes(), 1623);
  EXPECT_EQ(dataset->num_examples(0), 20);
  EXPECT_EQ(dataset->num_examples(1622), 20);
  std::vector<float> image(28 * 28);
  dataset->CopyExample(100, 3, 0, image.data());
  double ink = 0;
  int background = 0;
  for (float v : image) {
    EXPECT_GE(v, 0.0f);
    EXPECT_LE(v, 1.0f);
    ink += v;
    background += v == 0.0f;
  }
  EXPECT_GT(ink, 5.0);                 // there is a stroke
  EXPECT_GT(background, 28 * 28 / 2);  // on a mostly empty page
}

TEST(OmniglotTest, MissingAndForeignZipsAreNamed) {
  auto missing = LoadOmniglot("/nonexistent/omniglot", 28);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/omniglot/images_background.zip"));

  const std::string dir = testing::TempDir("omniglot");
  int error = 0;
  zip_t* archive = zip_open((dir + "/images_background.zip").c_str(), ZIP_CREATE | ZIP_TRUNCATE, &error);
  ASSERT_NE(archive, nullptr);
  static const char kText[] = "hello";
  zip_source_t* source = zip_source_buffer(archive, kText, sizeof(kText), 0);
  zip_file_add(archive, "images_background/Alphabet/character01/0001_01.png", source, ZIP_FL_OVERWRITE);
  ASSERT_EQ(zip_close(archive), 0);
  auto foreign = LoadOmniglot(dir, 28);
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(foreign.status().message(), HasSubstr("0001_01.png"));

  WriteFile(dir + "/images_background.zip", "not a zip at all");
  EXPECT_THAT(LoadOmniglot(dir, 28).status().message(), HasSubstr("images_background.zip"));
}

}  // namespace
}  // namespace reptile
