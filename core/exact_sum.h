// Exact, order-independent sums of fp32 vectors. Every value is rounded once,
// on its own, to the fixed-point grid of 2^-96 (to nearest, ties to even)
// and added as a 128-bit integer. Integer addition is associative, so a sum
// depends only on the multiset of vectors added: any grouping (tasks summed
// by a worker, MPI ranks, a tree of aggregators) merges to the same bits.
//
// Range: a sum promises to hold up to `max_terms` vectors, and Add() refuses
// any value with |x| >= 2^30 / max_terms (a diverged run), so a total never
// leaves the 128-bit range. Values below 2^-73 keep fewer than 24 bits and
// values below 2^-97 become 0: far below the last bit of any parameter or
// Adam moment that reaches the update.
//
// Inside, each element is kept as three integer-valued doubles ("limbs",
// weights 2^84, 2^42 and 1 in units of 2^-96), so that adding a vector is
// plain double arithmetic the compiler vectorizes: every step is exact, and
// carries are propagated before a limb could reach 2^53. The 128-bit
// integer is the form a sum takes outside (Encode, Decode, Quotient), and
// the bits are those of adding 128-bit integers directly.
#ifndef REPTILE_CORE_EXACT_SUM_H_
#define REPTILE_CORE_EXACT_SUM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace reptile {

class CompactSum;

class ExactSum {
 public:
  // Fixed-point bits below the binary point, and the bytes of one element
  // when encoded (little-endian two's complement).
  static constexpr int kFractionBits = 96;
  static constexpr size_t kElementBytes = 16;

  // A zero sum of `numel` elements that will hold at most `max_terms` vectors.
  ExactSum(int64_t numel, int max_terms);

  // Whether Add() takes these numel() values: InvalidArgument, naming the
  // element, for NaN, infinity, or |x| >= 2^30 / max_terms.
  absl::Status CheckRange(const float* values) const { return CheckRange(values, numel(), max_terms_); }
  // The same for `n` values and a sum for `max_terms` vectors.
  static absl::Status CheckRange(const float* values, int64_t n, int max_terms);
  // Adds one vector of numel() fp32 values. Fails as CheckRange(), and when
  // the sum already holds max_terms vectors; the sum is unchanged then.
  absl::Status Add(const float* values);
  // Adds another sum of the same size and capacity. InvalidArgument if the
  // sizes differ or the terms would exceed max_terms.
  absl::Status Merge(const ExactSum& other);
  // The same for a sum in its checked compact form, added straight from its
  // bytes.
  absl::Status Merge(const CompactSum& other);
  // Adds elements [first, first + numel()) of a longer sum of the same
  // capacity, as this sum's elements 0, 1, ...: a slice of the vector, so
  // that slices can be added on several threads. InvalidArgument if `other`
  // ends before the slice or the terms would exceed max_terms; for a compact
  // sum also unless the slice starts and ends on its blocks (first a
  // multiple of kCompactBlock, and the end too unless it is other's end).
  absl::Status MergeSlice(const ExactSum& other, int64_t first);
  absl::Status MergeSlice(const CompactSum& other, int64_t first);

  // sum / divisor for element i, rounded to double (a function of the exact
  // sum alone).
  double Quotient(int64_t i, double divisor) const {
    // Two exact halves rather than the library's correctly rounded 128-bit
    // conversion, which took 20 ns: this rounds twice (an error of at most
    // an ulp), and like any fixed formula gives the same bits for the same
    // sum. The low half converts as two exact 32-bit parts added (one
    // rounding, as a direct conversion), which needs no branch.
    const __int128 value = Element(static_cast<size_t>(i));
    const double high = static_cast<double>(static_cast<int64_t>(value >> 64)) * 0x1p-32;
    const uint64_t low_bits = static_cast<uint64_t>(value);
    const double low = (static_cast<double>(static_cast<int64_t>(low_bits >> 32)) * 0x1p32 +
                        static_cast<double>(static_cast<int64_t>(low_bits & 0xffffffffu))) *
                       0x1p-96;
    return (high + low) / divisor;
  }

  // Whether any element is below zero (a sum of squares cannot be).
  bool HasNegative() const;
  // Back to a zero sum of no vectors, keeping its memory.
  void Clear();

  int64_t numel() const { return static_cast<int64_t>(high_.size()); }
  int terms() const { return terms_; }
  int max_terms() const { return max_terms_; }

