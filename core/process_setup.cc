#include "core/process_setup.h"

#include <malloc.h>
#include <pthread.h>

#include <ATen/Parallel.h>

#include "absl/synchronization/mutex.h"

namespace reptile {

namespace {

// Debian's abseil is built to check every Mutex acquisition for lock-order
// cycles (a debugging aid that keeps a global graph of locks): in a
// training run over gRPC, whose library locks absl Mutexes on every call,
// abseil's synchronization code took 0.8% of all CPU against 0.1% with
// threads. Builds of abseil with NDEBUG never check.
void SkipMutexCycleChecks() { absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore); }

}  // namespace

// glibc's own limit on chunks mmapped at once (DEFAULT_MMAP_MAX).
constexpr int kGlibcMmapMax = 65536;

void ConfigureProcessForTraining() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);   // the largest value glibc accepts
  mallopt(M_MMAP_MAX, 0);                // and nothing above it mmapped either
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  at::set_num_threads(1);
  SkipMutexCycleChecks();
}

void ReturnFreeMemory() { malloc_trim(0); }

void NameThisThread(const char* name) { pthread_setname_np(pthread_self(), name); }

void ConfigureProcessForServing() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_MMAP_MAX, kGlibcMmapMax);  // buffers above 32 MB come and go with their peers
  mallopt(M_TRIM_THRESHOLD, 32 << 20);
  at::set_num_threads(1);
  SkipMutexCycleChecks();
}

}  // namespace reptile
