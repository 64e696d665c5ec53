#include "core/exact_sum.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace reptile {
namespace {

// Vectors whose values span the magnitudes Reptile's deltas and Adam
// moments take (1e-30 .. 1e2), both signs.
std::vector<std::vector<float>> SpreadVectors(int count, int numel, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> exponent(-30, 2), unit(1, 10);
  std::vector<std::vector<float>> vectors(count, std::vector<float>(numel));
  for (auto& v : vectors)
    for (float& x : v) x = (rng() & 1 ? 1 : -1) * unit(rng) * std::pow(10.0f, exponent(rng));
  return vectors;
}

TEST(ExactSumTest, AnyOrderAndGroupingGivesTheSameBits) {
  const int count = 12, numel = 1000;
  const auto vectors = SpreadVectors(count, numel, 7);
  ExactSum in_order(numel, count);
  for (const auto& v : vectors) ASSERT_TRUE(in_order.Add(v.data()).ok());

  std::vector<int> order(count);
  for (int i = 0; i < count; ++i) order[i] = i;
  std::mt19937 rng(11);
  for (int trial = 0; trial < 5; ++trial) {
    std::shuffle(order.begin(), order.end(), rng);
    // Groups of 1-4 summed apart, then merged in reverse.
    std::vector<ExactSum> groups;
    for (size_t i = 0; i < order.size();) {
      const size_t size = std::min<size_t>(1 + rng() % 4, order.size() - i);
      groups.emplace_back(numel, count);
      for (size_t j = 0; j < size; ++j) ASSERT_TRUE(groups.back().Add(vectors[order[i + j]].data()).ok());
      i += size;
    }
    ExactSum merged(numel, count);
    for (auto g = groups.rbegin(); g != groups.rend(); ++g) ASSERT_TRUE(merged.Merge(*g).ok());
    EXPECT_EQ(merged.terms(), count);
    EXPECT_EQ(merged.Encode(), in_order.Encode()) << "trial " << trial;
  }
  // A float64 sum in a different order does differ somewhere: the test
  // data exercises rounding.
  int differ = 0;
  for (int i = 0; i < numel; ++i) {
    double forward = 0, backward = 0;
    for (int t = 0; t < count; ++t) forward += vectors[t][i];
    for (int t = count - 1; t >= 0; --t) backward += vectors[t][i];
    differ += forward != backward;
  }
  EXPECT_GT(differ, 0);
}

TEST(ExactSumTest, TheMeanIsTheExactMeanRounded) {
  // 2^-60 is far below a float64 ulp of 1; the exact sum keeps it.
  const float big = 1.0f, tiny = std::ldexp(1.0f, -60);
  ExactSum sum(1, 4);
  for (float x : {big, tiny, -big, tiny}) ASSERT_TRUE(sum.Add(&x).ok());
  EXPECT_EQ(sum.Quotient(0, 2.0), std::ldexp(1.0, -60));
  // Values below the grid round to nearest, ties to even.
  ExactSum below(2, 1);
  const float values[2] = {std::ldexp(1.0f, -97) * 3, std::ldexp(1.0f, -98)};  // 1.5 and 0.25 units
  ASSERT_TRUE(below.Add(values).ok());
  EXPECT_EQ(below.Quotient(0, 1), std::ldexp(1.0, -95));  // 1.5 -> 2 units
  EXPECT_EQ(below.Quotient(1, 1), 0.0);
}

TEST(ExactSumTest, RefusesValuesOutOfRangeAndLeavesTheSumUnchanged) {
  ExactSum sum(3, 4);  // values below 2^30 / 4 = 2^28
  const float ok[3] = {1, 2, 3};
  ASSERT_TRUE(sum.Add(ok).ok());
  const std::string before = sum.Encode();
  const float too_big[3] = {1, 2, std::ldexp(1.0f, 28)};
  const absl::Status status = sum.Add(too_big);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("element 2"), std::string::npos) << status;
  const float nan[3] = {1, std::numeric_limits<float>::quiet_NaN(), 0};
  EXPECT_FALSE(sum.Add(nan).ok());
  const float inf[3] = {-std::numeric_limits<float>::infinity(), 0, 0};
  EXPECT_FALSE(sum.Add(inf).ok());
  EXPECT_EQ(sum.Encode(), before);
  EXPECT_EQ(sum.terms(), 1);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(sum.Add(ok).ok());
  EXPECT_FALSE(sum.Add(ok).ok()) << "a fifth vector exceeds max_terms";
}

TEST(ExactSumTest, DecodeChecksSizeTermsAndReach) {
  ExactSum sum(2, 8);
  const float values[2] = {-5, 1e-20f};
  ASSERT_TRUE(sum.Add(values).ok());
  ASSERT_TRUE(sum.Add(values).ok());
  const std::string bytes = sum.Encode();
  ASSERT_EQ(bytes.size(), 2 * ExactSum::kElementBytes);
  auto decoded = ExactSum::Decode(bytes, 2, 2, 8);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->Encode(), bytes);
  EXPECT_FALSE(ExactSum::Decode(bytes, 3, 2, 8).ok());
  EXPECT_FALSE(ExactSum::Decode(bytes.substr(1), 2, 2, 8).ok());
  EXPECT_FALSE(ExactSum::Decode(bytes, 2, 0, 8).ok());
  EXPECT_FALSE(ExactSum::Decode(bytes, 2, 9, 8).ok());
  std::string hostile = bytes;
  hostile[15] = 0x3f;  // element 0 near 2^125 units: beyond two terms' reach
  EXPECT_FALSE(ExactSum::Decode(hostile, 2, 2, 8).ok());
  ExactSum other(2, 4);
  EXPECT_FALSE(sum.Merge(other).ok()) << "capacities differ";
}

}  // namespace
}  // namespace reptile
