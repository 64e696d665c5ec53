// SHA-256 fingerprints, used to show that two runs hold bitwise-identical
// parameters and to detect corrupt checkpoints.
#ifndef REPTILE_CORE_FINGERPRINT_H_
#define REPTILE_CORE_FINGERPRINT_H_

#include <array>
#include <cstdint>
#include <string>

namespace reptile {

using Sha256Digest = std::array<uint8_t, 32>;

Sha256Digest Sha256(const void* data, size_t size);
std::string ToHex(const Sha256Digest& digest);

}  // namespace reptile

#endif  // REPTILE_CORE_FINGERPRINT_H_
