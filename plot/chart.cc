#include "plot/chart.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace reptile::plot {
namespace {

// Figure layout, in pixels.
constexpr double kOuterMargin = 16;
constexpr double kTitleSize = 18, kSubtitleSize = 12, kLegendSize = 12;
constexpr double kLegendRow = 20, kLegendSample = 28;
// Panel layout: fixed margins around the plot area, so that every label has
// a place of its own.
constexpr double kPanelLeft = 70, kPanelRight = 16, kPanelTop = 30, kPanelBottom = 48;
constexpr double kTickSize = 11, kPanelTitleSize = 13, kAxisLabelSize = 12;
constexpr char kFont[] = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif";

constexpr const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                    "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

// A generous estimate of a text's width in a sans-serif font (DejaVu Sans
// averages 0.55 em per character over digits and lower case).
double TextWidth(const std::string& text, double size) { return 0.62 * size * static_cast<double>(text.size()); }

std::string Num(double v) { return absl::StrFormat("%.1f", v); }

std::string Text(double x, double y, const std::string& text, double size, const std::string& extra = "") {
  return absl::StrCat("<text x=\"", Num(x), "\" y=\"", Num(y), "\" font-size=\"", Num(size), "\"",
                      extra.empty() ? "" : " ", extra, ">", EscapeXml(text), "</text>\n");
}

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void Add(double v) {
    if (!std::isfinite(v)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return lo > hi; }
};

// `v` rounded down and held to [lo, hi] (NaN gives lo): the one way this
// file turns a double into an int.
int ClampToInt(double v, int lo, int hi) {
  if (!(v >= lo)) return lo;
  if (v >= hi) return hi;
  return static_cast<int>(v);
}

bool PointOk(const Series& s, size_t i) { return std::isfinite(s.x[i]) && std::isfinite(s.y[i]); }
bool BandOk(const Series& s, size_t i) {
  return i < s.low.size() && i < s.high.size() && std::isfinite(s.low[i]) && std::isfinite(s.high[i]);
}

// Ticks for an axis of `pixels` length whose labels, `label_gap` apart at
// least, must not overlap: fewer ticks until they fit.
std::vector<double> FittingTicks(double lo, double hi, double pixels, bool horizontal, bool integer = false) {
  int max_ticks = ClampToInt(pixels / (horizontal ? 55 : 30), 2, 1000);
  if (integer) {
    if (hi < lo) std::swap(lo, hi);  // a fixed bound past the data
    lo = std::floor(lo);
    hi = std::ceil(hi) + 1;
    const double span = hi - lo;
    if (span + 1 < max_ticks) max_ticks = ClampToInt(span + 1, 2, max_ticks);
  }
  for (;; --max_ticks) {
    std::vector<double> ticks = NiceTicks(lo, hi, max_ticks);
    if (max_ticks <= 2 || ticks.size() < 2) return ticks;
    const double step = ticks[1] - ticks[0];
    const double spacing = pixels / static_cast<double>(ticks.size() - 1);
    double widest = 0;
    for (double t : ticks) widest = std::max(widest, TextWidth(FormatTick(t, step), kTickSize));
    const double needed = horizontal ? widest + 12 : kTickSize + 8;
    if (spacing >= needed) return ticks;
  }
}

// The dash pattern and line sample of a legend entry or series.
std::string StrokeAttributes(int color, bool dashed, double width) {
  return absl::StrCat("stroke=\"", PaletteColor(color), "\" stroke-width=\"", Num(width), "\"",
                      dashed ? " stroke-dasharray=\"6 4\"" : "", " fill=\"none\"");
}

std::string Diamond(double x, double y, double r, int color) {
  return absl::StrFormat("<path d=\"M%.1f %.1fL%.1f %.1fL%.1f %.1fL%.1f %.1fZ\" fill=\"%s\"/>\n", x, y - r, x + r, y,
                         x, y + r, x - r, y, PaletteColor(color));
}

class PanelWriter {
 public:
  PanelWriter(const Panel& panel, double x, double y, double width, double height, int id)
      : panel_(panel), x_(x), y_(y), width_(width), height_(height), id_(id) {
    left_ = x_ + kPanelLeft;
    top_ = y_ + kPanelTop;
    plot_w_ = width_ - kPanelLeft - kPanelRight;
    plot_h_ = height_ - kPanelTop - kPanelBottom;
  }

