#include "core/data/image_files.h"

// jpeglib.h needs size_t and FILE declared first.
#include <cstdio>
#include <csetjmp>
#include <fstream>
#include <iterator>
#include <vector>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "absl/strings/str_cat.h"
#include "core/data/png_reader.h"

namespace reptile {
namespace {

bool IsPng(const std::vector<uint8_t>& b) { return b.size() >= 8 && png_sig_cmp(b.data(), 0, 8) == 0; }
bool IsJpeg(const std::vector<uint8_t>& b) { return b.size() >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF; }

// libjpeg reports errors through a callback that must not return: it jumps
// back to the decoder with the message kept.
struct JpegErrors {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void OnJpegError(j_common_ptr info) {
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  (*info->err->format_message)(info, errors->message);
  std::longjmp(errors->jump, 1);
}

// Warnings are ignored (real datasets hold files with extraneous bytes
// before a marker), but for data that ends early: libjpeg would pad such a
// file with grey, and a truncated image is an error.
void OnJpegWarning(j_common_ptr info, int level) {
  if (level == -1 && info->err->msg_code == JWRN_JPEG_EOF) OnJpegError(info);
}

absl::StatusOr<std::vector<uint8_t>> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open image ", path));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat("cannot read image ", path));
  return bytes;
}

// Decodes with `info` set up by the caller, where errors jump back to: no
// object with a destructor lives in this frame.
bool DecodeJpegInto(jpeg_decompress_struct* info, int channels, DecodedImage* out, std::vector<uint8_t>* row,
                    std::string* refusal) {
  jpeg_read_header(info, TRUE);
  if (info->jpeg_color_space == JCS_CMYK || info->jpeg_color_space == JCS_YCCK) {
    *refusal = "is a CMYK JPEG; save it as RGB";
    return false;
  }
  if (info->image_width == 0 || info->image_height == 0 || info->image_width > kMaxImageSide ||
      info->image_height > kMaxImageSide || uint64_t{info->image_width} * info->image_height > kMaxImagePixels) {
    *refusal = absl::StrCat("JPEG is ", info->image_width, "x", info->image_height, " pixels; the limit is ", kMaxImageSide,
                            " pixels a side and ", kMaxImagePixels / 1'000'000, " megapixels");
    return false;
  }
  info->out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(info);
  out->channels = channels;
  out->height = static_cast<int>(info->output_height);
  out->width = static_cast<int>(info->output_width);
  const int64_t plane = int64_t{out->height} * out->width;
  out->pixels.resize(plane * channels);
  row->resize(static_cast<size_t>(out->width) * channels);
  while (info->output_scanline < info->output_height) {
    const int64_t y = info->output_scanline;
    JSAMPROW rows[1] = {row->data()};
    jpeg_read_scanlines(info, rows, 1);
    for (int c = 0; c < channels; ++c)
      for (int x = 0; x < out->width; ++x) out->pixels[c * plane + y * out->width + x] = (*row)[x * channels + c];
  }
  jpeg_finish_decompress(info);
  return true;
}

}  // namespace

absl::StatusOr<DecodedImage> DecodeJpeg(const uint8_t* data, size_t size, int channels, const std::string& what) {
  if (channels != 1 && channels != 3)
    return absl::InvalidArgumentError(absl::StrCat(what, ": cannot decode to ", channels, " channels (only 1 or 3)"));
  jpeg_decompress_struct info;
  JpegErrors errors;
  info.err = jpeg_std_error(&errors.manager);
  errors.manager.error_exit = OnJpegError;
  errors.manager.emit_message = OnJpegWarning;
  // Everything with a destructor lives here, where an error jumps back to.
  DecodedImage out;
  std::vector<uint8_t> row;
  std::string refusal;
  if (setjmp(errors.jump) != 0) {
    jpeg_destroy_decompress(&info);
    return absl::InvalidArgumentError(absl::StrCat(what, " is a corrupt JPEG: ", errors.message));
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, data, static_cast<unsigned long>(size));
  const bool decoded = DecodeJpegInto(&info, channels, &out, &row, &refusal);
  jpeg_destroy_decompress(&info);
  if (!decoded) return absl::InvalidArgumentError(absl::StrCat(what, ": ", refusal));
  return out;
}

absl::StatusOr<int> ImageFileChannels(const std::string& path) {
  absl::StatusOr<std::vector<uint8_t>> bytes = ReadBytes(path);
  if (!bytes.ok()) return bytes.status();
  if (IsPng(*bytes)) {
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&image, bytes->data(), bytes->size()))
      return absl::InvalidArgumentError(absl::StrCat(path, " is not a readable PNG: ", image.message));
    const bool colour = (image.format & PNG_FORMAT_FLAG_COLOR) != 0;
    png_image_free(&image);
    return colour ? 3 : 1;
  }
  if (IsJpeg(*bytes)) {
    jpeg_decompress_struct info;
    JpegErrors errors;
    info.err = jpeg_std_error(&errors.manager);
    errors.manager.error_exit = OnJpegError;
    errors.manager.emit_message = OnJpegWarning;
    if (setjmp(errors.jump) != 0) {
      jpeg_destroy_decompress(&info);
      return absl::InvalidArgumentError(absl::StrCat(path, " is a corrupt JPEG: ", errors.message));
    }
    jpeg_create_decompress(&info);
    jpeg_mem_src(&info, bytes->data(), static_cast<unsigned long>(bytes->size()));
    jpeg_read_header(&info, TRUE);
    const int components = info.num_components;
    jpeg_destroy_decompress(&info);
    return components == 1 ? 1 : 3;
  }
  return absl::InvalidArgumentError(absl::StrCat(path, " is neither a PNG nor a JPEG"));
}

