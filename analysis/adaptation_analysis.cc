#include "analysis/adaptation_analysis.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "coordinator/task_sampler.h"
#include "core/status_macros.h"
#include "worker/learner.h"

namespace reptile {
namespace {

MeanCi95 Summarize(const std::vector<double>& values) {
  MeanCi95 out;
  const double n = static_cast<double>(values.size());
  if (values.empty()) return out;
  for (double v : values) out.mean += v / n;
  if (values.size() < 2) return out;
  double squares = 0;
  for (double v : values) squares += (v - out.mean) * (v - out.mean);
  out.ci95 = 1.96 * std::sqrt(squares / (n - 1)) / std::sqrt(n);
  return out;
}

// Column `i` of per-episode rows.
std::vector<double> Column(const std::vector<std::vector<double>>& rows, size_t i) {
  std::vector<double> column;
  for (const auto& row : rows)
    if (i < row.size()) column.push_back(row[i]);
  return column;
}

struct EpisodeTraces {
  AdaptationTrace all, last;
};

}  // namespace

absl::StatusOr<AdaptationReport> AnalyzeAdaptation(const TrainingState& state,
                                                   std::shared_ptr<const TaskSource> tasks, int episodes,
                                                   int threads) {
  if (episodes <= 0) return absl::InvalidArgumentError("analysis needs at least one episode");
  const ExperimentConfig& config = state.config;
  const TaskSampler sampler(config, tasks->num_classes(false), tasks->num_classes(true));
  std::vector<TaskSpec> items;
  for (const WorkItem& item : sampler.EvaluationItems(episodes))
    items.insert(items.end(), item.tasks.begin(), item.tasks.end());
  threads = std::clamp(threads, 1, episodes);
  std::vector<std::unique_ptr<Learner>> learners;
  for (int t = 0; t < threads; ++t) {
    ASSIGN_OR_RETURN(std::unique_ptr<Learner> learner, Learner::Create(config, tasks));
    learners.push_back(std::move(learner));
  }
  std::vector<EpisodeTraces> traces(items.size());
  std::vector<absl::Status> errors(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      at::set_num_threads(1);  // as the evaluation's workers: results independent of the machine
      Learner& learner = *learners[t];
      for (size_t e = t; e < items.size(); e += threads) {
        absl::StatusOr<AdaptationTrace> all = learner.TraceAdaptation(state.meta, items[e], AdaptedLayers::kAll);
        absl::StatusOr<AdaptationTrace> last =
            all.ok() ? learner.TraceAdaptation(state.meta, items[e], AdaptedLayers::kLastOnly) : all;
        if (!last.ok()) {
          errors[t] = last.status();
          return;
        }
        traces[e] = {std::move(*all), std::move(*last)};
      }
    });
  }
  for (std::thread& thread : pool) thread.join();
  absl::Status status;
  for (const absl::Status& error : errors) status.Update(error);
  RETURN_IF_ERROR(status);

  AdaptationReport report;
  report.round = state.round;
  report.episodes = episodes;
  report.steps = config.eval().inner_iterations();
  report.batch_size = config.eval().inner_batch_size();
  report.classification = config.task().family() != SINE;
  report.layers = LayersOf(learners[0]->layout());
  std::vector<std::vector<double>> change, all, last;
  for (const EpisodeTraces& t : traces) {
    change.push_back(t.all.relative_change);
    all.push_back(report.classification ? t.all.accuracy : t.all.loss);
    last.push_back(report.classification ? t.last.accuracy : t.last.loss);
  }
  for (size_t l = 0; l < report.layers.size(); ++l) report.change.push_back(Summarize(Column(change, l)));
  for (int s = 0; s <= report.steps; ++s) {
    report.all_layers.push_back(Summarize(Column(all, s)));
    report.last_layer.push_back(Summarize(Column(last, s)));
  }
  return report;
}