  std::string Render() {
    std::string out = absl::StrCat("<g class=\"panel\">\n");
    out += Text(left_, y_ + 19, panel_.title, kPanelTitleSize, "font-weight=\"bold\"");
    Range xr, yr;
    for (const Series& s : panel_.series) {
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!PointOk(s, i)) continue;
        xr.Add(s.x[i]);
        yr.Add(s.y[i]);
        if (BandOk(s, i)) {
          yr.Add(s.low[i]);
          yr.Add(s.high[i]);
        }
      }
    }
    const std::string frame = absl::StrFormat(
        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\" stroke-width=\"1\"/>\n",
        left_, top_, plot_w_, plot_h_);
    if (xr.empty() || yr.empty()) {
      out += frame;
      out += Text(left_ + plot_w_ / 2, top_ + plot_h_ / 2, panel_.empty_note, kAxisLabelSize,
                  "text-anchor=\"middle\" fill=\"#777\"");
      return out + "</g>\n";
    }
    FitAxes(xr, yr);
    out += Axes();
    out += frame;
    // Data, clipped to the plot area (a little beyond, for markers).
    out += absl::StrFormat(
        "<clipPath id=\"clip%d\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/></clipPath>\n"
        "<g clip-path=\"url(#clip%d)\">\n",
        id_, left_ - 5, top_ - 5, plot_w_ + 10, plot_h_ + 10, id_);
    for (const Series& s : panel_.series) out += Bands(s);
    for (const Series& s : panel_.series) out += Lines(s);
    out += "</g>\n";
    return out + "</g>\n";
  }

 private:
  // Ticks and axis ends for data spanning `xr` and `yr`, within the panel's
  // fixed bounds.
  void FitAxes(Range xr, Range yr) {
    if (panel_.x_include) xr.Add(*panel_.x_include);
    // Markers at the very edge would be cut in half: a little room for them.
    const bool markers = std::any_of(panel_.series.begin(), panel_.series.end(),
                                     [](const Series& s) { return s.style != SeriesStyle::kLine; });
    double pad_lo = 0, pad_hi = 0;
    if (markers && panel_.x_categories.empty()) {
      const double pad = 0.03 * std::max(xr.hi - xr.lo, std::abs(xr.hi) * 1e-3 + 1e-9);
      if (!panel_.x_include || xr.lo < *panel_.x_include) pad_lo = pad;
      if (!panel_.x_include || xr.hi > *panel_.x_include) pad_hi = pad;
    }
    if (panel_.y_min) yr.lo = *panel_.y_min;
    if (panel_.y_max) yr.hi = *panel_.y_max;
    y_ticks_ = FittingTicks(yr.lo, yr.hi, plot_h_, false, panel_.y_integer);
    if (y_ticks_.empty()) y_ticks_ = {yr.lo, yr.hi};
    if (panel_.x_categories.empty()) {
      x_ticks_ = FittingTicks(xr.lo, xr.hi, plot_w_, true);
      if (x_ticks_.empty()) x_ticks_ = {xr.lo, xr.hi};
      // Data a little past a round tick (a shifted marker) extends the axis,
      // not by a whole step.
      const double slack = 0.05 * (xr.hi - xr.lo);
      if (x_ticks_.size() > 3 && x_ticks_[x_ticks_.size() - 2] >= xr.hi - slack) x_ticks_.pop_back();
      if (x_ticks_.size() > 3 && x_ticks_[1] <= xr.lo + slack) x_ticks_.erase(x_ticks_.begin());
      // The axis ends at the outer ticks, or a little past the data.
      x_lo_ = std::min(x_ticks_.front(), xr.lo - pad_lo);
      x_hi_ = std::max(x_ticks_.back(), xr.hi + pad_hi);
    } else {
      for (size_t i = 0; i < panel_.x_categories.size(); ++i) x_ticks_.push_back(static_cast<double>(i));
      x_lo_ = -0.5;
      x_hi_ = static_cast<double>(panel_.x_categories.size()) - 0.5;
    }
    y_lo_ = panel_.y_min ? *panel_.y_min : y_ticks_.front();
    y_hi_ = panel_.y_max ? *panel_.y_max : y_ticks_.back();
  }

  double Px(double v) const { return left_ + (v - x_lo_) / std::max(x_hi_ - x_lo_, 1e-300) * plot_w_; }
  double Py(double v) const { return top_ + plot_h_ - (v - y_lo_) / std::max(y_hi_ - y_lo_, 1e-300) * plot_h_; }

  std::string XTickLabel(double t, double step) const {
    if (panel_.x_categories.empty()) return FormatTick(t, step);
    const double i = std::round(t);
    if (!(i >= 0 && i < static_cast<double>(panel_.x_categories.size()))) return "";
    return panel_.x_categories[static_cast<size_t>(i)];
  }

  std::string Axes() const {
    std::string out;
    const double x_step = x_ticks_.size() > 1 ? x_ticks_[1] - x_ticks_[0] : 1;
    const double y_step = y_ticks_.size() > 1 ? y_ticks_[1] - y_ticks_[0] : 1;
    for (double t : x_ticks_) {
      const double px = Px(t);
      out += absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", px, top_,
                             px, top_ + plot_h_);
      out += absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>\n", px,
                             top_ + plot_h_, px, top_ + plot_h_ + 4);
      out += Text(px, top_ + plot_h_ + 17, XTickLabel(t, x_step), kTickSize, "text-anchor=\"middle\"");
    }
    for (double t : y_ticks_) {
      if (t < y_lo_ - 1e-9 * std::abs(y_step) || t > y_hi_ + 1e-9 * std::abs(y_step)) continue;
      const double py = Py(t);
      out += absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", left_, py,
                             left_ + plot_w_, py);
      out += absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>\n", left_ - 4,
                             py, left_, py);
      out += Text(left_ - 7, py + kTickSize * 0.35, FormatTick(t, y_step), kTickSize, "text-anchor=\"end\"");
    }
    out += Text(left_ + plot_w_ / 2, top_ + plot_h_ + 38, panel_.x_label, kAxisLabelSize, "text-anchor=\"middle\"");
    const double lx = x_ + 14, ly = top_ + plot_h_ / 2;
    out += Text(lx, ly, panel_.y_label, kAxisLabelSize,
                absl::StrFormat("text-anchor=\"middle\" transform=\"rotate(-90 %.1f %.1f)\"", lx, ly));
    return out;
  }

  // Shaded bands behind lines, one polygon per run of points with a band.
  std::string Bands(const Series& s) const {
    if (s.style == SeriesStyle::kPointsWithBars) return "";
    std::string out;
    size_t i = 0;
    const size_t n = std::min(s.x.size(), s.y.size());
    while (i < n) {
      if (!PointOk(s, i) || !BandOk(s, i)) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < n && PointOk(s, j) && BandOk(s, j)) ++j;
      std::string points;
      for (size_t k = i; k < j; ++k) absl::StrAppendFormat(&points, "%.1f,%.1f ", Px(s.x[k]), Py(s.high[k]));
      for (size_t k = j; k-- > i;) absl::StrAppendFormat(&points, "%.1f,%.1f ", Px(s.x[k]), Py(s.low[k]));
      if (j - i == 1) {  // one point: a bar, as a band cannot show
        out += absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" %s/>\n", Px(s.x[i]),
                               Py(s.low[i]), Px(s.x[i]), Py(s.high[i]), StrokeAttributes(s.color, false, 1));
      } else {
        out += absl::StrFormat("<polygon points=\"%s\" fill=\"%s\" fill-opacity=\"0.18\" stroke=\"none\"/>\n", points,
                               PaletteColor(s.color));
      }
      i = j;
    }
    return out;
  }

  std::string Lines(const Series& s) const {
    std::string out;
    const size_t n = std::min(s.x.size(), s.y.size());
    if (s.style == SeriesStyle::kPointsWithBars) {
      for (size_t i = 0; i < n; ++i) {
        if (!PointOk(s, i)) continue;
        const double px = Px(s.x[i]);
        if (BandOk(s, i)) {
          const double lo = Py(s.low[i]), hi = Py(s.high[i]);
          out += absl::StrFormat(
              "<path d=\"M%.1f %.1fV%.1fM%.1f %.1fH%.1fM%.1f %.1fH%.1f\" %s/>\n", px, lo, hi, px - 4, lo, px + 4,
              px - 4, hi, px + 4, StrokeAttributes(s.color, false, 1.5));
        }
        out += Diamond(px, Py(s.y[i]), 5, s.color);
      }
      return out;
    }
    std::string path;
    bool pen_down = false;
    for (size_t i = 0; i < n; ++i) {
      if (!PointOk(s, i)) {
        pen_down = false;
        continue;
      }
      absl::StrAppendFormat(&path, "%s%.1f %.1f", pen_down ? "L" : "M", Px(s.x[i]), Py(s.y[i]));
      pen_down = true;
    }
    if (!path.empty())
      out += absl::StrCat("<path d=\"", path, "\" ", StrokeAttributes(s.color, s.dashed, 1.8),
                          " stroke-linejoin=\"round\"/>\n");
    if (s.style == SeriesStyle::kLineAndMarkers) {
      for (size_t i = 0; i < n; ++i)
        if (PointOk(s, i))
          out += absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.8\" fill=\"%s\"/>\n", Px(s.x[i]),
                                 Py(s.y[i]), PaletteColor(s.color));
    }
    return out;
  }

  const Panel& panel_;
  double x_, y_, width_, height_;
  int id_;
  double left_, top_, plot_w_, plot_h_;
  std::vector<double> x_ticks_, y_ticks_;
  double x_lo_ = 0, x_hi_ = 1, y_lo_ = 0, y_hi_ = 1;
};

