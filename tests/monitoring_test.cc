// Prometheus metrics: what the coordinator's metrics make of the round
// engine's reports (in process, serialized as Prometheus reads them), and a
// live run scraped by Debian's real `prometheus` server, checked through its
// HTTP query API.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "monitoring/coordinator_metrics.h"
#include "monitoring/metrics_server.h"
#include "prometheus/text_serializer.h"
#include "tests/deploy_support.h"

namespace reptile {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::ChildProcess;
using testing::FreePort;
using testing::GetList;
using testing::GetString;
using testing::ReadWholeFile;
using testing::TempDir;

// GET http://127.0.0.1:<port><path> over a plain socket (HTTP/1.0: the
// server closes when done). Returns the body, or "" if the request failed.
std::string HttpGet(int port, const std::string& path, int* status = nullptr) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[8192];
      ssize_t n;
      while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
    }
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (status != nullptr) *status = response.size() > 12 ? std::atoi(response.c_str() + 9) : 0;
  return body == std::string::npos ? "" : response.substr(body + 4);
}

std::string UrlEncode(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '_' || c == '-' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

std::string Serialize(const CoordinatorMetrics& metrics) {
  return prometheus::TextSerializer().Serialize(metrics.Collect());
}

// ---- in process -------------------------------------------------------------

TEST(CoordinatorMetricsTest, RoundsEvaluationsAndCheckpointsBecomePrometheusSeries) {
  CoordinatorMetrics metrics;
  metrics.SetRound(7, 100);
  std::string text = Serialize(metrics);
  EXPECT_THAT(text, HasSubstr("reptile_round 7"));
  EXPECT_THAT(text, HasSubstr("reptile_rounds_target 100"));
  // Every refusal reason exists from the start, at 0; no evaluation, training
  // accuracy or checkpoint is reported before there is one.
  for (const char* reason : {"invalid_result", "worker_error", "upload_too_slow", "no_header", "too_many_streams", "other"})
    EXPECT_THAT(text, HasSubstr(absl::StrCat("reptile_results_refused_total{reason=\"", reason, "\"} 0")));
  EXPECT_THAT(text, Not(HasSubstr("reptile_eval_accuracy_ratio{")));
  EXPECT_THAT(text, Not(HasSubstr("reptile_training_accuracy_ratio ")));
  EXPECT_THAT(text, Not(HasSubstr("reptile_last_checkpoint_timestamp_seconds ")));
  EXPECT_THAT(text, HasSubstr("# TYPE reptile_rounds_total counter"));
  EXPECT_THAT(text, HasSubstr("# TYPE reptile_workers_alive gauge"));

  RoundReport report;
  report.round = 8;
  report.rounds = 100;
  report.loss = 1.25;
  report.accuracy = 0.5;
  report.seconds = 0.25;
  report.rounds_per_second = 4;
  report.transport.workers_alive = 3;
  report.transport.tasks_in_flight = 2;
  report.transport.tasks_redone = 5;
  report.transport.workers_evicted = 1;
  report.transport.bytes_in = 1000;
  report.transport.bytes_out = 2000;
  report.transport.results_refused = 4;  // one without a reason
  report.transport.results_refused_by_reason = {{"worker_error", 2}, {"invalid_result", 1}};
  ASSERT_TRUE(metrics.OnRound(report).ok());
  // Counters follow the transport's running counts, never adding twice.
  report.round = 9;
  report.transport.bytes_in = 1500;
  report.transport.results_refused = 5;
  report.transport.results_refused_by_reason = {{"worker_error", 2}, {"invalid_result", 1}, {"upload_too_slow", 1}};
  report.evaluation = EvaluationSummary{10, 0.75, 0.01, 0.625, 0.02, 0.5, 0.1};
  ASSERT_TRUE(metrics.OnRound(report).ok());
  ASSERT_TRUE(metrics.OnCheckpoint(9, absl::FromUnixSeconds(1700000000)).ok());

  text = Serialize(metrics);
  for (const std::string expected :
       {"reptile_round 9", "reptile_rounds_total 2", "reptile_rounds_per_second 4", "reptile_round_duration_seconds 0.25",
        "reptile_training_loss 1.25", "reptile_training_accuracy_ratio 0.5", "reptile_workers_alive 3",
        "reptile_tasks_in_flight 2", "reptile_tasks_redone_total 5", "reptile_workers_evicted_total 1",
        "reptile_received_bytes_total 1500", "reptile_sent_bytes_total 2000",
        "reptile_results_refused_total{reason=\"worker_error\"} 2",
        "reptile_results_refused_total{reason=\"invalid_result\"} 1",
        "reptile_results_refused_total{reason=\"upload_too_slow\"} 1",
        "reptile_results_refused_total{reason=\"other\"} 1",
        "reptile_eval_accuracy_ratio{mode=\"transductive\"} 0.75",
        "reptile_eval_accuracy_ratio{mode=\"non_transductive\"} 0.625", "reptile_eval_loss 0.5",
        "reptile_eval_round 9", "reptile_last_checkpoint_timestamp_seconds 1700000000"})
    EXPECT_THAT(text, HasSubstr(expected + "\n")) << text;
}

TEST(CoordinatorMetricsTest, LiveTransportStatsAreReadAtEachScrape) {
  CoordinatorMetrics metrics;
  TransportStats live;
  live.workers_alive = 4;
  live.bytes_in = 10;
  metrics.SetLiveTransportStats([&live] { return live; });
  EXPECT_THAT(Serialize(metrics), HasSubstr("reptile_workers_alive 4\n"));
  live.workers_alive = 0;  // all gone while a round waits: seen without a round ending
  live.bytes_in = 30;
  const std::string text = Serialize(metrics);
  EXPECT_THAT(text, HasSubstr("reptile_workers_alive 0\n"));
  EXPECT_THAT(text, HasSubstr("reptile_received_bytes_total 30\n"));
}

TEST(MetricsServerTest, ServesTheRegistryOnLoopbackByDefault) {
  EXPECT_EQ(*MetricsListenAddress("9464"), "127.0.0.1:9464");
  EXPECT_EQ(*MetricsListenAddress("0.0.0.0:9464"), "0.0.0.0:9464");
  EXPECT_EQ(*MetricsListenAddress("[::1]:9464"), "[::1]:9464");
  for (const std::string bad : {"", "x", "localhost:9464", "127.0.0.1:99999", "127.0.0.1:"})
    EXPECT_FALSE(MetricsListenAddress(bad).ok()) << bad;

  auto metrics = std::make_shared<CoordinatorMetrics>();
  metrics->SetRound(3, 10);
  absl::StatusOr<std::unique_ptr<MetricsServer>> server = MetricsServer::Start("0");  // any free port
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  EXPECT_EQ((*server)->address(), absl::StrCat("127.0.0.1:", (*server)->port()));
  (*server)->Register(metrics);
  int status = 0;
  const std::string body = HttpGet((*server)->port(), "/metrics", &status);
  EXPECT_EQ(status, 200);
  EXPECT_THAT(body, HasSubstr("reptile_round 3\n"));
  EXPECT_THAT(body, HasSubstr("# TYPE reptile_round gauge\n"));
  HttpGet((*server)->port(), "/", &status);
  EXPECT_EQ(status, 404);
  // A port in use is an error, not an exception.
  absl::StatusOr<std::unique_ptr<MetricsServer>> again = MetricsServer::Start(absl::StrCat((*server)->port()));
  EXPECT_TRUE(absl::IsUnavailable(again.status())) << again.status();
}

// A bad --metrics_listen stops `reptile` before training, in one line.
TEST(MetricsFlagTest, BadOrBusyAddressIsOneLineAndExitOne) {
  const std::string dir = TempDir("bad_address");
  auto listening = MetricsServer::Start("0");
  ASSERT_TRUE(listening.ok()) << listening.status();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"localhost:9464", "the host must be an IP address"},
      {"127.0.0.1:70000", "want PORT or IP:PORT"},
      {absl::StrCat((*listening)->port()), "cannot serve metrics on 127.0.0.1:"}};
  for (const auto& [address, message] : cases) {
    const testing::CommandResult run = testing::RunCommand(
        {REPTILE_BINARY, "train", "--config", testing::SourcePath("configs/sine.textproto"), "--run_dir",
         dir + "/run", "--workers", "1", "runtime.local_workers=THREADS", "--metrics_listen", address},
        dir + "/train");
    EXPECT_EQ(run.exit_code, 1) << address << ": " << run.err;
    EXPECT_THAT(run.err, HasSubstr(message)) << address;
    EXPECT_THAT(run.err, Not(HasSubstr("round 1/"))) << address;
    EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n') - 1, 1) << run.err;  // after the "config ..." line
  }
}

