"""Writes Debian's Fashion-MNIST as the class folders of PNGs that
`task.family: IMAGE_FOLDER` reads, in the order the FASHION_MNIST family
holds it: OUT/train/<c>/ for classes 0-4 (meta-training) and OUT/test/<c>/
for 5-9 (meta-test), each class's training images first and then its test
images, named by their position so that they sort in that order.

    fashion_mnist_folders.py [--per_class N] OUT    (default: all 7000 a class)
"""
import argparse
import gzip
import os
import struct
import zlib

FASHION = "/usr/share/datasets/fashion-mnist"


def read_idx(name):
    for path in (os.path.join(FASHION, name), os.path.join(FASHION, name + ".gz")):
        if os.path.exists(path):
            with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
                return f.read()
    raise SystemExit(f"{name}(.gz) is not in {FASHION} (apt-get install dataset-fashion-mnist)")


def images_and_labels(prefix):
    images, labels = read_idx(f"{prefix}-images-idx3-ubyte"), read_idx(f"{prefix}-labels-idx1-ubyte")
    count, rows, cols = struct.unpack(">III", images[4:16])
    size = rows * cols
    return [(labels[8 + i], images[16 + i * size:16 + (i + 1) * size]) for i in range(count)], rows, cols


def png(pixels, rows, cols):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"".join(b"\0" + pixels[r * cols:(r + 1) * cols] for r in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--per_class", type=int, default=0)
    parser.add_argument("out")
    args = parser.parse_args()
    train, rows, cols = images_and_labels("train")
    test, _, _ = images_and_labels("t10k")
    for c in range(10):
        folder = os.path.join(args.out, "train" if c < 5 else "test", str(c))
        os.makedirs(folder, exist_ok=True)
        pixels = [image for label, image in train + test if label == c]
        if args.per_class:
            pixels = pixels[:args.per_class]
        for i, image in enumerate(pixels):
            with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
                f.write(png(image, rows, cols))


if __name__ == "__main__":
    main()