// The legend, wrapped into rows `width` wide; returns its height.
double Legend(const std::vector<LegendEntry>& entries, double x, double y, double width, std::string* out) {
  if (entries.empty()) return 0;
  double cx = x, cy = y;
  for (const LegendEntry& e : entries) {
    // Legend labels are mostly lower case: 0.9 of the generous estimate.
    const double w = kLegendSample + 6 + 0.9 * TextWidth(e.label, kLegendSize) + 16;
    if (cx > x && cx + w > x + width) {
      cx = x;
      cy += kLegendRow;
    }
    const double mid = cy + kLegendRow / 2;
    if (e.band)
      absl::StrAppendFormat(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"10\" fill=\"%s\" fill-opacity=\"0.18\"/>\n",
                            cx, mid - 5, kLegendSample, PaletteColor(e.color));
    if (e.style == SeriesStyle::kPointsWithBars) {
      *out += Diamond(cx + kLegendSample / 2, mid, 5, e.color);
    } else {
      absl::StrAppendFormat(out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" %s/>\n", cx, mid,
                            cx + kLegendSample, mid, StrokeAttributes(e.color, e.dashed, 2));
      if (e.style == SeriesStyle::kLineAndMarkers)
        absl::StrAppendFormat(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.8\" fill=\"%s\"/>\n", cx + kLegendSample / 2,
                              mid, PaletteColor(e.color));
    }
    *out += Text(cx + kLegendSample + 6, mid + kLegendSize * 0.35, e.label, kLegendSize);
    cx += w;
  }
  return cy + kLegendRow - y;
}

}  // namespace

