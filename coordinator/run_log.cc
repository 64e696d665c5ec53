#include "coordinator/run_log.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace reptile {
namespace {

std::string FormatDuration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, s / 60 % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string EvaluationLine(absl::string_view kind, int64_t round, const EvaluationSummary& e) {
  return JsonLine(kind)
      .Whole("round", round)
      .Whole("episodes", e.episodes)
      .Number("accuracy", e.accuracy)
      .Number("accuracy_ci95", e.accuracy_ci95)
      .Number("accuracy_inductive", e.accuracy_inductive)
      .Number("accuracy_inductive_ci95", e.accuracy_inductive_ci95)
      .Number("loss", e.loss)
      .Number("loss_ci95", e.loss_ci95)
      .str();
}

}  // namespace

JsonLine::JsonLine(absl::string_view kind) : text_(absl::StrCat(R"({"kind":")", kind, "\"")) {}

JsonLine& JsonLine::Whole(absl::string_view key, int64_t value) {
  absl::StrAppend(&text_, ",\"", key, "\":", value);
  return *this;
}

JsonLine& JsonLine::Number(absl::string_view key, double value) {
  absl::StrAppendFormat(&text_, ",\"%s\":%.6g", key, value);
  return *this;
}

absl::Status MetricsFile::OnRound(const RoundReport& report) {
  ++window_.rounds;
  window_.loss += report.loss;
  window_.seconds += report.seconds;
  if (report.accuracy >= 0) {
    window_.accuracy += report.accuracy;
    ++window_.accuracy_rounds;
  }
  last_ = report;
  if (report.round % every_ == 0 || report.last) {
    if (absl::Status written = WriteWindow(); !written.ok()) return written;
  }
  if (!report.evaluation.has_value()) return absl::OkStatus();
  return run_dir_->AppendMetrics(EvaluationLine("eval", report.round, *report.evaluation));
}

absl::Status MetricsFile::OnFinalEvaluation(int64_t round, const EvaluationSummary& summary) {
  return run_dir_->AppendMetrics(EvaluationLine("final_eval", round, summary));
}

absl::Status MetricsFile::OnRunEnd() { return window_.rounds > 0 ? WriteWindow() : absl::OkStatus(); }

absl::Status MetricsFile::WriteWindow() {
  const double n = static_cast<double>(window_.rounds);
  const TransportStats& t = last_.transport;
  JsonLine line("round");
  line.Whole("round", last_.round)
      .Whole("rounds", window_.rounds)
      .Number("loss", window_.loss / n)
      .Number("step_size", last_.step_size)
      .Number("seconds", window_.seconds / n)
      .Number("rounds_per_second", n / std::max(window_.seconds, 1e-9))
      .Whole("workers", t.workers_alive)
      .Whole("tasks_in_flight", t.tasks_in_flight)
      .Whole("tasks_redone", t.tasks_redone)
      .Whole("bytes_in", t.bytes_in)
      .Whole("bytes_out", t.bytes_out);
  if (window_.accuracy_rounds > 0) line.Number("accuracy", window_.accuracy / window_.accuracy_rounds);
  window_ = Window();
  return run_dir_->AppendMetrics(line.str());
}

absl::Status ProgressLine::OnRound(const RoundReport& report) {
  auto smooth = [](double average, double value) { return average < 0 ? value : 0.95 * average + 0.05 * value; };
  loss_average_ = smooth(loss_average_, report.loss);
  if (report.accuracy >= 0) accuracy_average_ = smooth(accuracy_average_, report.accuracy);
  const auto now = Clock::now();
  const double since_line = std::chrono::duration<double>(now - last_line_).count();
  if (since_line < every_seconds_ && !report.evaluation.has_value() && !report.last) return absl::OkStatus();
  last_line_ = now;
  std::string train = absl::StrFormat("loss %.4f", loss_average_);
  if (accuracy_average_ >= 0) absl::StrAppendFormat(&train, "  train acc %.1f%%", 100 * accuracy_average_);
  if (report.evaluation.has_value())
    absl::StrAppend(&train, classification_ ? absl::StrFormat("  eval acc %.1f%%", 100 * report.evaluation->accuracy)
                                            : absl::StrFormat("  eval MSE %.4f", report.evaluation->loss));
  const TransportStats& t = report.transport;
  std::string workers = absl::StrFormat("workers %d", t.workers_alive);
  if (t.tasks_redone > 0) absl::StrAppendFormat(&workers, "  redone %d", t.tasks_redone);
  if (t.bytes_in + t.bytes_out > 0)
    absl::StrAppendFormat(&workers, "  in %.1f MB out %.1f MB", t.bytes_in / 1e6, t.bytes_out / 1e6);
  const double rate = report.rounds_per_second;
  log_(absl::StrFormat("round %d/%d  %s  %.1f rounds/s  %s  ETA %s", report.round, report.rounds, train, rate,
                       workers, FormatDuration((report.rounds - report.round) / std::max(rate, 1e-9))));
  return absl::OkStatus();
}

absl::Status ProgressLine::OnFinalEvaluation(int64_t round, const EvaluationSummary& summary) {
  log_(absl::StrCat("final evaluation: ", FormatEvaluation(summary, classification_)));
  return absl::OkStatus();
}

absl::Status ProgressLine::OnRunEnd() {
  loss_average_ = accuracy_average_ = -1;
  last_line_ = Clock::now();
  return absl::OkStatus();
}

}  // namespace reptile
