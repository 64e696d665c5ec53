// A small counter-based random number generator (SplitMix64) whose output is
// fixed by this file alone, not by the standard library's distributions, so
// that every process and platform draws the same tasks from the same seed.
#ifndef REPTILE_CORE_RNG_H_
#define REPTILE_CORE_RNG_H_

#include <cstdint>
#include <utility>
#include <vector>

namespace reptile {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  // Derives an independent seed from a parent seed and a stream label, so
  // that (seed, round, slot) names a task's randomness without shared state.
  static uint64_t Derive(uint64_t seed, uint64_t label) {
    return Mix(Mix(seed) ^ (label * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull));
  }

  uint64_t Next() {
    state_ += 0x9E3779B97F4A7C15ull;
    return Mix(state_);
  }

  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }

  // Uniform integer in [0, n), n > 0, without modulo bias.
  uint64_t Below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
      x = Next();
    } while (x >= limit);
    return x % n;
  }

  // Fisher-Yates shuffle.
  template <typename T>
  void Shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[Below(i)]);
  }

  // `k` distinct values from [0, n), in random order (k <= n).
  std::vector<int> Choose(int n, int k) {
    std::vector<int> pool(n);
    for (int i = 0; i < n; ++i) pool[i] = i;
    for (int i = 0; i < k; ++i) std::swap(pool[i], pool[i + Below(n - i)]);
    pool.resize(k);
    return pool;
  }

 private:
  static uint64_t Mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t state_;
};

}  // namespace reptile

#endif  // REPTILE_CORE_RNG_H_