absl::StatusOr<DecodedImage> ReadImageFile(const std::string& path, int channels) {
  absl::StatusOr<std::vector<uint8_t>> bytes = ReadBytes(path);
  if (!bytes.ok()) return bytes.status();
  if (IsPng(*bytes)) return DecodePng(bytes->data(), bytes->size(), channels, path);
  if (IsJpeg(*bytes)) return DecodeJpeg(bytes->data(), bytes->size(), channels, path);
  return absl::InvalidArgumentError(absl::StrCat(path, " is neither a PNG nor a JPEG"));
}

absl::Status WriteJpegFile(const std::string& path, const DecodedImage& image, int quality) {
  if (image.channels != 1 && image.channels != 3)
    return absl::InvalidArgumentError(absl::StrCat(path, ": a JPEG holds 1 or 3 channels, not ", image.channels));
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return absl::InternalError(absl::StrCat("cannot write ", path));
  jpeg_compress_struct info;
  JpegErrors errors;
  info.err = jpeg_std_error(&errors.manager);
  errors.manager.error_exit = OnJpegError;
  // Interleaved rows, made before the jump point: nothing with a destructor
  // is created after it.
  const int64_t plane = int64_t{image.height} * image.width;
  std::vector<uint8_t> rows(static_cast<size_t>(plane) * image.channels);
  for (int c = 0; c < image.channels; ++c)
    for (int64_t i = 0; i < plane; ++i) rows[i * image.channels + c] = image.pixels[c * plane + i];
  if (setjmp(errors.jump) != 0) {
    jpeg_destroy_compress(&info);
    std::fclose(file);
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", errors.message));
  }
  jpeg_create_compress(&info);
  jpeg_stdio_dest(&info, file);
  info.image_width = static_cast<JDIMENSION>(image.width);
  info.image_height = static_cast<JDIMENSION>(image.height);
  info.input_components = image.channels;
  info.in_color_space = image.channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, quality, TRUE);
  jpeg_start_compress(&info, TRUE);
  while (info.next_scanline < info.image_height) {
    JSAMPROW row[1] = {rows.data() + int64_t{info.next_scanline} * image.width * image.channels};
    jpeg_write_scanlines(&info, row, 1);
  }
  jpeg_finish_compress(&info);
  jpeg_destroy_compress(&info);
  if (std::fclose(file) != 0) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace reptile
