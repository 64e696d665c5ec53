#include "cli/signals.h"

#include <pthread.h>
#include <signal.h>

#include <cstdlib>
#include <mutex>
#include <thread>

namespace reptile {
namespace {

std::mutex handler_mutex;
std::function<void()> stop_handler;
bool stop_requested = false;

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

void WaitForSignals() {
  const sigset_t set = StopSignals();
  while (true) {
    int signal_number = 0;
    if (sigwait(&set, &signal_number) != 0) continue;
    std::function<void()> handler;
    {
      std::lock_guard<std::mutex> lock(handler_mutex);
      if (stop_requested || !stop_handler) std::_Exit(128 + signal_number);
      stop_requested = true;
      handler = stop_handler;
    }
    handler();
  }
}

}  // namespace

void InstallStopSignals() {
  const sigset_t set = StopSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread(WaitForSignals).detach();
}

void SetStopHandler(std::function<void()> handler) {
  std::lock_guard<std::mutex> lock(handler_mutex);
  stop_handler = std::move(handler);
}

void UnblockStopSignalsInChild() {
  const sigset_t set = StopSignals();
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
}

}  // namespace reptile
