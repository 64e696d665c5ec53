// Tensors on the wire: chunking, reassembly, dtype conversion, and a
// randomized stream of malformed chunks against the decoding path.
#include <algorithm>
#include <cstring>
#include <limits>
#include <random>

#include "gtest/gtest.h"
#include "transport/wire/tensor_stream.h"

namespace reptile {
namespace {

std::vector<TensorChunk> Chunks(const std::vector<std::string>& tensors) {
  std::vector<absl::string_view> views(tensors.begin(), tensors.end());
  std::vector<TensorChunk> chunks;
  WriteChunks(views, [&](TensorChunk* c) {
    chunks.push_back(*c);
    return true;
  });
  return chunks;
}

TEST(WireTest, LargeTensorsRoundTripInMegabyteChunks) {
  const torch::Tensor a = torch::randn({3'000'000});  // 12 MB: three times gRPC's default message limit
  const torch::Tensor b = torch::randn({1000});
  const std::vector<TensorChunk> chunks = Chunks({EncodeTensor(a, DELTA_FP32), EncodeTensor(b, DELTA_FP32)});
  EXPECT_EQ(chunks.size(), 13u);
  for (const TensorChunk& c : chunks) EXPECT_LE(c.data().size(), kChunkBytes);
  TensorAssembler assembler({12'000'000, 4000});
  for (const TensorChunk& c : chunks) ASSERT_TRUE(assembler.Add(c).ok());
  ASSERT_TRUE(assembler.Finish().ok());
  EXPECT_TRUE(torch::equal(*DecodeTensor(assembler.bytes(0), DELTA_FP32, a.numel()), a));
  EXPECT_TRUE(torch::equal(*DecodeTensor(assembler.bytes(1), DELTA_FP32, b.numel()), b));
}

// The receiving paths move bytes instead of copying them: a chunk that is a
// whole tensor becomes the assembler's buffer, and fp32 bytes become the
// decoded tensor's storage; the checks are those of the copying forms.
TEST(WireTest, ReceivedBytesAreTakenOverNotCopied) {
  const torch::Tensor a = torch::randn({1000});
  std::vector<TensorChunk> chunks = Chunks({EncodeTensor(a, DELTA_FP32)});
  ASSERT_EQ(chunks.size(), 1u);
  const char* bytes = chunks[0].data().data();
  TensorAssembler assembler({4000});
  ASSERT_TRUE(assembler.Add(std::move(chunks[0])).ok());
  ASSERT_TRUE(assembler.Finish().ok());
  EXPECT_EQ(assembler.bytes(0).data(), bytes);
  EXPECT_EQ(assembler.bytes_received(), 4000u);
  absl::StatusOr<torch::Tensor> decoded = DecodeTensor(std::move(assembler.bytes(0)), DELTA_FP32, 1000);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(static_cast<const char*>(decoded->data_ptr()), bytes);
  EXPECT_TRUE(torch::equal(*decoded, a));
  std::string unused;
  EXPECT_EQ(WireBytes(*decoded, DELTA_FP32, &unused).data(), bytes);  // viewed, not encoded
  EXPECT_EQ(WireBytes(*decoded, DELTA_BF16, &unused), EncodeTensor(*decoded, DELTA_BF16));

  std::string with_nan = EncodeTensor(torch::tensor({1.0f, std::numeric_limits<float>::quiet_NaN()}), DELTA_FP32);
  EXPECT_NE(DecodeTensor(std::move(with_nan), DELTA_FP32, 2).status().message().find("element 1"), std::string::npos);
  EXPECT_FALSE(DecodeTensor(std::string(12, '\0'), DELTA_FP32, 2).ok());  // wrong size
  // A chunk read into a message that held a larger one keeps that capacity:
  // copied, so that memory still follows the bytes received.
  TensorChunk reused;
  reused.mutable_data()->reserve(1 << 20);
  reused.set_tensor(0);
  reused.set_offset(0);
  reused.mutable_data()->assign(16, 'x');  // keeps the capacity, as a parse into it does
  ASSERT_GE(reused.data().capacity(), size_t{1} << 20);
  TensorAssembler small({16});
  ASSERT_TRUE(small.Add(std::move(reused)).ok());
  EXPECT_LE(small.bytes(0).capacity(), 2 * 16 + 15u);
  EXPECT_EQ(small.bytes(0), std::string(16, 'x'));
  // A tensor in several chunks: the first is taken over, the rest appended.
  const torch::Tensor big = torch::randn({600'000});  // 2.4 MB: 3 chunks
  std::vector<TensorChunk> parts = Chunks({EncodeTensor(big, DELTA_FP32)});
  ASSERT_EQ(parts.size(), 3u);
  TensorAssembler several({2'400'000});
  for (TensorChunk& c : parts) ASSERT_TRUE(several.Add(std::move(c)).ok());
  ASSERT_TRUE(several.Finish().ok());
  EXPECT_TRUE(torch::equal(*DecodeTensor(std::move(several.bytes(0)), DELTA_FP32, big.numel()), big));
}

TEST(WireTest, HalfPrecisionDeltasDecodeToTheRoundedValues) {
  const torch::Tensor delta = torch::randn({4096}) * 1e-3;
  for (DeltaDtype dtype : {DELTA_BF16, DELTA_FP16}) {
    const std::string bytes = EncodeTensor(delta, dtype);
    EXPECT_EQ(bytes.size(), 4096u * 2);
    const torch::Tensor decoded = *DecodeTensor(bytes, dtype, 4096);
    const torch::Tensor expected =
        delta.to(dtype == DELTA_BF16 ? torch::kBFloat16 : torch::kHalf).to(torch::kFloat32);
    EXPECT_TRUE(torch::equal(decoded, expected)) << DeltaDtype_Name(dtype);
    EXPECT_FALSE(torch::equal(decoded, delta));
  }
}

TEST(WireTest, DecodingRefusesWrongSizesUnknownDtypesAndNonFiniteValues) {
  std::string bytes = EncodeTensor(torch::ones({10}), DELTA_FP32);
  EXPECT_FALSE(DecodeTensor(bytes, DELTA_FP32, 11).ok());
  EXPECT_FALSE(DecodeTensor(bytes, DELTA_BF16, 10).ok());
  EXPECT_FALSE(DecodeTensor(bytes, static_cast<DeltaDtype>(9), 10).ok());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(bytes.data() + 12, &nan, 4);
  absl::StatusOr<torch::Tensor> decoded = DecodeTensor(bytes, DELTA_FP32, 10);
  ASSERT_FALSE(decoded.ok());
  EXPECT_NE(decoded.status().message().find("element 3"), std::string::npos) << decoded.status();
}

// fuzz/tensor_stream_fuzzer found that a model of no parameters made
// DecodeTensor memcpy into an empty tensor's null data (undefined behaviour).
// And a count whose byte size wrapped around 2^64 passed the size check.
TEST(WireTest, DecodesEmptyTensorsAndRefusesCountsThatOverflow) {
  TensorAssembler assembler({0, 0});
  ASSERT_TRUE(assembler.Finish().ok());
  for (DeltaDtype dtype : {DELTA_FP32, DELTA_BF16, DELTA_FP16}) {
    absl::StatusOr<torch::Tensor> empty = DecodeTensor(assembler.bytes(0), dtype, 0);
    ASSERT_TRUE(empty.ok()) << empty.status();
    EXPECT_EQ(empty->numel(), 0);
  }
  EXPECT_FALSE(DecodeTensor("", DELTA_FP32, int64_t{1} << 62).ok());  // 2^62 * 4 bytes wraps to 0
  EXPECT_FALSE(DecodeTensor(std::string(6, '\0'), DELTA_FP32, 1).ok());  // not a whole number of elements
}

TEST(WireTest, AssemblerMemoryFollowsTheBytesReceived) {
  TensorAssembler assembler({12'000'000, 4000});
  TensorChunk chunk;
  chunk.set_tensor(0);
  chunk.set_data(std::string(8, 'x'));
  ASSERT_TRUE(assembler.Add(chunk).ok());
  // The first 8 bytes of a 12 MB tensor take memory for 8 bytes, not 12 MB.
  EXPECT_LT(assembler.bytes(0).capacity(), size_t{4096});
  EXPECT_EQ(assembler.bytes(1).capacity(), std::string().capacity());
  for (size_t offset = 8; offset < 12'000'000; offset += kChunkBytes) {
    chunk.set_offset(offset);
    chunk.set_data(std::string(std::min(kChunkBytes, 12'000'000 - offset), 'y'));
    ASSERT_TRUE(assembler.Add(chunk).ok());
    EXPECT_LE(assembler.bytes(0).capacity(), 2 * (offset + chunk.data().size()));
  }
  EXPECT_FALSE(assembler.Finish().ok());  // tensor 1 is missing
  EXPECT_EQ(assembler.bytes(0).size(), size_t{12'000'000});
}

TEST(WireTest, AssemblerRefusesGapsOverlapsOversizeAndTruncation) {
  TensorChunk chunk;
  chunk.set_tensor(0);
  chunk.set_offset(0);
  chunk.set_data(std::string(8, 'x'));
  {
    TensorAssembler assembler({16});
    ASSERT_TRUE(assembler.Add(chunk).ok());
    EXPECT_FALSE(assembler.Add(chunk).ok());  // overlap: offset 0 again
    EXPECT_NE(assembler.Finish().message().find("truncated"), std::string::npos);
  }
  {
    TensorAssembler assembler({16});
    chunk.set_offset(8);
    EXPECT_NE(assembler.Add(chunk).message().find("out of order"), std::string::npos);  // gap
  }
  {
    TensorAssembler assembler({4});
    chunk.set_offset(0);
    EXPECT_NE(assembler.Add(chunk).message().find("oversized"), std::string::npos);
  }
  {
    TensorAssembler assembler({8});
    chunk.set_tensor(1);
    EXPECT_FALSE(assembler.Add(chunk).ok());  // no such tensor
    chunk.set_tensor(0);
    chunk.clear_data();
    EXPECT_FALSE(assembler.Add(chunk).ok());  // empty chunk
  }
}

// Random chunk streams, some valid and most not, including chunks parsed
// from random bytes: the assembler either rebuilds the exact tensors or
// reports an error; it never crashes, reads out of bounds or accepts a
// stream whose bytes differ from what was sent.
TEST(WireTest, RandomChunkStreamsAreRebuiltExactlyOrRefused) {
  std::mt19937_64 rng(1803);
  int rebuilt = 0, refused = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const size_t tensors = 1 + rng() % 3;
    std::vector<std::string> payload(tensors);
    std::vector<size_t> sizes;
    for (std::string& p : payload) {
      p.resize(rng() % (3 * kChunkBytes / 2) / 64);
      for (char& c : p) c = static_cast<char>(rng());
      sizes.push_back(p.size());
    }
    std::vector<TensorChunk> chunks = Chunks(payload);
    const int mutation = static_cast<int>(rng() % 6);
    if (!chunks.empty()) {
      TensorChunk& victim = chunks[rng() % chunks.size()];
      switch (mutation) {
        case 0:
          victim.set_offset(victim.offset() + 1 + rng() % 100);
          break;
        case 1:
          victim.set_tensor(static_cast<uint32_t>(rng() % 5));
          break;
        case 2:
          victim.mutable_data()->resize(rng() % (victim.data().size() + 10));
          break;
        case 3: {
          std::string garbage(rng() % 200, '\0');
          for (char& c : garbage) c = static_cast<char>(rng());
          TensorChunk parsed;
          if (parsed.ParseFromString(garbage)) victim = parsed;
          break;
        }
        case 4:
          chunks.erase(chunks.begin() + rng() % chunks.size());
          break;
        default:
          break;  // unchanged
      }
    }
    TensorAssembler assembler(sizes);
    absl::Status status;
    for (const TensorChunk& c : chunks) {
      status = assembler.Add(c);
      if (!status.ok()) break;
    }
    if (status.ok()) status = assembler.Finish();
    if (status.ok()) {
      for (size_t t = 0; t < tensors; ++t) ASSERT_EQ(assembler.bytes(t), payload[t]) << "trial " << trial;
      ++rebuilt;
    } else {
      EXPECT_FALSE(status.message().empty());
      ++refused;
    }
  }
  EXPECT_GT(rebuilt, 300);
  EXPECT_GT(refused, 1500);
}

}  // namespace
}  // namespace reptile