// ---- a live run, scraped by Prometheus -----------------------------------------

constexpr char kPrometheus[] = "/usr/bin/prometheus";

class PrometheusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kPrometheus, X_OK) != 0)
      GTEST_SKIP() << kPrometheus << " is absent: install Debian's `prometheus` package "
                   << "(scripts/install_deps.sh does) to run this test";
    dir_ = TempDir("monitoring");
  }

  // The one value of an instant query's result, or NaN if it has no series
  // (yet). Fails the test if it has several.
  double Query(const std::string& promql) {
    const std::string body = HttpGet(prometheus_port_, "/api/v1/query?query=" + UrlEncode(promql));
    google::protobuf::Value json;
    if (body.empty() || !google::protobuf::util::JsonStringToMessage(body, &json).ok()) return NAN;
    if (GetString(json, "status") != "success") return NAN;
    const std::vector<const google::protobuf::Value*> result = GetList(json, "data.result");
    if (result.empty()) return NAN;
    EXPECT_EQ(result.size(), 1u) << promql << ": " << body;
    const std::vector<const google::protobuf::Value*> value = GetList(*result[0], "value");
    if (value.size() != 2) return NAN;
    return std::atof(value[1]->string_value().c_str());
  }

  // Polls `promql` until `accept` takes its value (within `seconds`).
  bool WaitForQuery(const std::string& promql, const std::function<bool(double)>& accept, int seconds,
                    double* last = nullptr) {
    double value = NAN;
    for (int i = 0; i < seconds * 4; ++i) {
      value = Query(promql);
      if (!std::isnan(value) && accept(value)) break;
      if (coordinator_ != nullptr && !coordinator_->running()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    if (last != nullptr) *last = value;
    return !std::isnan(value) && accept(value);
  }

  std::string dir_;
  int prometheus_port_ = 0;
  std::unique_ptr<ChildProcess> coordinator_;
};

TEST_F(PrometheusTest, PrometheusScrapesALiveRunsCoordinatorAndWorker) {
  // Omniglot (accuracies to report), evaluations and checkpoints every few
  // rounds, and more rounds than the test waits for: it is stopped with SIGTERM.
  const int coordinator_metrics = FreePort(), worker_metrics = FreePort();
  const std::string run_dir = dir_ + "/run";
  int grpc_port = 0;
  coordinator_ = testing::StartListening(
      {REPTILE_BINARY, "coordinator", "--config", testing::SourcePath("configs/demo.textproto"), "--run_dir", run_dir,
       "--listen", "127.0.0.1:0", "--metrics_listen", absl::StrCat(coordinator_metrics),
       "task.data_dir=" + testing::OmniglotDir(), "outer.rounds=100000", "eval.every_rounds=5", "eval.episodes=4",
       "runtime.checkpoint_every_rounds=5", "runtime.heartbeat_seconds=0.3", "runtime.worker_timeout_seconds=1.5"},
      run_dir, dir_ + "/coordinator", &grpc_port);
  ASSERT_GT(grpc_port, 0) << coordinator_->err();
  // The metrics endpoint starts with the training, just after the gRPC
  // port is announced: its line may come a moment later.
  const std::string metrics_line = absl::StrCat("metrics on http://127.0.0.1:", coordinator_metrics, "/metrics");
  for (int i = 0; i < 100 && coordinator_->running() && coordinator_->err().find(metrics_line) == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_THAT(coordinator_->err(), HasSubstr(metrics_line));
  auto worker = testing::StartLoopbackWorker(REPTILE_BINARY, grpc_port, dir_ + "/worker",
                                              {"--metrics_listen", absl::StrCat("127.0.0.1:", worker_metrics)});

  // Prometheus, scraping both every second into a fresh database.
  prometheus_port_ = FreePort();
  const std::string config = dir_ + "/prometheus.yml";
  std::ofstream(config) << absl::StrFormat(
      "global:\n"
      "  scrape_interval: 1s\n"
      "  scrape_timeout: 1s\n"
      "  evaluation_interval: 1s\n"
      "scrape_configs:\n"
      "  - job_name: reptile-coordinator\n"
      "    static_configs:\n"
      "      - targets: ['127.0.0.1:%d']\n"
      "  - job_name: reptile-worker\n"
      "    static_configs:\n"
      "      - targets: ['127.0.0.1:%d']\n",
      coordinator_metrics, worker_metrics);
  auto prometheus = ChildProcess::Start(
      {kPrometheus, "--config.file=" + config, "--storage.tsdb.path=" + dir_ + "/tsdb",
       absl::StrCat("--web.listen-address=127.0.0.1:", prometheus_port_), "--log.level=warn"},
      dir_ + "/prometheus");

  // Both targets up, as Prometheus sees them.
  double value = NAN;
  EXPECT_TRUE(WaitForQuery("up{job=\"reptile-coordinator\"}", [](double v) { return v == 1; }, 60, &value))
      << value << "\n" << prometheus->err() << coordinator_->err();
  EXPECT_TRUE(WaitForQuery("up{job=\"reptile-worker\"}", [](double v) { return v == 1; }, 30, &value))
      << value << "\n" << prometheus->err() << worker->err();

  // Training progresses: rounds, and after round 5 an evaluation and a checkpoint.
  const std::string c = "{job=\"reptile-coordinator\"}";
  EXPECT_TRUE(WaitForQuery("reptile_round" + c, [](double v) { return v >= 12; }, 120, &value))
      << value << "\n" << coordinator_->err();
  EXPECT_TRUE(WaitForQuery("reptile_rounds_total" + c, [](double v) { return v >= 12; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("reptile_rounds_target" + c, [](double v) { return v == 100000; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("reptile_rounds_per_second" + c, [](double v) { return v > 0; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("reptile_round_duration_seconds" + c, [](double v) { return v > 0; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("reptile_training_loss" + c, [](double v) { return v > 0 && v < 10; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("reptile_training_accuracy_ratio" + c, [](double v) { return v >= 0 && v <= 1; }, 10, &value))
      << value;
  for (const char* mode : {"transductive", "non_transductive"})
    EXPECT_TRUE(WaitForQuery(absl::StrCat("reptile_eval_accuracy_ratio{job=\"reptile-coordinator\",mode=\"", mode, "\"}"),
                             [](double v) { return v > 0 && v <= 1; }, 10, &value))
        << mode << " " << value;
  EXPECT_TRUE(WaitForQuery("reptile_eval_round" + c, [](double v) { return v >= 5; }, 10, &value)) << value;
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_TRUE(WaitForQuery("reptile_last_checkpoint_timestamp_seconds" + c,
                           [now](double v) { return v > now - 300 && v < now + 60; }, 10, &value))
      << std::fixed << value << " vs " << now;
  EXPECT_TRUE(WaitForQuery("reptile_workers_alive" + c, [](double v) { return v == 1; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("reptile_tasks_in_flight" + c, [](double v) { return v >= 1; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("reptile_tasks_redone_total" + c, [](double v) { return v >= 0; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("reptile_workers_evicted_total" + c, [](double v) { return v == 0; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("reptile_received_bytes_total" + c, [](double v) { return v > 1e5; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("reptile_sent_bytes_total" + c, [](double v) { return v > 1e5; }, 10, &value)) << value;
  EXPECT_TRUE(WaitForQuery("sum(reptile_results_refused_total" + c + ")", [](double v) { return v == 0; }, 10, &value))
      << value;
  EXPECT_TRUE(WaitForQuery("count(reptile_results_refused_total" + c + ")", [](double v) { return v == 6; }, 10, &value))
      << value;
  // Counters are counters to Prometheus: rate() works on them.
  EXPECT_TRUE(WaitForQuery("rate(reptile_rounds_total" + c + "[5s])", [](double v) { return v > 0; }, 10, &value))
      << value;

  // The worker's own.
  const std::string w = "{job=\"reptile-worker\"";
  EXPECT_TRUE(WaitForQuery("reptile_worker_tasks_total" + w + ",result=\"done\"}", [](double v) { return v >= 30; }, 30,
                           &value))
      << value;
  EXPECT_TRUE(WaitForQuery("reptile_worker_tasks_total" + w + ",result=\"failed\"}", [](double v) { return v == 0; }, 10,
                           &value))
      << value;
  EXPECT_TRUE(WaitForQuery("reptile_worker_compute_seconds_total" + w + "}", [](double v) { return v > 0; }, 10, &value))
      << value;
  EXPECT_TRUE(WaitForQuery("reptile_worker_idle_seconds_total" + w + "}", [](double v) { return v > 0; }, 10, &value))
      << value;
  EXPECT_TRUE(WaitForQuery("reptile_worker_retries_total" + w + "}", [](double v) { return v >= 0; }, 10, &value))
      << value;

  // The worker leaves: the coordinator, waiting for workers in a round that
  // cannot end, still reports it (the transport is read at each scrape).
  worker->Signal(SIGTERM);
  EXPECT_EQ(worker->ExitCode(30), 0) << worker->err();
  EXPECT_TRUE(WaitForQuery("reptile_workers_alive" + c, [](double v) { return v == 0; }, 20, &value)) << value;
  const double round = Query("reptile_round" + c);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(Query("reptile_round" + c), round) << "rounds without workers?";

  coordinator_->Signal(SIGTERM);
  EXPECT_EQ(coordinator_->ExitCode(60), 0) << coordinator_->err();
  prometheus->Signal(SIGTERM);
  EXPECT_EQ(prometheus->ExitCode(30), 0) << prometheus->err();
}

}  // namespace
}  // namespace reptile
