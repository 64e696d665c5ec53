// The figure of `reptile plot`: training loss and accuracy, evaluation
// accuracy with its 95% band (transductive and inductive), rounds/s and
// workers against rounds and against training wall time, for one run or
// several overlaid (one colour per run). Pure; thread-safe.
#ifndef REPTILE_ANALYSIS_TRAINING_CURVES_H_
#define REPTILE_ANALYSIS_TRAINING_CURVES_H_

#include <vector>

#include "analysis/run_metrics.h"
#include "plot/chart.h"

namespace reptile {

// Series of round lines are averaged down to at most this many points.
constexpr int kMaxPointsPerSeries = 800;

plot::Figure TrainingCurvesFigure(const std::vector<RunMetrics>& runs);

}  // namespace reptile

#endif  // REPTILE_ANALYSIS_TRAINING_CURVES_H_
