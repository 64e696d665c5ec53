// metrics.jsonl and the progress line, fed the round engine's reports.
#include "coordinator/run_log.h"

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/test_support.h"

namespace reptile::testing {
namespace {

RoundReport Report(int64_t round, double loss) {
  RoundReport report;
  report.round = round;
  report.rounds = 100;
  report.loss = loss;
  report.accuracy = 0.5;
  report.step_size = 0.1;
  report.seconds = 0.25;
  report.rounds_per_second = 4;
  report.transport.workers_alive = 2;
  report.transport.bytes_in = 1000 * round;
  return report;
}

std::vector<std::string> Lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(RunLogTest, WindowsOfRoundsAnEvaluationAndARunEndAsTheyAreWritten) {
  auto dir = RunDirectory::Open(TempDir("run"));
  ASSERT_TRUE(dir.ok()) << dir.status();
  MetricsFile metrics((*dir).get(), 2);
  std::vector<std::string> progress;
  ProgressLine line([&](const std::string& text) { progress.push_back(text); }, 1e9, /*classification=*/true);
  EvaluationSummary eval{10, 0.75, 0.01, 0.625, 0.02, 0.5, 0.1};
  std::vector<RoundReport> reports = {Report(1, 1.0), Report(2, 3.0), Report(3, 2.0)};
  reports[1].evaluation = eval;
  for (const RoundReport& report : reports) {
    for (RoundObserver* observer : std::vector<RoundObserver*>{&metrics, &line})
      ASSERT_TRUE(observer->OnRound(report).ok());
  }
  for (RoundObserver* observer : std::vector<RoundObserver*>{&metrics, &line}) {
    ASSERT_TRUE(observer->OnRunEnd().ok());
    ASSERT_TRUE(observer->OnFinalEvaluation(3, eval).ok());
  }
  EXPECT_EQ(Lines((*dir)->path() + "/metrics.jsonl"),
            (std::vector<std::string>{
                R"({"kind":"round","round":2,"rounds":2,"loss":2,"step_size":0.1,"seconds":0.25,"rounds_per_second":4,"workers":2,"tasks_in_flight":0,"tasks_redone":0,"bytes_in":2000,"bytes_out":0,"accuracy":0.5})",
                R"({"kind":"eval","round":2,"episodes":10,"accuracy":0.75,"accuracy_ci95":0.01,"accuracy_inductive":0.625,"accuracy_inductive_ci95":0.02,"loss":0.5,"loss_ci95":0.1})",
                R"({"kind":"round","round":3,"rounds":1,"loss":2,"step_size":0.1,"seconds":0.25,"rounds_per_second":4,"workers":2,"tasks_in_flight":0,"tasks_redone":0,"bytes_in":3000,"bytes_out":0,"accuracy":0.5})",
                R"({"kind":"final_eval","round":3,"episodes":10,"accuracy":0.75,"accuracy_ci95":0.01,"accuracy_inductive":0.625,"accuracy_inductive_ci95":0.02,"loss":0.5,"loss_ci95":0.1})"}));
  // Lines only at the evaluation (the interval is a billion seconds), with
  // the smoothed loss of rounds 1 and 2, then the final evaluation.
  ASSERT_EQ(progress.size(), 2u);
  EXPECT_EQ(progress[0], "round 2/100  loss 1.1000  train acc 50.0%  eval acc 75.0%  4.0 rounds/s  workers 2  in 0.0 MB out 0.0 MB  ETA 24s");
  EXPECT_TRUE(absl::StartsWith(progress[1], "final evaluation: accuracy 75.00% ± 1.00 (transductive)")) << progress[1];
}

}  // namespace
}  // namespace reptile::testing
