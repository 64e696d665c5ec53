#include "core/exact_sum.h"

#include <algorithm>
#include <cmath>
#include <cstring>
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

// The specification, computed another way: value * 2^96 rounded to the
// nearest integer, ties to even, from the float's own mantissa and exponent.
__int128 ReferenceFixed(float value) {
  int exponent;
  const double fraction = std::frexp(static_cast<double>(value), &exponent);  // value = fraction * 2^exponent
  const int64_t mantissa = static_cast<int64_t>(std::ldexp(fraction, 24));      // exact: 24 bits
  const int shift = exponent - 24 + 96;                                         // value * 2^96 = mantissa * 2^shift
  if (shift >= 0) return static_cast<__int128>(mantissa) * (static_cast<__int128>(1) << shift);
  if (shift < -62) return 0;
  const int64_t magnitude = mantissa < 0 ? -mantissa : mantissa;
  int64_t kept = magnitude >> -shift;
  const int64_t rest = magnitude - (kept << -shift), half = int64_t{1} << (-shift - 1);
  if (rest > half || (rest == half && (kept & 1))) ++kept;
  return mantissa < 0 ? -kept : kept;
}

std::string ReferenceEncoding(const std::vector<std::vector<float>>& vectors, int numel) {
  std::vector<__int128> sums(numel, 0);
  for (const auto& v : vectors)
    for (int i = 0; i < numel; ++i) sums[i] += ReferenceFixed(v[i]);
  std::string bytes(numel * ExactSum::kElementBytes, '\0');
  std::memcpy(bytes.data(), sums.data(), bytes.size());
  return bytes;
}

TEST(ExactSumTest, EqualsAddingEachValueRoundedToTheGridAsA128BitInteger) {
  // Magnitudes over the whole range, ties at the unit, values below it, and
  // enough vectors that the limbs carry many times over.
  const int numel = 64, count = 3000;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> exponent(-110, 17);
  std::vector<std::vector<float>> vectors(count, std::vector<float>(numel));
  for (auto& v : vectors)
    for (float& x : v) {
      const float unit = std::ldexp(1.0f + static_cast<float>(rng() % 1024) / 1024, exponent(rng));
      x = (rng() & 1 ? -1 : 1) * (rng() % 8 == 0 ? std::ldexp(static_cast<float>(1 + 2 * (rng() % 4)), -97) : unit);
    }
  ExactSum one_by_one(numel, 4096);
  for (const auto& v : vectors) ASSERT_TRUE(one_by_one.Add(v.data()).ok());
  EXPECT_EQ(one_by_one.Encode(), ReferenceEncoding(vectors, numel));
  // The same merged from parts that each carried on their own.
  ExactSum merged(numel, 4096), part(numel, 4096);
  for (int t = 0; t < count; ++t) {
    ASSERT_TRUE(part.Add(vectors[t].data()).ok());
    if (t % 1500 == 1499) {
      ASSERT_TRUE(merged.Merge(part).ok());
      part = ExactSum(numel, 4096);
    }
  }
  EXPECT_EQ(merged.Encode(), one_by_one.Encode());
  auto decoded = ExactSum::Decode(one_by_one.Encode(), numel, count, 4096);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  // Quotient: the 128-bit integer's two 64-bit halves converted to double
  // (the low one unsigned), scaled, added and divided.
  const std::string encoded = one_by_one.Encode();
  for (int i = 0; i < numel; ++i) {
    __int128 value;
    std::memcpy(&value, encoded.data() + i * ExactSum::kElementBytes, sizeof(value));
    const double expected = (static_cast<double>(static_cast<int64_t>(value >> 64)) * 0x1p-32 +
                             static_cast<double>(static_cast<uint64_t>(value)) * 0x1p-96) /
                            3.0;
    EXPECT_EQ(one_by_one.Quotient(i, 3.0), expected) << i;
    EXPECT_EQ(decoded->Quotient(i, 3.0), expected) << i;
  }
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
  // -2^127, whose negation wraps to itself: as far beyond reach as any.
  std::string lowest = bytes;
  std::memset(lowest.data(), 0, ExactSum::kElementBytes);
  lowest[15] = static_cast<char>(0x80);
  EXPECT_FALSE(ExactSum::Decode(lowest, 2, 2, 8).ok());
  ExactSum other(2, 4);
  EXPECT_FALSE(sum.Merge(other).ok()) << "capacities differ";
}


