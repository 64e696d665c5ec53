// `reptile plot` and `reptile analyze`: the SVG chart writer, the metrics
// reader and its errors, the learner's adaptation traces, and end to end on
// small real Omniglot runs, with the SVGs rendered by headless Chromium.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "analysis/run_metrics.h"
#include "analysis/training_curves.h"
#include "core/data/png_reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "plot/chart.h"
#include "tests/test_support.h"
#include "worker/learner.h"

namespace reptile {
namespace {

using ::testing::DoubleNear;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pointwise;

using Result = testing::ShellResult;
using testing::RunReptile;
using testing::Shell;

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// ---- the chart writer -------------------------------------------------------

TEST(ChartTest, NiceTicksAreRoundAndCoverTheRange) {
  auto near = [](std::vector<double> expected) { return Pointwise(DoubleNear(1e-12), expected); };
  EXPECT_THAT(plot::NiceTicks(0, 1, 6), near({0, 0.2, 0.4, 0.6, 0.8, 1}));
  EXPECT_THAT(plot::NiceTicks(100, 31000, 8), near({0, 5000, 10000, 15000, 20000, 25000, 30000, 35000}));
  EXPECT_THAT(plot::NiceTicks(0.37, 0.81, 6), near({0.2, 0.4, 0.6, 0.8, 1.0}));
  const std::vector<double> one = plot::NiceTicks(2, 2, 5);  // one value: a range around it
  ASSERT_GE(one.size(), 2u);
  EXPECT_LT(one.front(), 2);
  EXPECT_GT(one.back(), 2);
  for (double lo : {-3.7, 0.0, 1e-4, 12.0})
    for (double span : {1e-3, 0.5, 7.0, 123456.0}) {
      const std::vector<double> t = plot::NiceTicks(lo, lo + span, 7);
      ASSERT_GE(t.size(), 2u);
      EXPECT_LE(t.size(), 7u);
      EXPECT_LE(t.front(), lo);
      EXPECT_GE(t.back(), lo + span - 1e-12);
    }
}

TEST(ChartTest, TickLabelsUseAsFewDecimalsAsTheStepNeeds) {
  EXPECT_EQ(plot::FormatTick(30000, 5000), "30k");
  EXPECT_EQ(plot::FormatTick(2500, 500), "2500");
  EXPECT_EQ(plot::FormatTick(0.25, 0.05), "0.25");
  EXPECT_EQ(plot::FormatTick(2.5, 2.5), "2.5");
  EXPECT_EQ(plot::FormatTick(40, 20), "40");
  EXPECT_EQ(plot::FormatTick(1.5e6, 5e5), "1.5M");
  EXPECT_EQ(plot::FormatTick(1e6, 5e5), "1.0M");
  EXPECT_EQ(plot::FormatTick(0, 5000), "0");
  EXPECT_EQ(plot::FormatTick(-0.5, 0.25), "-0.50");
  EXPECT_EQ(plot::FormatTick(0, 0.01), "0.00");
}

TEST(ChartTest, SvgHasTitlesLabelsLegendAndEscapesText) {
  plot::Figure figure;
  figure.title = "A <b> & \"c\"";
  figure.legend = {{"run one", 0}, {"run two", 1, true}};
  plot::Panel panel;
  panel.title = "Loss";
  panel.x_label = "round";
  panel.y_label = "loss (nats)";
  panel.series.push_back({{0, 1, 2, 3}, {3, 2, 1.5, 1}});
  panel.series.push_back({{0, 1, 2, 3}, {3.2, 2.4, 1.8, 1.2}, {3, 2.2, 1.6, 1}, {3.4, 2.6, 2, 1.4}, 1});
  plot::Panel empty;
  empty.title = "Nothing";
  empty.empty_note = "no data here";
  figure.panels = {panel, empty};
  const std::string svg = plot::RenderSvg(figure);
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_THAT(svg, HasSubstr("</svg>"));
  EXPECT_THAT(svg, HasSubstr("A &lt;b&gt; &amp; &quot;c&quot;"));
  for (const char* text : {">Loss<", ">round<", ">loss (nats)<", ">run one<", ">run two<", ">no data here<",
                           "<polygon", "stroke-dasharray"})
    EXPECT_THAT(svg, HasSubstr(text));
}

// Found by fuzz/metrics_fuzzer (fuzz/regressions/metrics_fuzzer/workers_beyond_int):
// a count of workers past int's range made the integer axis overflow.
TEST(ChartTest, ExtremeAndDegenerateValuesStillRender) {
  const double kNan = std::numeric_limits<double>::quiet_NaN();
  for (const std::vector<double>& ys : std::vector<std::vector<double>>{
           {2.9e80, 2}, {1e308, -1e308}, {5, 5}, {kNan, 1}, {-3, -7}, {-2.9e31, -2.9e31}, {0, 1e-300}}) {
    plot::Panel panel;
    panel.y_integer = true;
    panel.y_min = 0;
    panel.series.push_back({{0, 1e300}, ys});
    plot::Panel free = panel;
    free.y_integer = false;
    free.y_min.reset();
    plot::Figure figure;
    figure.panels = {panel, free};
    EXPECT_THAT(plot::RenderSvg(figure), HasSubstr("</svg>"));
  }
  EXPECT_EQ(plot::NiceTicks(-1e308, 1e308, 5).size(), 2u);
}

// ---- metrics.jsonl ----------------------------------------------------------

TEST(RunMetricsTest, ParsesFlatJsonAndSaysWhereItIsMalformed) {
  absl::StatusOr<FlatJsonObject> ok = ParseFlatJsonObject(R"({"kind":"round", "round":3,"x":-1.5e-3,"b":true,"n":null})");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(std::get<std::string>(ok->at("kind")), "round");
  EXPECT_EQ(std::get<double>(ok->at("round")), 3);
  EXPECT_EQ(std::get<double>(ok->at("x")), -1.5e-3);
  EXPECT_EQ(std::get<double>(ok->at("b")), 1);
  EXPECT_THAT(ParseFlatJsonObject(R"({"a":1,})").status().message(), HasSubstr("column 8: expected a string key"));
  EXPECT_THAT(ParseFlatJsonObject(R"({"a":[1]})").status().message(), HasSubstr("flat"));
  EXPECT_THAT(ParseFlatJsonObject(R"({"a":1} x)").status().message(), HasSubstr("end of the line"));
  EXPECT_THAT(ParseFlatJsonObject(R"({"a":1.2.3})").status().message(), HasSubstr("a number"));
  EXPECT_FALSE(ParseFlatJsonObject("").ok());
}

TEST(RunMetricsTest, ReadsRoundsEvaluationsAndWallTime) {
  const std::string dir = testing::TempDir("CARRY");
  WriteFile(dir + "/metrics.jsonl",
            R"({"kind":"round","round":10,"rounds":10,"loss":1.5,"step_size":1,"seconds":0.5,"rounds_per_second":2,"workers":2,"accuracy":0.4})"
            "\n"
            R"({"kind":"eval","round":10,"episodes":20,"accuracy":0.5,"accuracy_ci95":0.1,"accuracy_inductive":0.45,"loss":1.2})"
            "\n"
            R"({"kind":"something_new","round":10})"
            "\n"
            R"({"kind":"round","round":30,"rounds":20,"loss":1.0,"step_size":1,"seconds":0.25,"rounds_per_second":4,"workers":3,"accuracy":0.6})"
            "\n"
            R"({"kind":"final_eval","round":30,"episodes":100,"accuracy":0.7,"accuracy_ci95":0.05,"accuracy_inductive":0.6,"accuracy_inductive_ci95":0.06,"loss":0.9,"loss_ci95":0.1})"
            "\n"
            R"({"kind":"round","round":40,"rou)");  // torn: being written
  absl::StatusOr<RunMetrics> run = ReadRunMetrics(dir);
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(run->name, "CARRY");
  EXPECT_TRUE(run->classification);
  ASSERT_EQ(run->rounds.size(), 2u);
  EXPECT_EQ(run->rounds[1].round, 30);
  EXPECT_DOUBLE_EQ(run->rounds[0].wall_seconds, 5);
  EXPECT_DOUBLE_EQ(run->rounds[1].wall_seconds, 10);
  EXPECT_EQ(run->rounds[1].workers, 3);
  ASSERT_EQ(run->evals.size(), 1u);
  EXPECT_TRUE(std::isnan(run->evals[0].accuracy_inductive_ci95));  // older eval lines lack it
  ASSERT_TRUE(run->final_eval.has_value());
  EXPECT_DOUBLE_EQ(run->final_eval->accuracy_inductive_ci95, 0.06);

  // Overlaid with a second run, each run gets its colour and legend entry.
  RunMetrics other = *run;
  other.name = "RESET";
  const plot::Figure figure = TrainingCurvesFigure({*run, other});
  EXPECT_EQ(figure.panels.size(), 8u);
  EXPECT_THAT(figure.legend[0].label, HasSubstr("CARRY"));
  EXPECT_THAT(figure.legend[1].label, HasSubstr("RESET"));
  EXPECT_EQ(figure.legend[1].color, 1);
  EXPECT_THAT(figure.title, HasSubstr("CARRY vs RESET"));
}

TEST(RunMetricsTest, ErrorsNameTheFileAndLine) {
  const std::string dir = testing::TempDir("run");
  absl::StatusOr<RunMetrics> missing = ReadRunMetrics(dir + "/nope");
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_THAT(missing.status().message(), HasSubstr(dir + "/nope/metrics.jsonl"));

  WriteFile(dir + "/metrics.jsonl", "");
  absl::StatusOr<RunMetrics> empty = ReadRunMetrics(dir);
  EXPECT_TRUE(absl::IsInvalidArgument(empty.status()));
  EXPECT_THAT(empty.status().message(), HasSubstr(dir + "/metrics.jsonl: no metrics lines (empty file)"));

  WriteFile(dir + "/metrics.jsonl",
            R"({"kind":"round","round":1,"rounds":1,"loss":1,"seconds":1,"rounds_per_second":1})"
            "\n{\"kind\":\"round\",\"round\":2 oops}\n");
  EXPECT_THAT(ReadRunMetrics(dir).status().message(),
              HasSubstr(dir + "/metrics.jsonl:2: column 27: expected ',' or '}'"));

  WriteFile(dir + "/metrics.jsonl", "\n" R"({"kind":"eval","round":1,"accuracy":0.5})" "\n");
  EXPECT_THAT(ReadRunMetrics(dir).status().message(),
              HasSubstr(dir + "/metrics.jsonl:2: missing field \"episodes\""));
}

TEST(RunMetricsTest, ValuesNoRunWritesAreRefusedNamingTheFileLineAndField) {
  const std::string dir = testing::TempDir("run");
  const std::string round = R"({"kind":"round","round":1,"rounds":1,"loss":1,"seconds":1,"rounds_per_second":1)";
  const std::string eval = R"({"kind":"eval","round":1,"episodes":2,"loss":1)";
  const struct {
    std::string line, error;
  } cases[] = {
      {round + R"(,"workers":-28888888888888888888888888888888})", R"(field "workers" is -2.88889e+31, not a number in [0, 1e+06])"},
      {round + R"(,"workers":2.5})", R"(field "workers" is 2.5, not a whole number)"},
      {round + R"(,"workers":3e6})", R"(field "workers" is 3e+06)"},
      {round + R"(,"accuracy":1.5})", R"(field "accuracy" is 1.5, not a number in [0, 1])"},
      {R"({"kind":"round","round":1,"rounds":1,"loss":1e300,"seconds":1,"rounds_per_second":1})", R"(field "loss" is 1e+300)"},
      {R"({"kind":"round","round":1,"rounds":1,"loss":null,"seconds":1,"rounds_per_second":1})", R"(field "loss" is nan)"},
      {R"({"kind":"round","round":1,"rounds":1,"loss":1,"seconds":-1,"rounds_per_second":1})", R"(field "seconds" is -1)"},
      {R"({"kind":"round","round":-1,"rounds":1,"loss":1,"seconds":1,"rounds_per_second":1})", R"(field "round" is -1)"},
      {R"({"kind":"round","round":1,"rounds":1e300,"loss":1,"seconds":1,"rounds_per_second":1})", R"(field "rounds" is 1e+300)"},
      {R"({"kind":"eval","round":1,"episodes":1e10,"loss":1})", R"(field "episodes" is 1e+10)"},
      {eval + R"(,"accuracy_ci95":-0.1})", R"(field "accuracy_ci95" is -0.1)"},
      {eval + R"(,"loss_ci95":1e999})", R"(field "loss_ci95" is inf)"},
  };
  for (const auto& c : cases) {
    WriteFile(dir + "/metrics.jsonl", round + "}\n" + c.line + "\n");
    EXPECT_THAT(ReadRunMetrics(dir).status().message(), HasSubstr(absl::StrCat(dir, "/metrics.jsonl:2: ", c.error)))
        << c.line;
  }
  // Optional fields may be null; sine evaluations write accuracies of 0.
  WriteFile(dir + "/metrics.jsonl", round + R"(,"workers":null,"accuracy":null})" "\n" + eval +
                                        R"(,"accuracy":0,"accuracy_ci95":0,"loss_ci95":null})" "\n");
  absl::StatusOr<RunMetrics> run = ReadRunMetrics(dir);
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_TRUE(std::isnan(run->rounds[0].workers));
  EXPECT_FALSE(run->classification);
}

TEST(RunMetricsTest, EveryShippedRunReads) {
  for (const char* name : {"omniglot_5w1s", "omniglot_5w5s", "omniglot_20w1s"}) {
    absl::StatusOr<RunMetrics> run = ReadRunMetrics(absl::StrCat(REPTILE_SOURCE_DIR, "/models/", name));
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_TRUE(run->final_eval.has_value()) << name;
  }
}

// ---- the learner's adaptation traces ----------------------------------------

TEST(AdaptationTraceTest, LastLayerOnlyLeavesTheBodyAtThetaAndTheFinalStepIsTheEvaluation) {
  const ExperimentConfig config = testing::LoadNamedConfig("sine", {"eval.inner_iterations=7"});
  std::shared_ptr<const TaskSource> tasks = testing::SharedTaskSource(config);
  absl::StatusOr<std::unique_ptr<Learner>> learner = Learner::Create(config, tasks);
  ASSERT_TRUE(learner.ok()) << learner.status();
  MetaState state;
  state.parameters = torch::randn({(*learner)->num_parameters()}) * 0.3;
  TaskSpec spec;
  spec.set_family(SINE);
  spec.set_meta_test(true);
  spec.set_seed(42);
  spec.set_support_shots(config.task().eval_shots());
  spec.set_query_shots(config.task().sine_query_points());
  WorkItem item;
  item.kind = WorkKind::kEvaluate;
  item.tasks = {spec};

  absl::StatusOr<AdaptationTrace> all = (*learner)->TraceAdaptation(state, spec, AdaptedLayers::kAll);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->loss.size(), 8u);  // before the first step, then after each
  EXPECT_TRUE(all->accuracy.empty());
  const std::vector<LayerSpan> layers = LayersOf((*learner)->layout());
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_EQ(layers[0].name, "hidden1");
  EXPECT_EQ(layers[2].name, "out");
  EXPECT_EQ(layers[2].parameters, 65);
  ASSERT_EQ(all->relative_change.size(), 3u);
  for (double c : all->relative_change) EXPECT_GT(c, 0);

