#include "analysis/training_curves.h"

#include <algorithm>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace reptile {
namespace {

using plot::Panel;
using plot::Series;
using plot::SeriesStyle;

constexpr int kKeyColor = 8;  // grey, for the legend's style entries

// Wall time in the unit that suits the longest run.
struct TimeUnit {
  double seconds;
  const char* name;
};
TimeUnit UnitFor(double longest_seconds) {
  if (longest_seconds >= 3 * 3600) return {3600, "h"};
  if (longest_seconds >= 300) return {60, "min"};
  return {1, "s"};
}

// Means over consecutive buckets, so that a long run with a line per round
// stays a light SVG; at most kMaxPointsPerSeries points.
Series Thinned(Series s) {
  const size_t n = s.x.size();
  if (n <= static_cast<size_t>(kMaxPointsPerSeries)) return s;
  const size_t bucket = (n + kMaxPointsPerSeries - 1) / kMaxPointsPerSeries;
  Series out = s;
  out.x.clear();
  out.y.clear();
  for (size_t i = 0; i < n; i += bucket) {
    double sx = 0, sy = 0;
    int count = 0;
    for (size_t j = i; j < std::min(n, i + bucket); ++j) {
      if (!std::isfinite(s.x[j]) || !std::isfinite(s.y[j])) continue;
      sx += s.x[j];
      sy += s.y[j];
      ++count;
    }
    out.x.push_back(count > 0 ? sx / count : kMissing);
    out.y.push_back(count > 0 ? sy / count : kMissing);
  }
  return out;
}

// A series of round lines: `y` of each line against its round, or against
// its wall time in `unit`.
Series RoundSeries(const RunMetrics& run, int color, const std::function<double(const RoundMetrics&)>& y,
                   const TimeUnit* unit = nullptr) {
  Series s;
  s.color = color;
  int64_t previous = -1;
  for (const RoundMetrics& m : run.rounds) {
    // Rounds with no line (metrics lost): a break in the line against rounds.
    if (unit == nullptr && previous >= 0 && m.round - m.rounds != previous) {
      s.x.push_back(kMissing);
      s.y.push_back(kMissing);
    }
    previous = m.round;
    s.x.push_back(unit != nullptr ? m.wall_seconds / unit->seconds : static_cast<double>(m.round));
    s.y.push_back(y(m));
  }
  return Thinned(std::move(s));
}

// Evaluation lines as a line with a 95% band, and the final evaluation as a
// diamond with error bars, in percent (or raw, for losses).
// Final evaluations of several runs at one round would hide each other:
// each is shifted by `final_shift` rounds.
void AddEvaluation(const RunMetrics& run, int color, double final_shift, double scale, double EvalMetrics::*mean,
                   double EvalMetrics::*ci95, Panel* panel) {
  Series line;
  line.color = color;
  line.style = SeriesStyle::kLineAndMarkers;
  // Evaluations come every eval.every_rounds: a longer interval means lines
  // were lost, and the line breaks there.
  int64_t interval = 0;
  for (size_t i = 1; i < run.evals.size(); ++i) {
    const int64_t d = run.evals[i].round - run.evals[i - 1].round;
    if (d > 0 && (interval == 0 || d < interval)) interval = d;
  }
  for (size_t i = 0; i < run.evals.size(); ++i) {
    const EvalMetrics& e = run.evals[i];
    if (i > 0 && interval > 0 && e.round - run.evals[i - 1].round > interval + interval / 2) {
      for (std::vector<double>* v : {&line.x, &line.y, &line.low, &line.high}) v->push_back(kMissing);
    }
    line.x.push_back(static_cast<double>(e.round));
    line.y.push_back(scale * (e.*mean));
    line.low.push_back(scale * (e.*mean - e.*ci95));
    line.high.push_back(scale * (e.*mean + e.*ci95));
  }
  panel->series.push_back(line);
  if (run.final_eval) {
    const EvalMetrics& f = *run.final_eval;
    Series point;
    point.color = color;
    point.style = SeriesStyle::kPointsWithBars;
    point.x = {static_cast<double>(f.round) + final_shift};
    point.y = {scale * (f.*mean)};
    point.low = {scale * (f.*mean - f.*ci95)};
    point.high = {scale * (f.*mean + f.*ci95)};
    panel->series.push_back(point);
  }
}

Panel MakePanel(std::string title, std::string x_label, std::string y_label, std::string empty_note = "no data") {
  Panel p;
  p.title = std::move(title);
  p.x_label = std::move(x_label);
  p.y_label = std::move(y_label);
  p.empty_note = std::move(empty_note);
  return p;
}

std::string RunLabel(const RunMetrics& run, bool percent) {
  std::string label = run.name;
  if (!run.rounds.empty()) absl::StrAppend(&label, " (round ", run.rounds.back().round);
  if (run.final_eval && percent && std::isfinite(run.final_eval->accuracy)) {
    absl::StrAppendFormat(&label, ", final %.1f%%", 100 * run.final_eval->accuracy);
  } else if (run.final_eval && !percent) {
    absl::StrAppendFormat(&label, ", final MSE %.3g", run.final_eval->loss);
  }
  if (!run.rounds.empty()) label += ")";
  return label;
}

// The figure of `runs` without its panels: title, subtitle and legend.
plot::Figure FigureOf(const std::vector<RunMetrics>& runs, bool classification) {
  std::vector<std::string> names;
  for (const RunMetrics& run : runs) names.push_back(run.name);
  plot::Figure figure;
  figure.title = absl::StrCat("Reptile training: ", absl::StrJoin(names, " vs "));
  figure.subtitle =
      "Round lines are means over each metrics window; wall time sums training rounds only (evaluations excluded).";
  for (size_t r = 0; r < runs.size(); ++r)
    figure.legend.push_back({RunLabel(runs[r], classification), static_cast<int>(r)});
  figure.legend.push_back({"evaluation, 95% band", kKeyColor, false, SeriesStyle::kLineAndMarkers, true});
  figure.legend.push_back({"final evaluation ± 95%", kKeyColor, false, SeriesStyle::kPointsWithBars});
  return figure;
}

}  // namespace

