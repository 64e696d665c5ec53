#include "core/exact_sum.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "ExactSum encodes its integers little-endian by memcpy");

namespace reptile {
namespace {

// x rounded to an integer (to nearest, ties to even) for |x| <= 2^51: adding
// 1.5 * 2^52 leaves no bits below the units. Exact, and vectorizes where a
// call to rint() would not.
inline double RoundToInteger(double x) {
  constexpr double kShifter = 0x1.8p52;
  return (x + kShifter) - kShifter;
}

// Limb weights, in units of 2^-96.
constexpr double kLimb = 0x1p42;

// Whether |v| < bound, for bound > 0; true of no v = -2^127, which has no
// negation.
bool AbsBelow(__int128 v, __int128 bound) { return v < bound && v > -bound; }

using Bits = unsigned __int128;

// The bits a two's-complement integer needs to hold v (0 for 0).
int WidthOf(__int128 v) {
  const Bits magnitude = static_cast<Bits>(v < 0 ? ~v : v);  // ~v: -1 needs 1 bit, like 0 would with its sign
  if (v == 0) return 0;
  const uint64_t high = static_cast<uint64_t>(magnitude >> 64), low = static_cast<uint64_t>(magnitude);
  const int used = high != 0 ? 128 - __builtin_clzll(high) : (low != 0 ? 64 - __builtin_clzll(low) : 0);
  return used + 1;
}

int TrailingZeros(__int128 v) {
  const uint64_t low = static_cast<uint64_t>(v), high = static_cast<uint64_t>(static_cast<Bits>(v) >> 64);
  return low != 0 ? __builtin_ctzll(low) : (high != 0 ? 64 + __builtin_ctzll(high) : 128);
}

// Bits appended least significant first.
class BitWriter {
 public:
  explicit BitWriter(std::string* out) : out_(out) {}
  // The low `width` bits of v.
  void Put(Bits v, int width) {
    while (width > 0) {
      const int take = std::min(width, 56);
      pending_ |= (static_cast<uint64_t>(v) & ((uint64_t{1} << take) - 1)) << count_;
      count_ += take;
      v >>= take;
      width -= take;
      for (; count_ >= 8; count_ -= 8, pending_ >>= 8) out_->push_back(static_cast<char>(pending_ & 0xff));
    }
  }
  // Pads the last byte with zeros.
  void Flush() {
    if (count_ > 0) out_->push_back(static_cast<char>(pending_ & 0xff));
    pending_ = 0;
    count_ = 0;
  }

 private:
  std::string* out_;
  uint64_t pending_ = 0;
  int count_ = 0;
};

// Appends what BitWriter would write for `n` values of a block, each shifted
// right by `shift`, at a `width` of at most 56 bits: they are gathered in a
// 64-bit word and stored 8 bytes at a time (EncodeCompact's common case;
// BitWriter appends a byte at a time).
void PackNarrowBlock(const __int128* values, size_t n, int shift, int width, std::string* out) {
  unsigned char packed[ExactSum::kCompactBlock * 8 + 8];
  const uint64_t mask = (uint64_t{1} << width) - 1;
  uint64_t word = 0;
  int used = 0;  // bits of `word` filled
  size_t at = 0;
  for (size_t k = 0; k < n; ++k) {
    const uint64_t v = static_cast<uint64_t>(static_cast<Bits>(values[k]) >> shift) & mask;
    word |= v << used;
    used += width;
    if (used >= 64) {
      std::memcpy(packed + at, &word, 8);
      at += 8;
      used -= 64;
      word = used > 0 ? v >> (width - used) : 0;
    }
  }
  std::memcpy(packed + at, &word, 8);
  out->append(reinterpret_cast<const char*>(packed), (n * static_cast<size_t>(width) + 7) / 8);
}

// Reads what BitWriter wrote from `bytes`, which the caller has checked
// holds every bit asked for.
class BitReader {
 public:
  explicit BitReader(const unsigned char* bytes) : bytes_(bytes) {}
  // `width` bits, sign-extended from the last.
  __int128 Get(int width) {
    Bits v = 0;
    for (int got = 0; got < width;) {
      const int take = std::min(width - got, 56);
      while (count_ < take) {
        pending_ |= static_cast<uint64_t>(*bytes_++) << count_;
        count_ += 8;
      }
      v |= static_cast<Bits>(pending_ & ((uint64_t{1} << take) - 1)) << got;
      pending_ = take == 64 ? 0 : pending_ >> take;
      count_ -= take;
      got += take;
    }
    if (width > 0 && width < 128 && (v >> (width - 1)) & 1) v |= ~Bits{0} << width;
    return static_cast<__int128>(v);
  }