std::string PaletteColor(int index) {
  constexpr int n = sizeof(kPalette) / sizeof(kPalette[0]);
  return kPalette[((index % n) + n) % n];
}

std::vector<double> NiceTicks(double lo, double hi, int max_ticks) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
  if (hi < lo) std::swap(lo, hi);
  if (!std::isfinite(hi - lo)) return {lo, hi};  // a range no double can step through
  max_ticks = std::max(2, max_ticks);
  if (hi - lo <= std::abs(hi) * 1e-12) {  // one value: a unit around it
    const double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / (max_ticks - 1);
  double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  constexpr double kSteps[] = {1, 2, 2.5, 5, 10};
  for (int attempt = 0; attempt < 40; ++attempt) {
    for (double m : kSteps) {
      const double step = m * magnitude;
      if (step < raw * (1 - 1e-9)) continue;
      const double first = std::floor(lo / step + 1e-9) * step;
      const double last = std::ceil(hi / step - 1e-9) * step;
      const double ticks_needed = std::round((last - first) / step) + 1;
      if (!(ticks_needed <= max_ticks)) continue;
      const int count = ClampToInt(ticks_needed, 0, max_ticks);
      std::vector<double> ticks;
      for (int i = 0; i < count; ++i) {
        double t = first + i * step;
        if (std::abs(t) < step * 1e-9) t = 0;  // no "-0"
        ticks.push_back(t);
      }
      return ticks;
    }
    magnitude *= 10;
  }
  return {lo, hi};
}