// The compact form decodes to the 16-byte form's bits, whatever the values:
// spread over 1e-30..1e2 with both signs, subnormal fp32, near the range
// limit, zeros, blocks of one value and partial last blocks, for 1, 2, 8
// and 64 terms; and it is never larger than MaxCompactBytes.
TEST(ExactSumTest, CompactFormRoundTripsEveryKindOfValue) {
  const float tiny = std::numeric_limits<float>::denorm_min(), smallest_normal = std::numeric_limits<float>::min();
  for (int terms : {1, 2, 8, 64}) {
    for (int numel : {0, 1, 31, 32, 33, 1000}) {
      std::vector<std::vector<float>> vectors = SpreadVectors(terms, numel, 100 + terms + numel);
      const float limit = std::nextafter(std::ldexp(1.0f, 30) / 64, 0.0f);  // just in range for 64 terms
      for (int t = 0; t < terms; ++t)
        for (int i = 0; i < numel; ++i) {
          switch ((i + t) % 7) {
            case 0: vectors[t][i] = (t % 2 ? -1 : 1) * tiny; break;
            case 1: vectors[t][i] = -smallest_normal * 3; break;
            case 2: vectors[t][i] = (t % 2 ? -1 : 1) * limit; break;
            case 3: vectors[t][i] = 0; break;
            default: break;  // spread
          }
        }
      ExactSum sum(numel, 64);
      for (const auto& v : vectors) ASSERT_TRUE(sum.Add(v.data()).ok());
      const std::string compact = sum.EncodeCompact();
      EXPECT_LE(compact.size(), ExactSum::MaxCompactBytes(numel));
      absl::StatusOr<ExactSum> decoded = ExactSum::DecodeCompact(compact, numel, terms, 64);
      ASSERT_TRUE(decoded.ok()) << decoded.status() << " (" << terms << " terms, " << numel << " values)";
      EXPECT_EQ(decoded->Encode(), sum.Encode()) << terms << " terms, " << numel << " values";
      EXPECT_EQ(decoded->EncodeCompact(), compact);
    }
  }
  // A block of zeros is its two header bytes alone.
  EXPECT_EQ(ExactSum(32, 1).EncodeCompact(), std::string("\0\0", 2));
}

// Every block width the compact form can take (2 to 127 bits here: a block
// holding +-2^lo and +-2^hi needs hi - lo + 2), each unpacked to the
// 16-byte form's bits, whichever of the decoder's paths (8-byte loads up to
// 57 bits, 16-byte loads up to 120, bit by bit above) reads it.
TEST(ExactSumTest, CompactFormRoundTripsEveryBlockWidth) {
  for (int width = 2; width <= 127; ++width) {
    const int lo = -96;              // the grid's last bit: one unit
    const int hi = lo + width - 2;   // at most 2^29, in range for one term
    ASSERT_LT(hi, 30) << width;
    std::vector<float> values(40, 0.0f);
    for (int i = 0; i < 40; ++i) {
      const float sign = i % 3 == 0 ? -1.0f : 1.0f;
      if (i % 5 == 1) values[i] = sign * std::ldexp(1.0f, hi);
      if (i % 5 == 2) values[i] = sign * std::ldexp(1.0f, lo);
      if (i % 5 == 3) values[i] = sign * std::ldexp(1.0f, (lo + hi) / 2);
    }
    ExactSum sum(40, 1);
    ASSERT_TRUE(sum.Add(values.data()).ok()) << width;
    const std::string compact = sum.EncodeCompact();
    ASSERT_EQ(static_cast<unsigned char>(compact[1]), width);  // block 0's width
    absl::StatusOr<ExactSum> decoded = ExactSum::DecodeCompact(compact, 40, 1, 1);
    ASSERT_TRUE(decoded.ok()) << decoded.status() << " (width " << width << ")";
    EXPECT_EQ(decoded->Encode(), sum.Encode()) << "width " << width;
    EXPECT_TRUE(decoded->HasNegative()) << "width " << width;
  }
}

// Widths 1 and 0: a block whose values are all -1 or 0 once their shared
// zeros are dropped (one -2^k among zeros, or all equal to -2^k) needs its
// sign bit alone, and a block of zeros nothing.
TEST(ExactSumTest, CompactFormKeepsABlockOfMinusOnesAndABlockOfZeros) {
  const int64_t block = ExactSum::kCompactBlock;
  std::vector<float> values(3 * block, 0.0f);
  values[5] = std::ldexp(-1.0f, -10);                                          // block 0: one -2^-10
  for (int64_t i = block; i < 2 * block; ++i) values[i] = std::ldexp(-1.0f, -50);  // block 1: all -2^-50
  ExactSum sum(3 * block, 1);                                                  // block 2: zeros
  ASSERT_TRUE(sum.Add(values.data()).ok());
  const std::string compact = sum.EncodeCompact();
  ASSERT_GE(compact.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(compact[1]), 1) << "block 0's width";
  absl::StatusOr<ExactSum> decoded = ExactSum::DecodeCompact(compact, 3 * block, 1, 1);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->Encode(), sum.Encode());
}

