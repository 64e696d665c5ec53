// Writes a generated image-folder dataset of JPEGs, a stand-in for
// Mini-ImageNet where it cannot be downloaded: OUT/{train,val,test}/<class>/
// with PER_CLASS images of SIZE x SIZE each. A class is a colour, a stripe
// direction and a stripe frequency; each image shifts the stripes and adds
// noise, so classes can be told apart and images of a class differ. The same
// arguments write the same files.
//
//   make_image_folder OUT [TRAIN VAL TEST [PER_CLASS [SIZE]]]   (defaults: 64 16 20 600 84, as Mini-ImageNet)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/strings/str_format.h"
#include "core/data/image_files.h"
#include "core/rng.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: make_image_folder OUT [TRAIN VAL TEST [PER_CLASS [SIZE]]]\n");
    return 2;
  }
  const std::string out = argv[1];
  auto arg = [&](int i, int fallback) { return argc > i ? std::atoi(argv[i]) : fallback; };
  const int splits[3] = {arg(2, 64), arg(3, 16), arg(4, 20)};
  const int per_class = arg(5, 600), size = arg(6, 84);
  const char* names[3] = {"train", "val", "test"};
  int class_id = 0;
  for (int s = 0; s < 3; ++s) {
    for (int k = 0; k < splits[s]; ++k, ++class_id) {
      reptile::Rng look(reptile::Rng::Derive(1, class_id));
      const double colour[3] = {look.Uniform(40, 215), look.Uniform(40, 215), look.Uniform(40, 215)};
      const double angle = look.Uniform(0, M_PI), frequency = look.Uniform(0.1, 0.6);
      const std::string dir = absl::StrFormat("%s/%s/n%05d", out, names[s], class_id);
      std::filesystem::create_directories(dir);
      for (int i = 0; i < per_class; ++i) {
        reptile::Rng rng(reptile::Rng::Derive(2 + class_id, i));
        const double shift = rng.Uniform(0, 2 * M_PI);
        reptile::DecodedImage image;
        image.channels = 3;
        image.height = image.width = size;
        image.pixels.resize(3 * size * size);
        for (int c = 0; c < 3; ++c)
          for (int y = 0; y < size; ++y)
            for (int x = 0; x < size; ++x) {
              const double stripe = std::sin(frequency * (x * std::cos(angle) + y * std::sin(angle)) + shift);
              const double v = colour[c] + 35 * stripe + rng.Uniform(-20, 20);
              image.pixels[(c * size + y) * size + x] = static_cast<uint8_t>(std::clamp(v, 0.0, 255.0));
            }
        const std::string path = absl::StrFormat("%s/%05d.jpg", dir, i);
        if (absl::Status written = reptile::WriteJpegFile(path, image, 90); !written.ok()) {
          std::fprintf(stderr, "%s\n", std::string(written.message()).c_str());
          return 1;
        }
      }
    }
  }
  std::printf("wrote %d classes of %d %dx%d JPEGs to %s\n", class_id, per_class, size, size, out.c_str());
  return 0;
}
