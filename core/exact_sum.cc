#include "core/exact_sum.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "ExactSum encodes its integers little-endian by memcpy");

namespace reptile {
namespace {

// A finite `value` below 2^30 in magnitude, in units of 2^-96, rounded to
// nearest with ties to even.
__int128 ToFixed(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const int exponent = static_cast<int>((bits >> 23) & 0xff);
  if (exponent == 0) return 0;  // zero or subnormal: below half a unit
  const uint32_t mantissa = (bits & 0x7fffff) | 0x800000;  // value = mantissa * 2^(exponent - 150)
  const int shift = exponent - 150 + ExactSum::kFractionBits;
  __int128 magnitude;
  if (shift >= 0) {
    magnitude = static_cast<__int128>(mantissa) << shift;
  } else if (shift < -24) {
    magnitude = 0;  // below half a unit
  } else {
    const int drop = -shift;
    uint32_t kept = mantissa >> drop;
    const uint32_t rest = mantissa & ((uint32_t{1} << drop) - 1);
    const uint32_t half = uint32_t{1} << (drop - 1);
    if (rest > half || (rest == half && (kept & 1))) ++kept;
    magnitude = kept;
  }
  return (bits >> 31) ? -magnitude : magnitude;
}

__int128 Abs(__int128 v) { return v < 0 ? -v : v; }

}  // namespace

ExactSum::ExactSum(int64_t numel, int max_terms)
    : values_(static_cast<size_t>(std::max<int64_t>(numel, 0)), 0), max_terms_(std::max(max_terms, 1)) {}

__int128 ExactSum::Limit() const { return (static_cast<__int128>(1) << 126) / max_terms_; }

double ExactSum::ValueLimit() const { return std::ldexp(1.0, 30) / max_terms_; }

absl::Status ExactSum::CheckRange(const float* values) const {
  const double limit = ValueLimit();
  bool all_in_range = true;
  for (size_t i = 0; i < values_.size(); ++i) all_in_range &= std::fabs(values[i]) < limit;  // false for NaN
  if (all_in_range) return absl::OkStatus();
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
  for (size_t i = 0; i < values_.size(); ++i) values_[i] += ToFixed(values[i]);
  ++terms_;
  return absl::OkStatus();
}

absl::Status ExactSum::Merge(const ExactSum& other) {
  if (other.values_.size() != values_.size() || other.max_terms_ != max_terms_)
    return absl::InvalidArgumentError(absl::StrCat("cannot merge an exact sum of ", other.values_.size(),
                                                   " elements for ", other.max_terms_, " terms into one of ",
                                                   values_.size(), " for ", max_terms_));
  if (terms_ + other.terms_ > max_terms_)
    return absl::InvalidArgumentError(absl::StrCat("merged exact sums would hold ", terms_ + other.terms_,
                                                   " vectors, more than ", max_terms_));
  for (size_t i = 0; i < values_.size(); ++i) values_[i] += other.values_[i];
  terms_ += other.terms_;
  return absl::OkStatus();
}

double ExactSum::Quotient(int64_t i, double divisor) const {
  return std::ldexp(static_cast<double>(values_[static_cast<size_t>(i)]), -kFractionBits) / divisor;
}

bool ExactSum::HasNegative() const {
  for (const __int128& v : values_)
    if (v < 0) return true;
  return false;
}

std::string ExactSum::Encode() const {
  std::string bytes(values_.size() * kElementBytes, '\0');
  std::memcpy(bytes.data(), values_.data(), bytes.size());
  return bytes;
}

absl::StatusOr<ExactSum> ExactSum::Decode(const std::string& bytes, int64_t numel, int terms, int max_terms) {
  if (numel < 0 || bytes.size() != static_cast<size_t>(numel) * kElementBytes)
    return absl::InvalidArgumentError(
        absl::StrCat("exact sum of ", bytes.size(), " bytes; ", numel, " elements need ", numel * kElementBytes));
  if (terms < 1 || terms > max_terms)
    return absl::InvalidArgumentError(absl::StrCat("exact sum claims ", terms, " terms; 1 to ", max_terms, " allowed"));
  ExactSum sum(numel, max_terms);
  std::memcpy(sum.values_.data(), bytes.data(), bytes.size());
  const __int128 reach = sum.Limit() * terms;
  for (int64_t i = 0; i < numel; ++i)
    if (Abs(sum.values_[static_cast<size_t>(i)]) >= reach)
      return absl::InvalidArgumentError(
          absl::StrCat("exact sum element ", i, " lies beyond what ", terms, " in-range values can reach"));
  sum.terms_ = terms;
  return sum;
}

}  // namespace reptile