std::string FormatTick(double value, double step) {
  step = std::abs(step);
  auto decimals_for = [](double s) {
    if (s <= 0 || !std::isfinite(s)) return 0;
    int d = 0;
    while (d < 9 && std::abs(s * std::pow(10.0, d) - std::round(s * std::pow(10.0, d))) > 1e-6 * s * std::pow(10.0, d))
      ++d;
    return d;
  };
  if (step >= 1e3 && value == 0) return "0";
  if (step >= 5e5) return absl::StrFormat("%.*fM", decimals_for(step / 1e6), value / 1e6);
  if (step >= 1e3) return absl::StrFormat("%.*fk", decimals_for(step / 1e3), value / 1e3);
  return absl::StrFormat("%.*f", decimals_for(step), value);
}

std::string EscapeXml(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string RenderSvg(const Figure& figure) {
  const int columns = std::max(1, figure.columns);
  const int rows = (static_cast<int>(figure.panels.size()) + columns - 1) / columns;
  const double width = 2 * kOuterMargin + columns * figure.panel_width;
  std::string body;
  double y = kOuterMargin;
  if (!figure.title.empty()) {
    body += Text(kOuterMargin, y + kTitleSize, figure.title, kTitleSize, "font-weight=\"bold\"");
    y += kTitleSize + 8;
  }
  if (!figure.subtitle.empty()) {
    body += Text(kOuterMargin, y + kSubtitleSize, figure.subtitle, kSubtitleSize, "fill=\"#555\"");
    y += kSubtitleSize + 8;
  }
  y += Legend(figure.legend, kOuterMargin, y, width - 2 * kOuterMargin, &body) + 6;
  for (size_t p = 0; p < figure.panels.size(); ++p) {
    const double px = kOuterMargin + static_cast<double>(p % columns) * figure.panel_width;
    const double py = y + static_cast<double>(p / columns) * figure.panel_height;
    body += PanelWriter(figure.panels[p], px, py, figure.panel_width, figure.panel_height, static_cast<int>(p))
                .Render();
  }
  const double height = y + rows * figure.panel_height + kOuterMargin;
  const int w = ClampToInt(std::ceil(width), 0, 1 << 24), h = ClampToInt(std::ceil(height), 0, 1 << 24);
  return absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
      "font-family=\"%s\" fill=\"#222\">\n"
      "<title>%s</title>\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n%s</svg>\n",
      w, h, w, h, kFont, EscapeXml(figure.title), body);
}

}  // namespace reptile::plot
