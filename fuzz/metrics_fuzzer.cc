// Fuzzes what `reptile plot` decodes and draws: the input is a metrics.jsonl
// file. Reading must fail cleanly or succeed, and whatever it accepts must
// render as an SVG (ticks, bands, gaps) without crashing or hanging.
#include <cstddef>
#include <cstdint>
#include <string>

#include "analysis/run_metrics.h"
#include "analysis/training_curves.h"
#include "plot/chart.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<reptile::RunMetrics> run = reptile::ParseRunMetrics(text, "fuzz/metrics.jsonl", "fuzz");
  if (!run.ok()) return 0;
  const std::string svg = reptile::plot::RenderSvg(reptile::TrainingCurvesFigure({*run, *run}));
  if (svg.rfind("<?xml", 0) != 0) __builtin_trap();
  return 0;
}
