// Line charts as standalone SVG, written by hand: a figure is a grid of
// panels of the same size with fixed margins, each with its own axes ("nice"
// ticks, labels with units), under a title and one legend for the whole
// figure, so no label of one panel can reach into another. Pure functions of
// their inputs: no files, no state; thread-safe.
#ifndef REPTILE_PLOT_CHART_H_
#define REPTILE_PLOT_CHART_H_

#include <optional>
#include <string>
#include <vector>

namespace reptile::plot {

enum class SeriesStyle {
  kLine,            // a polyline; `low`/`high` (if given) drawn as a shaded band
  kLineAndMarkers,  // the same, with a dot at each point (sparse data)
  kPointsWithBars,  // a diamond per point; `low`/`high` (if given) as error bars
};

// One curve. `x` and `y` have the same size; `low` and `high` are empty or
// that size too. Points with a non-finite coordinate are skipped (a line
// breaks there).
struct Series {
  std::vector<double> x, y;
  std::vector<double> low, high;
  int color = 0;  // index into the palette (wraps)
  bool dashed = false;
  SeriesStyle style = SeriesStyle::kLine;
};

struct Panel {
  std::string title;
  std::string x_label, y_label;  // with units, e.g. "wall time (min)"
  std::vector<Series> series;
  // If given, x is categorical: series use x = 0, 1, ..., and the ticks are
  // these names.
  std::vector<std::string> x_categories;
  // Fixed y range, e.g. 0 and 100 for accuracy in %; else from the data.
  std::optional<double> y_min, y_max;
  // A value the x axis must reach, e.g. round 0, so that panels against
  // rounds line up.
  std::optional<double> x_include;
  // Counts: whole-number y ticks, and a tick of headroom above the data.
  bool y_integer = false;
  // Drawn in the middle of a panel with no data.
  std::string empty_note = "no data";
};

struct LegendEntry {
  std::string label;
  int color = 0;
  bool dashed = false;
  SeriesStyle style = SeriesStyle::kLine;
  bool band = false;  // shows a shaded band behind the line sample
};

struct Figure {
  std::string title;
  std::string subtitle;  // one line under the title; may be empty
  std::vector<LegendEntry> legend;
  std::vector<Panel> panels;
  int columns = 2;
  int panel_width = 470, panel_height = 270;  // each panel, margins included
};

// The SVG document, UTF-8, with its size in pixels.
std::string RenderSvg(const Figure& figure);

// Colour `index` of the palette (wraps), as "#rrggbb".
std::string PaletteColor(int index);

// Round tick values covering [lo, hi]: multiples of 1, 2, 2.5 or 5 times a
// power of ten, at most `max_ticks` of them (at least 2 unless lo == hi).
std::vector<double> NiceTicks(double lo, double hi, int max_ticks);

// A tick label: as few decimals as `step` needs; in thousands ("30k") for
// steps of 1000 or more (0 as "0"), in millions ("1.5M") from steps of 500,000.
std::string FormatTick(double value, double step);

// `text` with &, <, >, " and ' escaped for SVG text and attributes.
std::string EscapeXml(const std::string& text);

}  // namespace reptile::plot

#endif  // REPTILE_PLOT_CHART_H_
