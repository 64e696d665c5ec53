// What a fuzzer that makes its own seed inputs does first: with
// REPTILE_FUZZ_WRITE_SEEDS=<folder> in the environment, it writes them there
// with `write` and exits, for fuzz/make_corpus.sh; otherwise it fuzzes.
#ifndef REPTILE_FUZZ_SEED_WRITER_H_
#define REPTILE_FUZZ_SEED_WRITER_H_

#include <cstdlib>
#include <string>

inline void WriteSeedsIfAsked(void (*write)(const std::string& folder)) {
  if (const char* folder = std::getenv("REPTILE_FUZZ_WRITE_SEEDS")) {
    write(folder);
    std::exit(0);
  }
}

#endif  // REPTILE_FUZZ_SEED_WRITER_H_
