#include "cli/signals.h"

#include <pthread.h>
#include <signal.h>

#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace reptile {
namespace {

// Guards the fields below; never held while the handler runs, so that the
// handler may take other locks (the logger's, the engine's) in any order.
std::mutex handler_mutex;
std::condition_variable handler_returned;
std::function<void()> stop_handler;
bool stop_requested = false;
bool handler_running = false;
std::thread::id signal_thread;

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
      handler_running = true;
      handler = stop_handler;  // a copy: the handler may replace itself
    }
    handler();
    handler = nullptr;  // its captures go before SetStopHandler() may return
    {
      std::lock_guard<std::mutex> lock(handler_mutex);
      handler_running = false;
    }
    handler_returned.notify_all();
  }
}

}  // namespace

void InstallStopSignals() {
  const sigset_t set = StopSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread thread(WaitForSignals);
  {
    std::lock_guard<std::mutex> lock(handler_mutex);
    signal_thread = thread.get_id();
  }
  thread.detach();
}

void SetStopHandler(std::function<void()> handler) {
  std::unique_lock<std::mutex> lock(handler_mutex);
  const bool in_handler = std::this_thread::get_id() == signal_thread;
  if (!in_handler) handler_returned.wait(lock, [] { return !handler_running; });
  stop_handler = std::move(handler);
  if (!stop_requested || !stop_handler || in_handler) return;
  std::function<void()> late = stop_handler;
  lock.unlock();
  late();
}

void UnblockStopSignalsInChild() {
  const sigset_t set = StopSignals();
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
}

}  // namespace reptile