  // numel() * kElementBytes bytes.
  std::string Encode() const;
  // The same integers in fewer bytes, for the wire: blocks of kCompactBlock
  // elements, each one byte of shift (the trailing zero bits its elements
  // share, dropped), one byte of width, and its elements shifted, as
  // two's-complement integers of that width packed least significant bit
  // first. Sums of fp32 values rarely need more than 40 of the 128 bits.
  std::string EncodeCompact() const;
  static constexpr int64_t kCompactBlock = 32;
  // A sum that claims to hold `terms` vectors, from bytes of another process:
  // InvalidArgument unless the size is right, 1 <= terms <= max_terms and
  // every element lies within what `terms` in-range values can reach.
  static absl::StatusOr<ExactSum> Decode(const std::string& bytes, int64_t numel, int terms, int max_terms);
  // As Decode(), from EncodeCompact()'s bytes; InvalidArgument, naming the
  // block, if a shift or width is out of range or the bytes end anywhere
  // but after the last block.
  static absl::StatusOr<ExactSum> DecodeCompact(absl::string_view bytes, int64_t numel, int terms, int max_terms);
  // The most bytes EncodeCompact() gives for `numel` elements.
  static size_t MaxCompactBytes(int64_t numel);

 private:
  friend class CompactSum;
  // Calls visit(start, n, shift, values, largest) for each block of
  // EncodeCompact()'s `bytes` that is not all zeros: its first element, its
  // size, its shift and its n values before the shift, with the largest
  // magnitude among them. InvalidArgument, naming the block, for a shift or
  // width out of range, or bytes that end anywhere but after the last block.
  // Appends to `index` the offset of every kIndexedBlocks-th block.
  template <typename Visit>
  static absl::Status ForEachCompactBlock(absl::string_view bytes, int64_t numel, const Visit& visit,
                                          std::vector<size_t>* index);
  // Adds blocks from element `first` up to element `first + numel()` of a
  // compact sum that CompactSum::Check has accepted.
  void AddCompactBlocks(const CompactSum& other, int64_t first);
  // Every how many blocks CompactSum keeps a block's offset, so that a slice
  // is found without reading the blocks before it.
  static constexpr int64_t kIndexedBlocks = 32;

  // |value| that Add() refuses for a sum of `max_terms` vectors, and the
  // same in units of 2^-96 for this sum.
  static double ValueLimit(int max_terms);
  __int128 Limit() const;

  static constexpr int kLimbBits = 42;

  // Element i as a 128-bit integer in units of 2^-96: unsigned shifts and
  // adds (two's complement), without multiplications.
  __int128 Element(size_t i) const {
    using Bits = unsigned __int128;
    const Bits value = (static_cast<Bits>(static_cast<int64_t>(high_[i])) << (2 * kLimbBits)) +
                       (static_cast<Bits>(static_cast<int64_t>(middle_[i])) << kLimbBits) +
                       static_cast<Bits>(static_cast<int64_t>(low_[i]));
    return static_cast<__int128>(value);
  }
  // Sets element i to `value` (a 128-bit integer in units of 2^-96) if it
  // lies within `reach` in magnitude; InvalidArgument naming the element and
  // the `terms` whose reach it is otherwise.
  absl::Status SetElement(size_t i, __int128 value, __int128 reach, int terms);
  // Sets element i to `value`, unchecked.
  void SetLimbs(size_t i, __int128 value);
  // Carries the low and middle limbs into the next, leaving each below 2^42.
  void Carry();
  // Each limb stays below load_ * 2^42 in magnitude: 1 after a carry, plus
  // 1 per vector added since. Carried before it would pass kMaxLoad.
  static constexpr int kMaxLoad = 1 << 10;

  std::vector<double> high_, middle_, low_;
  int load_ = 1;
  int max_terms_ = 1;
  int terms_ = 0;
};

// An exact sum in its compact form (ExactSum::EncodeCompact) from another
// process, checked as ExactSum::DecodeCompact checks it but left packed:
// ExactSum::Merge adds it without unpacking it into a sum of its own first
// (24 bytes a value, allocated, filled and read again).
class CompactSum {
 public:
  // InvalidArgument as ExactSum::DecodeCompact.
  static absl::StatusOr<CompactSum> Check(std::string bytes, int64_t numel, int terms, int max_terms);

  int64_t numel() const { return numel_; }
  int terms() const { return terms_; }
  int max_terms() const { return max_terms_; }
  // Whether any element is below zero (a sum of squares cannot be).
  bool has_negative() const { return has_negative_; }

 private:
  friend class ExactSum;
  CompactSum() = default;

  std::string bytes_;
  std::vector<size_t> block_offsets_;  // of blocks 0, kIndexedBlocks, 2 * kIndexedBlocks, ...
  int64_t numel_ = 0;
  int terms_ = 0, max_terms_ = 1;
  bool has_negative_ = false;
};

}  // namespace reptile

#endif  // REPTILE_CORE_EXACT_SUM_H_
