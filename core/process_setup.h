// Process-wide settings every binary that trains applies once at start.
#ifndef REPTILE_CORE_PROCESS_SETUP_H_
#define REPTILE_CORE_PROCESS_SETUP_H_

namespace reptile {

// Keeps freed tensor memory in the heap instead of returning it to the OS
// after every operation: glibc's default mmap threshold makes each
// activation buffer (a few hundred KB) a fresh mmap with page faults, which
// measured 8.4 ms instead of 2.2 ms per forward+backward of the Omniglot
// network (batch 10, one core). Also pins LibTorch to one intra-op thread in
// the calling thread; parallelism comes from workers, not from inside ops.
void ConfigureProcessForTraining();

// For a process that coordinates remote workers: buffers of 128 KB and more
// (results, state snapshots) are mmapped and given back when freed, so that
// what peers send, accepted or refused, on however many server threads,
// never stays in the heap. Under the training settings above, each
// thread's arena kept the megabyte-sized buffers of refused results.
void ConfigureProcessForServing();

// Gives the heap's free pages back to the OS, in every thread's arena (what
// peers' refused messages leave behind in small buffers). A serving process
// calls it every few seconds; it takes about a millisecond.
void ReturnFreeMemory();

}  // namespace reptile

#endif  // REPTILE_CORE_PROCESS_SETUP_H_