  absl::StatusOr<TaskResult> evaluated = (*learner)->Run(state, item);
  ASSERT_TRUE(evaluated.ok()) << evaluated.status();
  EXPECT_EQ(evaluated->loss, all->loss.back());

  absl::StatusOr<AdaptationTrace> last = (*learner)->TraceAdaptation(state, spec, AdaptedLayers::kLastOnly);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->relative_change[0], 0);
  EXPECT_EQ(last->relative_change[1], 0);
  EXPECT_GT(last->relative_change[2], 0);
  EXPECT_EQ(last->loss.front(), all->loss.front());
  EXPECT_NE(last->loss.back(), all->loss.back());

  spec.set_meta_test(false);  // a training task
  EXPECT_TRUE(absl::IsInvalidArgument((*learner)->TraceAdaptation(state, spec, AdaptedLayers::kAll).status()));
}

// ---- end to end: real runs, rendered by Chromium ------------------------------

std::string Chromium() {
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
    Result which = Shell(absl::StrCat("command -v ", name));
    if (which.exit_code == 0) return name;
  }
  return "";
}

// Renders `svg` with headless Chromium: a screenshot `png` and the DOM as
// Chromium parsed it.
std::string RenderInChromium(const std::string& chromium, const std::string& svg, const std::string& png,
                             int width, int height) {
  const std::string profile = std::filesystem::path(png).parent_path().string() + "/chromium-profile";
  const std::string flags = absl::StrCat("--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars "
                                         "--no-first-run --user-data-dir=", profile);
  Result shot = Shell(absl::StrCat(chromium, " ", flags, " --window-size=", width, ",", height,
                                   " --screenshot=", png, " file://", svg));
  EXPECT_EQ(shot.exit_code, 0) << shot.output;
  Result dom = Shell(absl::StrCat(chromium, " ", flags, " --dump-dom file://", svg, " 2>/dev/null"));
  EXPECT_EQ(dom.exit_code, 0) << dom.output;
  // Chromium shows malformed XML as a page of parser errors.
  EXPECT_THAT(dom.output, Not(HasSubstr("This page contains the following errors")));
  return dom.output;
}