plot::Figure TrainingCurvesFigure(const std::vector<RunMetrics>& runs) {
  bool classification = false;
  double longest = 0, last_round = 0;
  for (const RunMetrics& run : runs) {
    classification = classification || run.classification;
    if (!run.rounds.empty()) {
      longest = std::max(longest, run.rounds.back().wall_seconds);
      last_round = std::max(last_round, static_cast<double>(run.rounds.back().round));
    }
  }
  const TimeUnit unit = UnitFor(longest);
  const std::string wall_label = absl::StrCat("training wall time (", unit.name, ")");
  plot::Figure figure = FigureOf(runs, classification);

  Panel loss = MakePanel("Training loss", "round", classification ? "inner-loop loss (cross-entropy)" : "inner-loop loss (MSE)");
  Panel train_accuracy = MakePanel("Training accuracy", "round", "inner minibatch accuracy (%)",
                                   "no accuracy: regression runs");
  Panel transductive = MakePanel("Evaluation accuracy, transductive", "round", "query accuracy (%)",
                                 "no evaluations recorded");
  Panel inductive = MakePanel("Evaluation accuracy, inductive (non-transductive)", "round", "query accuracy (%)",
                              "no evaluations recorded");
  Panel eval_loss = MakePanel("Evaluation query loss", "round", "query MSE", "no evaluations recorded");
  Panel speed = MakePanel("Speed", "round", "rounds/s");
  Panel speed_time = MakePanel("Speed over time", wall_label, "rounds/s");
  Panel workers = MakePanel("Workers", "round", "workers alive");
  Panel workers_time = MakePanel("Workers over time", wall_label, "workers alive");
  for (Panel* p : {&loss, &train_accuracy, &transductive, &inductive, &eval_loss, &speed, &workers}) p->x_include = 0;
  for (Panel* p : {&speed_time, &workers_time}) p->x_include = 0;
  speed.y_min = speed_time.y_min = 0;
  workers.y_min = workers_time.y_min = 0;
  workers.y_integer = workers_time.y_integer = true;
  for (size_t r = 0; r < runs.size(); ++r) {
    const RunMetrics& run = runs[r];
    const int color = static_cast<int>(r);
    const double shift = 0.012 * last_round * (static_cast<double>(r) - (runs.size() - 1) / 2.0);
    loss.series.push_back(RoundSeries(run, color, [](const RoundMetrics& m) { return m.loss; }));
    train_accuracy.series.push_back(RoundSeries(run, color, [](const RoundMetrics& m) { return 100 * m.accuracy; }));
    AddEvaluation(run, color, shift, 100, &EvalMetrics::accuracy, &EvalMetrics::accuracy_ci95, &transductive);
    AddEvaluation(run, color, shift, 100, &EvalMetrics::accuracy_inductive, &EvalMetrics::accuracy_inductive_ci95,
                  &inductive);
    AddEvaluation(run, color, shift, 1, &EvalMetrics::loss, &EvalMetrics::loss_ci95, &eval_loss);
    auto rate = [](const RoundMetrics& m) { return m.rounds_per_second; };
    auto alive = [](const RoundMetrics& m) { return m.workers; };
    speed.series.push_back(RoundSeries(run, color, rate));
    speed_time.series.push_back(RoundSeries(run, color, rate, &unit));
    workers.series.push_back(RoundSeries(run, color, alive));
    workers_time.series.push_back(RoundSeries(run, color, alive, &unit));
  }
  if (classification) {
    figure.panels = {loss, train_accuracy, transductive, inductive, speed, speed_time, workers, workers_time};
  } else {
    figure.panels = {loss, eval_loss, speed, speed_time, workers, workers_time};
  }
  return figure;
}

}  // namespace reptile
