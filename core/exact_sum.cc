#include "core/exact_sum.h"

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

double ExactSum::ValueLimit() const { return std::ldexp(1.0, 30) / max_terms_; }

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

absl::Status ExactSum::CheckRange(const float* values) const {
  const double limit = ValueLimit();
  if (AllBelow(values, high_.size(), limit)) return absl::OkStatus();
  size_t i = 0;
  while (std::fabs(values[i]) < limit) ++i;
  return absl::InvalidArgumentError(absl::StrCat("element ", i, " is ", values[i], ": exact sums of ", max_terms_,
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
  if (terms_ + other.terms_ > max_terms_)
    return absl::InvalidArgumentError(absl::StrCat("merged exact sums would hold ", terms_ + other.terms_,
                                                   " vectors, more than ", max_terms_));
  if (load_ + other.load_ > kMaxLoad) Carry();
  if (load_ + other.load_ > kMaxLoad) {
    ExactSum carried = other;
    carried.Carry();
    return Merge(carried);
  }
  for (size_t i = 0; i < high_.size(); ++i) {
    high_[i] += other.high_[i];
    middle_[i] += other.middle_[i];
    low_[i] += other.low_[i];
  }
  load_ += other.load_;
  terms_ += other.terms_;
  return absl::OkStatus();
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
    if (!AbsBelow(value, reach))
      return absl::InvalidArgumentError(
          absl::StrCat("exact sum element ", i, " lies beyond what ", terms, " in-range values can reach"));
    // Limbs of 42 bits, low and middle in [0, 2^42): each below 2^42. (>>
    // of a negative integer shifts in ones, as floor division would.)
    constexpr int64_t kMask = (int64_t{1} << kLimbBits) - 1;
    sum.low_[i] = static_cast<double>(static_cast<int64_t>(value) & kMask);
    sum.middle_[i] = static_cast<double>(static_cast<int64_t>(value >> kLimbBits) & kMask);
    sum.high_[i] = static_cast<double>(static_cast<int64_t>(value >> (2 * kLimbBits)));
  }
  sum.terms_ = terms;
  return sum;
}

}  // namespace reptile
