// Dataset loaders. Each decodes its files once into an ImageDataset and fails
// with a status naming the missing or corrupt file.
#ifndef REPTILE_CORE_DATA_LOADERS_H_
#define REPTILE_CORE_DATA_LOADERS_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/data/image_dataset.h"

namespace reptile {

// Omniglot from the official zips `dir`/images_background.zip and
// `dir`/images_evaluation.zip: 1623 classes ordered by the global character id
// (IIII in IIII_SS.png), 20 drawers each ordered by SS, resized to
// image_size x image_size by area averaging, ink = 0.0, background = 1.0
// (as in the files and the reference code).
// Class names are "<Alphabet>/characterNN".
absl::StatusOr<ImageDataset> LoadOmniglot(const std::string& dir, int image_size);

// Fashion-MNIST from the IDX files in `dir` (train-images-idx3-ubyte,
// train-labels-idx1-ubyte, t10k-*; each either plain or .gz). Returns the 10
// classes with the training and test images of each class concatenated
// (training images first), 28x28 grey.
absl::StatusOr<ImageDataset> LoadFashionMnist(const std::string& dir);

// A folder of class folders of PNG images: `dir`/<class>/*.png, classes and
// files in lexicographic order, resized to image_size x image_size.
absl::StatusOr<ImageDataset> LoadImageFolder(const std::string& dir, int channels,
                                             int image_size);

}  // namespace reptile

#endif  // REPTILE_CORE_DATA_LOADERS_H_
