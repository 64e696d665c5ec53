// Process-wide settings every binary that trains applies once at start.
#ifndef REPTILE_CORE_PROCESS_SETUP_H_
#define REPTILE_CORE_PROCESS_SETUP_H_

namespace reptile {

// Keeps freed tensor memory in the heap instead of returning it to the OS
// after every operation: glibc's default mmap threshold makes each
// activation buffer (a few hundred KB) a fresh mmap with page faults, which
// measured 8.4 ms instead of 2.2 ms per forward+backward of the Omniglot
// network (batch 10, one core). Buffers above the largest threshold glibc
// accepts (32 MB: the tensors of a 10M-parameter model) come from the heap
// too: mmapped afresh, they took 2.4M page faults a worker in 40 rounds of
// the 10M-parameter sine MLP, and 2.1 rounds/s against 3.1 from the heap
// (docs/performance.md). Also pins LibTorch to one intra-op thread in the
// calling thread; parallelism comes from workers, not from inside ops.
void ConfigureProcessForTraining();

// For a process that coordinates remote workers: as above, large buffers
// (results, state snapshots) are reused from the heap rather than mmapped
// afresh: page faults on them were 45% of the gRPC server threads' CPU. What
// peers send, accepted or refused, on however many server threads, does not
// stay: the serving process calls ReturnFreeMemory() every few seconds.
void ConfigureProcessForServing();

// Gives the heap's free pages back to the OS, in every thread's arena (what
// peers' refused messages leave behind in small buffers). A serving process
// calls it every few seconds; it takes about a millisecond.
void ReturnFreeMemory();

// Names the calling thread (at most 15 characters) as `top -H`, perf and
// bench/thread_census.sh show it.
void NameThisThread(const char* name);

}  // namespace reptile

#endif  // REPTILE_CORE_PROCESS_SETUP_H_
