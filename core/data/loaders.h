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

// A folder of class folders of PNG or JPEG images: `dir`/<class>/*.{png,jpg,
// jpeg} (any case), classes and files in lexicographic order, decoded to
// `channels` (1 or 3; 0: as the first image is) and resized to image_size x
// image_size. An image that cannot be read is an error naming its path.
absl::StatusOr<ImageDataset> LoadImageFolder(const std::string& dir, int channels,
                                             int image_size);

// LoadImageFolder through a cache of the decoded images, so that the
// processes of one machine hold one copy: the first load decodes and writes
// <cache>/image-folder-<key>.bin, and every load maps that file read-only.
// The key covers the folder's absolute path, each image file's name, size
// and modification time, the channels and the size, so a changed folder is
// decoded again. <cache>: $REPTILE_CACHE_DIR, else $XDG_CACHE_HOME/reptile,
// else ~/.cache/reptile; where it cannot be written, the images are decoded
// into this process's memory instead.
absl::StatusOr<ImageDataset> LoadImageFolderShared(const std::string& dir, int channels, int image_size);

// The same for a split given as a CSV file in the Ravi & Larochelle format
// (header "filename,label", then one image a line, its file in
// `images_dir`): classes sorted by label, each class's images in the CSV's
// order. InvalidArgument naming the file and line of a malformed line.
absl::StatusOr<ImageDataset> LoadImageCsvShared(const std::string& csv, const std::string& images_dir, int channels,
                                                int image_size);

}  // namespace reptile

#endif  // REPTILE_CORE_DATA_LOADERS_H_
