// The worker side of SharedMemoryTransport (`reptile worker --shared_memory
// BOARD`): opens the board its coordinator made, builds a learner for the
// board's config, and runs the items of each batch it can claim until the
// coordinator finishes the run or `stop` is notified.
#ifndef REPTILE_TRANSPORT_SHARED_MEMORY_SHARED_MEMORY_WORKER_H_
#define REPTILE_TRANSPORT_SHARED_MEMORY_SHARED_MEMORY_WORKER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"

namespace reptile {

absl::Status RunSharedMemoryWorker(const std::string& board_path, absl::Notification* stop);

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_SHARED_MEMORY_SHARED_MEMORY_WORKER_H_
