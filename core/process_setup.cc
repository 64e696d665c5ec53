#include "core/process_setup.h"

#include <malloc.h>

#include <ATen/Parallel.h>

namespace reptile {

void ConfigureProcessForTraining() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);   // the largest value glibc accepts
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  at::set_num_threads(1);
}

void ReturnFreeMemory() { malloc_trim(0); }

void ConfigureProcessForServing() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 32 << 20);
  at::set_num_threads(1);
}

}  // namespace reptile