// The screenshot is a picture, not a blank page: many grey levels, some ink
// but mostly white paper.
void ExpectDrawn(const std::string& png) {
  absl::StatusOr<DecodedImage> image = ReadPngFile(png, 1);
  ASSERT_TRUE(image.ok()) << image.status();
  std::set<uint8_t> levels;
  int64_t ink = 0;
  for (uint8_t p : image->pixels) {
    levels.insert(p);
    ink += p < 200;
  }
  const double ink_fraction = static_cast<double>(ink) / static_cast<double>(image->pixels.size());
  EXPECT_GE(levels.size(), 20u) << png;
  EXPECT_GT(ink_fraction, 0.005) << png;
  EXPECT_LT(ink_fraction, 0.5) << png;
}

class PlotEndToEndTest : public ::testing::Test {
 protected:
  // Two tiny Omniglot runs, CARRY and RESET, trained once for all tests of
  // this process (ctest runs each test in a process of its own, two at a
  // time: hence the pid in the folder).
  static void SetUpTestSuite() {
    root_ = new std::string(std::filesystem::path(::testing::TempDir()) / testing::TestTreeFolder() /
                            absl::StrCat("PlotEndToEnd.", getpid()));
    std::filesystem::remove_all(*root_);
    std::filesystem::create_directories(*root_);
    for (const char* mode : {"CARRY", "RESET"}) {
      Result train = RunReptile(absl::StrCat(
          "train --run_dir ", *root_, "/", mode, " --config configs/omniglot_5w1s.textproto task.data_dir=",
          testing::OmniglotDir(), " inner.state_mode=", mode,
          " outer.rounds=40 eval.every_rounds=10 eval.episodes=10 eval.final_episodes=20 eval.inner_iterations=10"
          " runtime.metrics_every_rounds=2 runtime.checkpoint_every_rounds=0 runtime.local_workers=THREADS"));
      ASSERT_EQ(train.exit_code, 0) << train.output;
    }
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*root_);
    delete root_;
  }
  static std::string* root_;
};
std::string* PlotEndToEndTest::root_ = nullptr;

