// `reptile analyze`: what adaptation does to a trained model on held-out
// (meta-test) episodes. Per layer, how far adaptation moves it from theta
// (||W - theta|| / ||theta||); query accuracy when only the last layer adapts
// against all layers (feature reuse or rapid learning: Raghu et al., "Rapid
// Learning or Feature Reuse?", ICLR 2020); and query accuracy after each of
// 0 ... eval.inner_iterations steps. The functions are thread-safe.
#ifndef REPTILE_ANALYSIS_ADAPTATION_ANALYSIS_H_
#define REPTILE_ANALYSIS_ADAPTATION_ANALYSIS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/checkpoint.h"
#include "core/flat_parameters.h"
#include "core/tasks/task_source.h"
#include "plot/chart.h"

namespace reptile {

struct MeanCi95 {
  double mean = 0, ci95 = 0;  // 95% half-width (normal approximation)
};

struct AdaptationReport {
  int64_t round = 0;  // the checkpoint's
  int episodes = 0;
  int steps = 0;  // eval.inner_iterations
  int batch_size = 0;
  bool classification = true;
  std::vector<LayerSpan> layers;
  // Per layer: ||W - theta|| / ||theta|| after adapting all layers.
  std::vector<MeanCi95> change;
  // Per step 0 ... steps: transductive query accuracy (fraction), or query
  // MSE for sine, adapting all layers and only the last one.
  std::vector<MeanCi95> all_layers, last_layer;
};

// Adapts to `episodes` meta-test episodes (those `reptile eval` draws) twice,
// all layers and the last only, on `threads` threads; the result does not
// depend on the thread count. Fails on a bad state or a LibTorch error.
absl::StatusOr<AdaptationReport> AnalyzeAdaptation(const TrainingState& state,
                                                   std::shared_ptr<const TaskSource> tasks, int episodes,
                                                   int threads);

// The report as plain-text tables.
std::string FormatAdaptationReport(const AdaptationReport& report);

// Two panels: query score against adaptation steps (all layers, last layer
// only, with 95% bands) and relative change per layer.
plot::Figure AdaptationFigure(const AdaptationReport& report, const std::string& run_name);

}  // namespace reptile

#endif  // REPTILE_ANALYSIS_ADAPTATION_ANALYSIS_H_
