// Fuzzes the compact exact-sum wire form (ExactSum::DecodeCompact), which a
// peer writes. Input layout:
//   byte 0     the terms the sum claims (1 to 64, of at most 64)
//   byte 1     the receiver's element count (0 to 255)
//   the rest   the compact bytes
// A sum must be refused or decode to one whose own compact form decodes to
// the same bits, no larger than MaxCompactBytes, and which its slices,
// added from the packed bytes, put together again.
//
// With REPTILE_FUZZ_WRITE_SEEDS=<folder> in the environment the binary
// instead writes seed inputs there, made by the real encoder, and exits
// (fuzz/make_corpus.sh).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/exact_sum.h"
#include "fuzz/seed_writer.h"

namespace {

constexpr int kMaxTerms = 64;

// Sums of 1, 2 and 64 vectors of 0, 1, 33 and 255 values over Reptile's
// range of magnitudes, both signs.
void WriteSeeds(const std::string& folder) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> exponent(-30, 2), unit(1, 10);
  for (int terms : {1, 2, kMaxTerms}) {
    for (int numel : {0, 1, 33, 255}) {
      reptile::ExactSum sum(numel, kMaxTerms);
      std::vector<float> values(numel);
      for (int t = 0; t < terms; ++t) {
        for (float& x : values) x = (rng() & 1 ? 1 : -1) * unit(rng) * std::pow(10.0f, exponent(rng));
        if (!sum.Add(values.data()).ok()) std::abort();
      }
      std::ofstream(folder + "/sum_" + std::to_string(terms) + "_" + std::to_string(numel), std::ios::binary)
          << static_cast<char>(terms) << static_cast<char>(numel) << sum.EncodeCompact();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  WriteSeedsIfAsked(WriteSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int terms = data[0];
  const int64_t numel = data[1];
  const std::string bytes(reinterpret_cast<const char*>(data + 2), size - 2);
  absl::StatusOr<reptile::ExactSum> sum = reptile::ExactSum::DecodeCompact(bytes, numel, terms, kMaxTerms);
  if (!sum.ok()) return 0;
  const std::string again = sum->EncodeCompact();
  if (again.size() > reptile::ExactSum::MaxCompactBytes(numel)) __builtin_trap();
  absl::StatusOr<reptile::ExactSum> decoded = reptile::ExactSum::DecodeCompact(again, numel, terms, kMaxTerms);
  if (!decoded.ok() || decoded->Encode() != sum->Encode()) __builtin_trap();
  // Added in slices of 1 to 4 blocks (as a coordinator's shards add it),
  // the accepted bytes give the same sum.
  absl::StatusOr<reptile::CompactSum> checked = reptile::CompactSum::Check(bytes, numel, terms, kMaxTerms);
  if (!checked.ok()) __builtin_trap();
  const int64_t step = reptile::ExactSum::kCompactBlock * (1 + bytes.size() % 4);
  std::string sliced;
  for (int64_t first = 0; first < numel; first += step) {
    reptile::ExactSum slice(std::min(step, numel - first), kMaxTerms);
    if (!slice.MergeSlice(*checked, first).ok()) __builtin_trap();
    sliced += slice.Encode();
  }
  if (sliced != sum->Encode()) __builtin_trap();
  return 0;
}