TEST_F(PlotEndToEndTest, PlotOverlaysTwoRunsAndChromiumRendersIt) {
  const std::string svg = *root_ + "/curves.svg";
  Result plot = RunReptile(absl::StrCat("plot --run_dir ", *root_, "/CARRY --run_dir ", *root_, "/RESET --out ", svg));
  ASSERT_EQ(plot.exit_code, 0) << plot.output;
  EXPECT_THAT(plot.output, HasSubstr("CARRY: 20 round lines, 3 evaluations and the final one"));
  const std::string text = ReadFile(svg);
  for (const char* expected : {"CARRY (round 40", "RESET (round 40", "Evaluation accuracy, transductive",
                               "Evaluation accuracy, inductive", "rounds/s", "training wall time (s)"})
    EXPECT_THAT(text, HasSubstr(expected));

  const std::string chromium = Chromium();
  if (chromium.empty()) GTEST_SKIP() << "chromium is not installed (apt-get install chromium): SVG not rendered";
  const std::string png = *root_ + "/curves.png";
  const std::string dom = RenderInChromium(chromium, svg, png, 1000, 1250);
  EXPECT_THAT(dom, HasSubstr("<svg"));
  EXPECT_THAT(dom, HasSubstr("Training accuracy"));
  EXPECT_THAT(dom, HasSubstr("RESET"));
  ExpectDrawn(png);
}