// Slices of a sum, added from the 24-byte form or straight from the compact
// bytes, put together the whole sum's bits, wherever the slices start
// (past the compact form's index of every kIndexedBlocks-th block too) and
// whatever blocks before them hold; a slice that would split a compact
// block, or run past the end, is refused.
TEST(ExactSumTest, SlicesAddUpToTheWholeSum) {
  const int64_t block = ExactSum::kCompactBlock;
  const int64_t numel = 70 * block + 5;  // past two index entries; a short last block
  std::vector<std::vector<float>> vectors = SpreadVectors(3, static_cast<int>(numel), 77);
  for (int64_t i = 0; i < 3 * block; ++i) vectors[1][i] = vectors[0][i] = vectors[2][i] = 0;  // zero blocks first
  ExactSum whole(numel, 8);
  for (const auto& v : vectors) ASSERT_TRUE(whole.Add(v.data()).ok());
  absl::StatusOr<CompactSum> compact = CompactSum::Check(whole.EncodeCompact(), numel, 3, 8);
  ASSERT_TRUE(compact.ok()) << compact.status();
  for (int64_t step : {block, 3 * block, 33 * block, numel}) {
    std::string from_sum, from_compact;
    for (int64_t first = 0; first < numel; first += step) {
      ExactSum a(std::min(step, numel - first), 8), b(std::min(step, numel - first), 8);
      ASSERT_TRUE(a.MergeSlice(whole, first).ok()) << first;
      ASSERT_TRUE(b.MergeSlice(*compact, first).ok()) << first;
      from_sum += a.Encode();
      from_compact += b.Encode();
    }
    EXPECT_EQ(from_sum, whole.Encode()) << "slices of " << step;
    EXPECT_EQ(from_compact, whole.Encode()) << "slices of " << step;
  }
  ExactSum misaligned(block, 8), past_end(block, 8), tail(5, 8);
  EXPECT_FALSE(misaligned.MergeSlice(*compact, 1).ok());
  EXPECT_FALSE(past_end.MergeSlice(whole, numel - block + 1).ok());
  EXPECT_FALSE(past_end.MergeSlice(*compact, numel - 5).ok());
  EXPECT_TRUE(tail.MergeSlice(*compact, numel - 5).ok()) << "the last block ends at the sum's end";
}

// HasNegative() reads the sign of every element, however its limbs are
// held: a sum being added to, and one decoded from either form; an element
// of -2^-90 (64 units of the grid) is negative in the lowest limb alone.
TEST(ExactSumTest, HasNegativeFindsOneNegativeElementInEveryForm) {
  for (float last : {std::ldexp(-1.0f, -90), std::ldexp(1.0f, -90)}) {
    std::vector<float> values(100, 0.5f);
    values[99] = last;
    ExactSum sum(100, 4);
    ASSERT_TRUE(sum.Add(values.data()).ok());
    const bool negative = last < 0;
    EXPECT_EQ(sum.HasNegative(), negative);
    absl::StatusOr<ExactSum> compact = ExactSum::DecodeCompact(sum.EncodeCompact(), 100, 1, 4);
    ASSERT_TRUE(compact.ok()) << compact.status();
    EXPECT_EQ(compact->HasNegative(), negative);
    absl::StatusOr<ExactSum> wide = ExactSum::Decode(sum.Encode(), 100, 1, 4);
    ASSERT_TRUE(wide.ok()) << wide.status();
    EXPECT_EQ(wide->HasNegative(), negative);
  }
}

// What a hostile peer can send in the compact form is refused, naming the
// block, or checked for reach as the 16-byte form is.
TEST(ExactSumTest, CompactDecodeRefusesBadBlocksAndTrailingBytes) {
  ExactSum sum(40, 8);
  std::vector<float> values(40);
  for (int i = 0; i < 40; ++i) values[i] = (i % 3 - 1) * 0.01f * static_cast<float>(i);
  ASSERT_TRUE(sum.Add(values.data()).ok());
  const std::string good = sum.EncodeCompact();
  ASSERT_TRUE(ExactSum::DecodeCompact(good, 40, 1, 8).ok());
  auto refused = [](const std::string& bytes, int64_t numel = 40, int terms = 1) {
    absl::StatusOr<ExactSum> decoded = ExactSum::DecodeCompact(bytes, numel, terms, 8);
    return decoded.ok() ? std::string("accepted") : std::string(decoded.status().message());
  };
  EXPECT_EQ(refused(good + '\0'), "compact exact sum has 1 bytes after its last block");
  EXPECT_EQ(refused(good.substr(0, good.size() - 1)).substr(0, 27), "compact exact sum block 1 h");
  EXPECT_EQ(refused(good.substr(0, 1)), "compact exact sum ends in block 0");
  std::string wide = good;
  wide[1] = static_cast<char>(129);  // width over 128
  EXPECT_NE(refused(wide).find("block 0 has shift"), std::string::npos) << refused(wide);
  std::string shifted = good;
  shifted[0] = static_cast<char>(128 - static_cast<unsigned char>(good[1]) + 1);  // shift + width over 128
  EXPECT_NE(refused(shifted).find("block 0 has shift"), std::string::npos) << refused(shifted);
  std::string far = good;
  far[0] = static_cast<char>(128 - static_cast<unsigned char>(good[1]));  // shifted to the top: beyond reach
  EXPECT_NE(refused(far).find("lies beyond what 1 in-range values can reach"), std::string::npos) << refused(far);
  EXPECT_NE(refused(std::string(ExactSum::MaxCompactBytes(40) + 1, '\0')).find("take at most"), std::string::npos);
  EXPECT_NE(refused(good, 40, 9).find("claims 9 terms"), std::string::npos);
}

}  // namespace
}  // namespace reptile
