// What exact sums cost: nanoseconds per value for each ExactSum operation on
// vectors the size of the Omniglot network (113,233 parameters, random
// values over Reptile's range of magnitudes), beside a plain float64 sum of
// the same values, and what one Omniglot round's aggregation (5 deltas and
// 5 Adam v vectors added, 2 means taken) costs from that.
//
//   build/bench/exact_sum_bench [repetitions]   (default 200; prints medians)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "core/exact_sum.h"

namespace reptile {
namespace {

constexpr int64_t kNumel = 113233;
constexpr int kMetaBatch = 5;

double MedianNanosPerValue(int repetitions, const std::function<void()>& operation) {
  std::vector<double> times;
  for (int r = 0; r < repetitions; ++r) {
    const auto start = std::chrono::steady_clock::now();
    operation();
    times.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2] / kNumel;
}

int Main(int repetitions) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> exponent(-12, 0), unit(1, 10);
  std::vector<float> values(kNumel);
  for (float& x : values) x = (rng() & 1 ? 1 : -1) * unit(rng) * std::pow(10.0f, exponent(rng));

  ExactSum sum(kNumel, 1 << 20);
  volatile double sink = 0;
  const double check = MedianNanosPerValue(repetitions, [&] { sink = sink + sum.CheckRange(values.data()).ok(); });
  const double add = MedianNanosPerValue(repetitions, [&] { sum.Add(values.data()).IgnoreError(); });
  ExactSum other = sum;
  const double merge = MedianNanosPerValue(repetitions, [&] {
    ExactSum copy = other;
    copy.Merge(other).IgnoreError();
  });
  const double quotient = MedianNanosPerValue(repetitions, [&] {
    double total = 0;
    for (int64_t i = 0; i < kNumel; ++i) total += sum.Quotient(i, 5.0);
    sink = sink + total;
  });
  const double encode = MedianNanosPerValue(repetitions, [&] { sink = sink + sum.Encode().size(); });
  const std::string bytes = sum.Encode();
  const double decode = MedianNanosPerValue(
      repetitions, [&] { sink = sink + ExactSum::Decode(bytes, kNumel, sum.terms(), 1 << 20).ok(); });
  std::vector<double> float64(kNumel, 0.0);
  const double plain = MedianNanosPerValue(repetitions, [&] {
    for (int64_t i = 0; i < kNumel; ++i) float64[i] += values[i];
  });
  std::printf("exact sums, %lld values, median of %d repetitions (ns per value)\n",
              static_cast<long long>(kNumel), repetitions);
  std::printf("  Add (range check included)  %6.2f\n", add);
  std::printf("    of which CheckRange       %6.2f\n", check);
  std::printf("  Merge (copy included)       %6.2f\n", merge);
  std::printf("  Quotient                    %6.2f\n", quotient);
  std::printf("  Encode                      %6.2f\n", encode);
  std::printf("  Decode (reach checked)      %6.2f\n", decode);
  std::printf("  float64 +=, for comparison  %6.2f\n", plain);
  std::printf("one Omniglot round (%d deltas and %d v added, 2 means): %.2f ms\n", kMetaBatch, kMetaBatch,
              (2 * kMetaBatch * add + 2 * quotient) * kNumel / 1e6);
  return 0;
}

}  // namespace
}  // namespace reptile

int main(int argc, char** argv) { return reptile::Main(argc > 1 ? std::atoi(argv[1]) : 200); }
