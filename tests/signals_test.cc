// The stop handler's lifetime guarantee: SetStopHandler() returns only once a
// handler in progress has returned, so what the handler refers to may go.
// One test per process: a second stop signal ends the process.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "cli/signals.h"
#include "gtest/gtest.h"

namespace reptile {
namespace {

TEST(StopSignalsTest, ClearingTheHandlerWaitsForARunningOneAndItMayReplaceItself) {
  InstallStopSignals();
  // Like the engine TrainOn() hands the handler: an object that goes as soon
  // as the handler is cleared.
  struct Engine {
    std::atomic<bool> stop_requested{false};
  };
  auto engine = std::make_unique<Engine>();
  std::atomic<bool> handler_started{false};
  SetStopHandler([&engine, &handler_started] {
    handler_started = true;
    SetStopHandler([] {});  // from within the handler: must not wait for itself
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    engine->stop_requested = true;
  });
  ASSERT_EQ(kill(getpid(), SIGTERM), 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!handler_started && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(handler_started);

  SetStopHandler(nullptr);
  EXPECT_TRUE(engine->stop_requested) << "SetStopHandler(nullptr) returned while the handler was still running";
  engine.reset();
}

}  // namespace
}  // namespace reptile