std::string FormatAdaptationReport(const AdaptationReport& r) {
  const bool pct = r.classification;
  auto score = [pct](const MeanCi95& m) {
    return pct ? absl::StrFormat("%6.2f%% ± %.2f", 100 * m.mean, 100 * m.ci95)
               : absl::StrFormat("%.4f ± %.4f", m.mean, m.ci95);
  };
  std::string out = absl::StrFormat(
      "round %d: %d meta-test episodes, %d adaptation steps on minibatches of %d (eval settings)\n\n", r.round,
      r.episodes, r.steps, r.batch_size);
  size_t name_width = 5;
  for (const LayerSpan& l : r.layers) name_width = std::max(name_width, l.name.size());
  absl::StrAppendFormat(&out, "%-*s  %10s  %s\n", name_width, "layer", "parameters",
                        "||W-theta||/||theta|| after adapting all layers (mean ± 95% CI)");
  for (size_t l = 0; l < r.layers.size() && l < r.change.size(); ++l)
    absl::StrAppendFormat(&out, "%-*s  %10d  %.4g ± %.2g\n", name_width, r.layers[l].name, r.layers[l].parameters,
                          r.change[l].mean, r.change[l].ci95);
  const std::string what = pct ? "query accuracy (transductive)" : "query MSE";
  absl::StrAppendFormat(&out, "\n%s after each step (mean ± 95%% CI)\n%5s  %-18s  %s\n", what, "steps", "all layers",
                        "last layer only");
  for (size_t s = 0; s < r.all_layers.size() && s < r.last_layer.size(); ++s)
    absl::StrAppendFormat(&out, "%5d  %-18s  %s\n", s, score(r.all_layers[s]), score(r.last_layer[s]));
  if (!r.all_layers.empty() && !r.last_layer.empty()) {
    const MeanCi95 &a = r.all_layers.back(), &l = r.last_layer.back(), &z = r.all_layers.front();
    absl::StrAppendFormat(&out, "\nafter %d steps: all layers %s, last layer only %s (before adapting: %s)\n",
                          r.steps, absl::StripLeadingAsciiWhitespace(score(a)),
                          absl::StripLeadingAsciiWhitespace(score(l)), absl::StripLeadingAsciiWhitespace(score(z)));
    if (pct && a.mean > z.mean)
      absl::StrAppendFormat(&out,
                            "adapting only the last layer recovers %.0f%% of the gain of adapting all layers "
                            "(near 100%%: feature reuse; near 0%%: rapid learning in the body)\n",
                            100 * (l.mean - z.mean) / (a.mean - z.mean));
  }
  return out;
}

plot::Figure AdaptationFigure(const AdaptationReport& r, const std::string& run_name) {
  plot::Figure figure;
  figure.title = absl::StrCat("Adaptation analysis: ", run_name, " at round ", r.round);
  figure.subtitle = absl::StrFormat(
      "%d meta-test episodes; %d steps on minibatches of %d (eval settings); bands and bars: 95%% CI over episodes",
      r.episodes, r.steps, r.batch_size);
  figure.columns = 1;
  figure.panel_width = 900;
  figure.panel_height = 300;
  figure.legend = {{"all layers adapt", 0, false, plot::SeriesStyle::kLine, true},
                   {"only the last layer adapts (the others stay at θ)", 1, true, plot::SeriesStyle::kLine, true}};
  const double scale = r.classification ? 100 : 1;
  plot::Panel steps;
  steps.title = r.classification ? "Query accuracy after each adaptation step" : "Query MSE after each adaptation step";
  steps.x_label = "adaptation steps";
  steps.y_label = r.classification ? "query accuracy (%)" : "query MSE";
  if (r.classification) {
    steps.y_min = 0;
    steps.y_max = 100;
  }
  for (int mode = 0; mode < 2; ++mode) {
    const std::vector<MeanCi95>& values = mode == 0 ? r.all_layers : r.last_layer;
    plot::Series s;
    s.color = mode;
    s.dashed = mode == 1;
    for (size_t i = 0; i < values.size(); ++i) {
      s.x.push_back(static_cast<double>(i));
      s.y.push_back(scale * values[i].mean);
      s.low.push_back(scale * (values[i].mean - values[i].ci95));
      s.high.push_back(scale * (values[i].mean + values[i].ci95));
    }
    steps.series.push_back(s);
  }
  plot::Panel change;
  change.title = "Relative change of each layer, all layers adapting";
  change.x_label = "layer (input to output)";
  change.y_label = "||W − θ|| / ||θ||";
  change.y_min = 0;
  plot::Series bars;
  bars.style = plot::SeriesStyle::kPointsWithBars;
  for (size_t l = 0; l < r.layers.size() && l < r.change.size(); ++l) {
    change.x_categories.push_back(r.layers[l].name);
    bars.x.push_back(static_cast<double>(l));
    bars.y.push_back(r.change[l].mean);
    bars.low.push_back(r.change[l].mean - r.change[l].ci95);
    bars.high.push_back(r.change[l].mean + r.change[l].ci95);
  }
  change.series.push_back(bars);
  figure.panels = {steps, change};
  return figure;
}

}  // namespace reptile