TEST_F(PlotEndToEndTest, AnalyzePrintsTablesAndDrawsThem) {
  const std::string svg = *root_ + "/analysis.svg";
  Result analyze = RunReptile(absl::StrCat("analyze --run_dir ", *root_, "/CARRY --episodes 12 --workers 1 --out ", svg));
  ASSERT_EQ(analyze.exit_code, 0) << analyze.output;
  for (const char* expected : {"round 40: 12 meta-test episodes, 10 adaptation steps", "conv0", "norm3",
                               "classifier", "all layers", "last layer only", "   10  ", "wrote " })
    EXPECT_THAT(analyze.output, HasSubstr(expected));
  // The episodes' results do not depend on how many threads share them.
  Result threads = RunReptile(absl::StrCat("analyze --run_dir ", *root_, "/CARRY --episodes 12 --workers 3 --out ",
                                           *root_, "/analysis3.svg"));
  ASSERT_EQ(threads.exit_code, 0) << threads.output;
  EXPECT_EQ(ReadFile(*root_ + "/analysis3.svg"), ReadFile(svg));
  const std::string text = ReadFile(svg);
  EXPECT_THAT(text, HasSubstr("Query accuracy after each adaptation step"));
  EXPECT_THAT(text, HasSubstr(">classifier<"));

  const std::string chromium = Chromium();
  if (chromium.empty()) GTEST_SKIP() << "chromium is not installed (apt-get install chromium): SVG not rendered";
  const std::string png = *root_ + "/analysis.png";
  const std::string dom = RenderInChromium(chromium, svg, png, 950, 800);
  EXPECT_THAT(dom, HasSubstr("only the last layer adapts"));
  ExpectDrawn(png);
}