 private:
  const unsigned char* bytes_;
  uint64_t pending_ = 0;
  int count_ = 0;
};

// Unpacks the n sign-extended integers of `width` bits (1 to 128) that
// EncodeCompact packed into `packed`, which has 16 readable bytes past them.
// Returns the largest magnitude among them (2^127 for -2^127).
Bits UnpackBlock(const unsigned char* packed, int64_t n, int width, __int128* values) {
  Bits largest = 0;
  auto keep = [&largest](__int128 v) {
    const Bits magnitude = v < 0 ? Bits{0} - static_cast<Bits>(v) : static_cast<Bits>(v);
    largest = std::max(largest, magnitude);
  };
  if (width <= 57) {  // the common case: one 8-byte load a value, with its bit offset
    for (int64_t k = 0; k < n; ++k) {
      const size_t bit = static_cast<size_t>(k * width);
      uint64_t word;
      std::memcpy(&word, packed + bit / 8, sizeof(word));
      // The value's bits moved to the top, then shifted down with its sign.
      const int64_t v = static_cast<int64_t>(word << (64 - width - bit % 8)) >> (64 - width);
      values[k] = v;
      // In 64 bits, not through keep(): a separate 128-bit pass for the
      // maximum made the whole decode about 25% slower (compact_sum_bench).
      largest = std::max(largest, static_cast<Bits>(v < 0 ? -static_cast<uint64_t>(v) : static_cast<uint64_t>(v)));
    }
  } else if (width <= 120) {  // one 16-byte load a value
    const Bits mask = (Bits{1} << width) - 1;
    for (int64_t k = 0; k < n; ++k) {
      const size_t bit = static_cast<size_t>(k * width);
      Bits word;
      std::memcpy(&word, packed + bit / 8, sizeof(word));
      Bits v = (word >> (bit % 8)) & mask;
      if ((v >> (width - 1)) & 1) v |= ~mask;  // sign-extended
      values[k] = static_cast<__int128>(v);
      keep(values[k]);
    }
  } else {  // wider than one 16-byte load holds with its offset
    BitReader reader(packed);
    for (int64_t k = 0; k < n; ++k) {
      values[k] = reader.Get(width);
      keep(values[k]);
    }
  }
  return largest;
}

// Whether every |values[i]| < limit (false for NaN).
__attribute__((target_clones("avx2", "default"))) bool AllBelow(const float* values, size_t n, double limit) {
  int outside = 0;
  for (size_t i = 0; i < n; ++i) outside |= !(std::fabs(static_cast<double>(values[i])) < limit);
  return outside == 0;
}

// value * 2^96 = c2 * 2^84 + c1 * 2^42 + c0, added limb by limb: each step
// only scales by a power of two or subtracts an integer that the value's own
// bits contain, so all are exact, and the one rounding is c0's, at the unit.
// Exact steps give the same bits with or without FMA, so a copy for AVX2 is
// chosen at run time where the CPU has it.
__attribute__((target_clones("avx2", "default"))) void AddToLimbs(const float* values, size_t n, double* high,
                                                                  double* middle, double* low) {
  for (size_t i = 0; i < n; ++i) {
    const double in_high = static_cast<double>(values[i]) * 0x1p12;  // 2^96 units / 2^84 per high unit
    const double c2 = RoundToInteger(in_high);
    const double in_middle = (in_high - c2) * kLimb;
    const double c1 = RoundToInteger(in_middle);
    const double c0 = RoundToInteger((in_middle - c1) * kLimb);
    high[i] += c2;
    middle[i] += c1;
    low[i] += c0;
  }
}

}  // namespace

ExactSum::ExactSum(int64_t numel, int max_terms)
    : high_(static_cast<size_t>(std::max<int64_t>(numel, 0)), 0.0),
      middle_(high_.size(), 0.0),
      low_(high_.size(), 0.0),
      max_terms_(std::max(max_terms, 1)) {}

__int128 ExactSum::Limit() const { return (static_cast<__int128>(1) << 126) / max_terms_; }

double ExactSum::ValueLimit(int max_terms) { return std::ldexp(1.0, 30) / std::max(max_terms, 1); }

void ExactSum::Carry() {
  for (size_t i = 0; i < high_.size(); ++i) {
    const double low_carry = RoundToInteger(low_[i] / kLimb);
    low_[i] -= low_carry * kLimb;
    const double middle = middle_[i] + low_carry;
    const double middle_carry = RoundToInteger(middle / kLimb);
    middle_[i] = middle - middle_carry * kLimb;
    high_[i] += middle_carry;
  }
  load_ = 1;
}

absl::Status ExactSum::CheckRange(const float* values, int64_t n, int max_terms) {
  const double limit = ValueLimit(max_terms);
  if (AllBelow(values, static_cast<size_t>(std::max<int64_t>(n, 0)), limit)) return absl::OkStatus();
  size_t i = 0;
  while (std::fabs(values[i]) < limit) ++i;
  return absl::InvalidArgumentError(absl::StrCat("element ", i, " is ", values[i], ": exact sums of ", max_terms,
                                                 " vectors take finite values below ", limit,
                                                 " in magnitude (has training diverged?)"));
}

absl::Status ExactSum::Add(const float* values) {
  if (terms_ >= max_terms_)
    return absl::InvalidArgumentError(absl::StrCat("exact sum already holds its ", max_terms_, " vectors"));
  RETURN_IF_ERROR(CheckRange(values));
  if (load_ + 1 > kMaxLoad) Carry();
  AddToLimbs(values, high_.size(), high_.data(), middle_.data(), low_.data());
  ++load_;
  ++terms_;
  return absl::OkStatus();
}

absl::Status ExactSum::Merge(const ExactSum& other) {
  if (other.high_.size() != high_.size() || other.max_terms_ != max_terms_)
    return absl::InvalidArgumentError(absl::StrCat("cannot merge an exact sum of ", other.high_.size(),
                                                   " elements for ", other.max_terms_, " terms into one of ",
                                                   high_.size(), " for ", max_terms_));
  return MergeSlice(other, 0);
}

absl::Status ExactSum::MergeSlice(const ExactSum& other, int64_t first) {
  if (other.max_terms_ != max_terms_ || first < 0 || first + numel() > other.numel())
    return absl::InvalidArgumentError(absl::StrCat("cannot merge elements ", first, " to ", first + numel(),
                                                   " of an exact sum of ", other.numel(), " elements for ",
                                                   other.max_terms_, " terms into one of ", numel(), " for ",
                                                   max_terms_));
  if (terms_ + other.terms_ > max_terms_)
    return absl::InvalidArgumentError(absl::StrCat("merged exact sums would hold ", terms_ + other.terms_,
                                                   " vectors, more than ", max_terms_));
  if (load_ + other.load_ > kMaxLoad) Carry();
  if (load_ + other.load_ > kMaxLoad) {
    ExactSum carried = other;
    carried.Carry();
    return MergeSlice(carried, first);
  }
  const size_t offset = static_cast<size_t>(first);
  for (size_t i = 0; i < high_.size(); ++i) {
    high_[i] += other.high_[offset + i];
    middle_[i] += other.middle_[offset + i];
    low_[i] += other.low_[offset + i];
  }
  load_ += other.load_;
  terms_ += other.terms_;
  return absl::OkStatus();
}

void ExactSum::Clear() {
  std::fill(high_.begin(), high_.end(), 0.0);
  std::fill(middle_.begin(), middle_.end(), 0.0);
  std::fill(low_.begin(), low_.end(), 0.0);
  load_ = 1;
  terms_ = 0;
}

bool ExactSum::HasNegative() const {
  for (size_t i = 0; i < high_.size(); ++i)
    if (Element(i) < 0) return true;
  return false;
}

std::string ExactSum::Encode() const {
  std::string bytes(high_.size() * kElementBytes, '\0');
  for (size_t i = 0; i < high_.size(); ++i) {
    const __int128 value = Element(i);
    std::memcpy(bytes.data() + i * kElementBytes, &value, kElementBytes);
  }
  return bytes;
}

std::string ExactSum::EncodeCompact() const {
  std::string out;
  const size_t numel = high_.size();
  out.reserve(numel * 6);
  BitWriter writer(&out);
  __int128 block[kCompactBlock];
  for (size_t start = 0; start < numel; start += kCompactBlock) {
    const size_t n = std::min<size_t>(kCompactBlock, numel - start);
    // The block's shared trailing zeros are those of its values OR-ed, and
    // its width that of its largest magnitude (~v for a negative v), whose
    // top bit is the top bit of all magnitudes OR-ed: no branch per value.
    Bits any_bits = 0, magnitudes = 0;
    for (size_t k = 0; k < n; ++k) {
      block[k] = Element(start + k);
      any_bits |= static_cast<Bits>(block[k]);
      magnitudes |= static_cast<Bits>(block[k] ^ (block[k] >> 127));
    }
    int shift = TrailingZeros(static_cast<__int128>(any_bits));
    if (shift == 128) shift = 0;  // all zeros
    // A block of values that are all -1 or 0 once shifted (such as one
    // -2^shift) has no magnitude bits but needs its sign bit.
    const Bits top = magnitudes >> shift;
    const int width = any_bits == 0 ? 0 : (top == 0 ? 1 : WidthOf(static_cast<__int128>(top)));
    out.push_back(static_cast<char>(shift));
    out.push_back(static_cast<char>(width));
    if (width <= 56) {
      PackNarrowBlock(block, n, shift, width, &out);
      continue;
    }
    for (size_t k = 0; k < n; ++k) writer.Put(static_cast<Bits>(block[k] >> shift), width);
    writer.Flush();
  }
  return out;
}

size_t ExactSum::MaxCompactBytes(int64_t numel) {
  const size_t n = static_cast<size_t>(std::max<int64_t>(numel, 0));
  return (n + kCompactBlock - 1) / kCompactBlock * 2 + n * kElementBytes;
}

template <typename Visit>
absl::Status ExactSum::ForEachCompactBlock(absl::string_view bytes, int64_t numel, const Visit& visit,
                                           std::vector<size_t>* index) {
  const unsigned char* const begin = reinterpret_cast<const unsigned char*>(bytes.data());
  const unsigned char* const end = begin + bytes.size();
  const unsigned char* at = begin;
  // A block's packed values, with room to load 16 bytes from any of them.
  unsigned char packed_block[kCompactBlock * kElementBytes + sizeof(Bits)];
  __int128 block_values[kCompactBlock];
  for (int64_t start = 0; start < numel; start += kCompactBlock) {
    const int64_t block = start / kCompactBlock, n = std::min(kCompactBlock, numel - start);
    if (block % kIndexedBlocks == 0) index->push_back(static_cast<size_t>(at - begin));
    if (end - at < 2) return absl::InvalidArgumentError(absl::StrCat("compact exact sum ends in block ", block));
    const int shift = at[0], width = at[1];
    at += 2;
    const int64_t packed = (n * width + 7) / 8;
    if (width > 128 || shift + width > 128 || (width == 0 && shift != 0) || end - at < packed)
      return absl::InvalidArgumentError(absl::StrCat("compact exact sum block ", block, " has shift ", shift,
                                                     " and width ", width, " for ", end - at, " bytes"));
    at += packed;
    if (width == 0) continue;  // all zeros
    std::memcpy(packed_block, at - packed, static_cast<size_t>(packed));
    std::memset(packed_block + packed, 0, sizeof(Bits));
    const Bits largest = UnpackBlock(packed_block, n, width, block_values);
    RETURN_IF_ERROR(visit(start, n, shift, static_cast<const __int128*>(block_values), largest));
  }
  if (at != end)
    return absl::InvalidArgumentError(
        absl::StrCat("compact exact sum has ", end - at, " bytes after its last block"));
  return absl::OkStatus();
}

absl::StatusOr<CompactSum> CompactSum::Check(std::string bytes, int64_t numel, int terms, int max_terms) {
  if (numel < 0 || bytes.size() > ExactSum::MaxCompactBytes(numel))
    return absl::InvalidArgumentError(absl::StrCat("compact exact sum of ", bytes.size(), " bytes; ", numel,
                                                   " elements take at most ", ExactSum::MaxCompactBytes(numel)));
  if (terms < 1 || terms > max_terms)
    return absl::InvalidArgumentError(absl::StrCat("exact sum claims ", terms, " terms; 1 to ", max_terms, " allowed"));
  const __int128 reach = (static_cast<__int128>(1) << 126) / max_terms * terms;  // as ExactSum::Limit() * terms
  bool negative = false;
  std::vector<size_t> index;
  // One reach check a block, on its largest magnitude (shift + width <= 128
  // keeps it below 2^128); where that fails, the element beyond reach is
  // found and named.
  RETURN_IF_ERROR(ExactSum::ForEachCompactBlock(
      bytes, numel, [&](int64_t start, int64_t n, int shift, const __int128* values, Bits largest) -> absl::Status {
        Bits signs = 0;
        for (int64_t k = 0; k < n; ++k) signs |= static_cast<Bits>(values[k]);
        negative = negative || (signs >> 127) != 0;
        if ((largest << shift) < static_cast<Bits>(reach)) return absl::OkStatus();
        for (int64_t k = 0; k < n; ++k)
          if (!AbsBelow(static_cast<__int128>(static_cast<Bits>(values[k]) << shift), reach))
            return absl::InvalidArgumentError(absl::StrCat("exact sum element ", start + k, " lies beyond what ",
                                                           terms, " in-range values can reach"));
        return absl::OkStatus();
      },
      &index));
  CompactSum sum;
  sum.bytes_ = std::move(bytes);
  sum.block_offsets_ = std::move(index);
  sum.numel_ = numel;
  sum.terms_ = terms;
  sum.max_terms_ = max_terms;
  sum.has_negative_ = negative;
  return sum;
}

absl::Status ExactSum::Merge(const CompactSum& other) {
  if (other.numel_ != numel() || other.max_terms_ != max_terms_)
    return absl::InvalidArgumentError(absl::StrCat("cannot merge a compact exact sum of ", other.numel_,
                                                   " elements for ", other.max_terms_, " terms into one of ",
                                                   numel(), " for ", max_terms_));
  return MergeSlice(other, 0);
}

absl::Status ExactSum::MergeSlice(const CompactSum& other, int64_t first) {
  const int64_t last = first + numel();
  if (other.max_terms_ != max_terms_ || first < 0 || last > other.numel_ || first % kCompactBlock != 0 ||
      (last != other.numel_ && last % kCompactBlock != 0))
    return absl::InvalidArgumentError(absl::StrCat("cannot merge elements ", first, " to ", last,
                                                   " of a compact exact sum of ", other.numel_, " elements for ",
                                                   other.max_terms_, " terms into one of ", numel(), " for ",
                                                   max_terms_, " (slices start and end on blocks of ",
                                                   kCompactBlock, ")"));
  if (terms_ + other.terms_ > max_terms_)
    return absl::InvalidArgumentError(absl::StrCat("merged exact sums would hold ", terms_ + other.terms_,
                                                   " vectors, more than ", max_terms_));
  // Each element splits into limbs below 2^42 (its magnitude is within
  // reach, below 2^126): one unit of load.
  if (load_ + 1 > kMaxLoad) Carry();
  AddCompactBlocks(other, first);
  ++load_;
  terms_ += other.terms_;
  return absl::OkStatus();
}

void ExactSum::AddCompactBlocks(const CompactSum& other, int64_t first) {
  if (numel() == 0) return;  // `first` may be other's end, which has no offset
  constexpr int64_t kMask = (int64_t{1} << kLimbBits) - 1;
  const unsigned char* const begin = reinterpret_cast<const unsigned char*>(other.bytes_.data());
  // The nearest indexed block, then the headers of those up to `first`.
  int64_t block = first / kCompactBlock / kIndexedBlocks * kIndexedBlocks;
  const unsigned char* at = begin + other.block_offsets_[static_cast<size_t>(block / kIndexedBlocks)];
  auto packed_bytes = [&](int64_t n) { return static_cast<size_t>((n * at[1] + 7) / 8); };
  for (; block * kCompactBlock < first; ++block) at += 2 + packed_bytes(kCompactBlock);
  unsigned char packed_block[kCompactBlock * kElementBytes + sizeof(Bits)];
  __int128 values[kCompactBlock];
  for (int64_t start = first; start < first + numel(); start += kCompactBlock) {
    const int64_t n = std::min(kCompactBlock, other.numel_ - start);
    const int shift = at[0], width = at[1];
    const size_t packed = packed_bytes(n);
    at += 2;
    if (width == 0) continue;  // all zeros
    std::memcpy(packed_block, at, packed);
    std::memset(packed_block + packed, 0, sizeof(Bits));
    at += packed;
    UnpackBlock(packed_block, n, width, values);
    for (int64_t k = 0; k < n; ++k) {
      const __int128 value = static_cast<__int128>(static_cast<Bits>(values[k]) << shift);
      const size_t i = static_cast<size_t>(start - first + k);
      low_[i] += static_cast<double>(static_cast<int64_t>(value) & kMask);
      middle_[i] += static_cast<double>(static_cast<int64_t>(value >> kLimbBits) & kMask);
      high_[i] += static_cast<double>(static_cast<int64_t>(value >> (2 * kLimbBits)));
    }
  }
}

absl::StatusOr<ExactSum> ExactSum::DecodeCompact(absl::string_view bytes, int64_t numel, int terms, int max_terms) {
  ASSIGN_OR_RETURN(CompactSum compact, CompactSum::Check(std::string(bytes), numel, terms, max_terms));
  ExactSum sum(numel, max_terms);
  RETURN_IF_ERROR(sum.Merge(compact));
  return sum;
}

absl::Status ExactSum::SetElement(size_t i, __int128 value, __int128 reach, int terms) {
  if (!AbsBelow(value, reach))
    return absl::InvalidArgumentError(
        absl::StrCat("exact sum element ", i, " lies beyond what ", terms, " in-range values can reach"));
  SetLimbs(i, value);
  return absl::OkStatus();
}

void ExactSum::SetLimbs(size_t i, __int128 value) {
  // Limbs of 42 bits, low and middle in [0, 2^42): each below 2^42. (>> of a
  // negative integer shifts in ones, as floor division would.)
  constexpr int64_t kMask = (int64_t{1} << kLimbBits) - 1;
  low_[i] = static_cast<double>(static_cast<int64_t>(value) & kMask);
  middle_[i] = static_cast<double>(static_cast<int64_t>(value >> kLimbBits) & kMask);
  high_[i] = static_cast<double>(static_cast<int64_t>(value >> (2 * kLimbBits)));
}

absl::StatusOr<ExactSum> ExactSum::Decode(const std::string& bytes, int64_t numel, int terms, int max_terms) {
  if (numel < 0 || bytes.size() != static_cast<size_t>(numel) * kElementBytes)
    return absl::InvalidArgumentError(
        absl::StrCat("exact sum of ", bytes.size(), " bytes; ", numel, " elements need ", numel * kElementBytes));
  if (terms < 1 || terms > max_terms)
    return absl::InvalidArgumentError(absl::StrCat("exact sum claims ", terms, " terms; 1 to ", max_terms, " allowed"));
  ExactSum sum(numel, max_terms);
  const __int128 reach = sum.Limit() * terms;
  for (size_t i = 0; i < static_cast<size_t>(numel); ++i) {
    __int128 value;
    std::memcpy(&value, bytes.data() + i * kElementBytes, kElementBytes);
    RETURN_IF_ERROR(sum.SetElement(i, value, reach, terms));
  }
  sum.terms_ = terms;
  return sum;
}

}  // namespace reptile
