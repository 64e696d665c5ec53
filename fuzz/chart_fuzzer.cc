// Fuzzes the chart code (plot/chart.h) with any doubles at all, whatever a
// caller's parser lets through: infinities, NaN, values no int can hold,
// fixed bounds on the wrong side of the data. Input layout:
//   byte 0     bit 0: y ticks are whole numbers; bit 1: y_min follows;
//              bit 2: y_max follows; bit 3: x_include follows; bit 4: the
//              series has markers; bit 5: x is categorical (3 categories)
//   then       y_min, y_max, x_include as they are present, 8 bytes each
//   the rest   points, 32 bytes each: x, y, low, high (doubles)
// Rendering must return an SVG document, never crash or hang.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "plot/chart.h"

namespace {

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool Double(double* out) {
    if (size_ - at_ < sizeof(double)) return false;
    std::memcpy(out, data_ + at_, sizeof(double));
    at_ += sizeof(double);
    return true;
  }

 private:
  const uint8_t* data_;
  size_t size_, at_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  Reader in(data + 1, size - 1);
  reptile::plot::Panel panel;
  panel.y_integer = (flags & 1) != 0;
  double v = 0;
  if ((flags & 2) != 0 && in.Double(&v)) panel.y_min = v;
  if ((flags & 4) != 0 && in.Double(&v)) panel.y_max = v;
  if ((flags & 8) != 0 && in.Double(&v)) panel.x_include = v;
  if ((flags & 32) != 0) panel.x_categories = {"a", "b", "c"};
  reptile::plot::Series series;
  series.style = (flags & 16) != 0 ? reptile::plot::SeriesStyle::kPointsWithBars : reptile::plot::SeriesStyle::kLine;
  double x, y, low, high;
  while (series.x.size() < 4096 && in.Double(&x) && in.Double(&y) && in.Double(&low) && in.Double(&high)) {
    series.x.push_back(x);
    series.y.push_back(y);
    series.low.push_back(low);
    series.high.push_back(high);
  }
  panel.series.push_back(series);
  reptile::plot::Figure figure;
  figure.panels = {panel};
  const std::string svg = reptile::plot::RenderSvg(figure);
  if (svg.rfind("<?xml", 0) != 0) __builtin_trap();
  return 0;
}