TEST(PlotCommandTest, BadRunDirectoriesAreOneLineNamingTheFile) {
  const std::string good = testing::TempDir("good"), empty = testing::TempDir("empty");
  WriteFile(good + "/metrics.jsonl",
            R"({"kind":"round","round":1,"rounds":1,"loss":1,"seconds":1,"rounds_per_second":1,"workers":1})" "\n");
  Result missing = RunReptile(absl::StrCat("plot --run_dir ", good, " --run_dir ", empty, " --out ", empty, "/x.svg"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.output, HasSubstr(absl::StrCat("reptile plot: error: ", empty, "/metrics.jsonl: cannot open")));
  EXPECT_FALSE(std::filesystem::exists(empty + "/x.svg"));
  WriteFile(empty + "/metrics.jsonl", "{\"kind\":\"round\",\n");
  Result malformed = RunReptile(absl::StrCat("plot --run_dir ", empty, " --out ", empty, "/x.svg"));
  EXPECT_EQ(malformed.exit_code, 1);
  EXPECT_THAT(malformed.output, HasSubstr(absl::StrCat(empty, "/metrics.jsonl:1: column 17: expected a string key, found the end of the line")));
  // The fuzzer's find (fuzz/regressions/metrics_fuzzer), through the CLI.
  std::filesystem::copy_file(absl::StrCat(REPTILE_SOURCE_DIR, "/fuzz/regressions/metrics_fuzzer/workers_negative_huge"),
                             empty + "/metrics.jsonl", std::filesystem::copy_options::overwrite_existing);
  Result hostile = RunReptile(absl::StrCat("plot --run_dir ", empty, " --out ", empty, "/x.svg"));
  EXPECT_EQ(hostile.exit_code, 1);
  EXPECT_THAT(hostile.output, HasSubstr(absl::StrCat("reptile plot: error: ", empty,
                                                     R"(/metrics.jsonl:1: field "workers" is -2.88889e+31, not a number in [0, 1e+06])")));
  EXPECT_FALSE(std::filesystem::exists(empty + "/x.svg"));
  Result no_out = RunReptile(absl::StrCat("plot --run_dir ", good));
  EXPECT_EQ(no_out.exit_code, 1);
  EXPECT_THAT(no_out.output, HasSubstr("--out"));
  Result plotted = RunReptile(absl::StrCat("plot --run_dir ", good, " --out ", good, "/x.svg"));
  EXPECT_EQ(plotted.exit_code, 0) << plotted.output;
  EXPECT_THAT(ReadFile(good + "/x.svg"), HasSubstr("no evaluations recorded"));
}

}  // namespace
}  // namespace reptile
