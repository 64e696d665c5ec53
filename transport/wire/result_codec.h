// A work item's result as a ResultHeader and its tensors' bytes, both ways:
// how a worker writes it (on a gRPC stream, or into a file beside the
// coordinator) and how the coordinator checks and reads it back. Decoding
// trusts nothing: every header field is checked against what the item and
// the run's config require, and every tensor against its size and values.
#ifndef REPTILE_TRANSPORT_WIRE_RESULT_CODEC_H_
#define REPTILE_TRANSPORT_WIRE_RESULT_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "wire.pb.h"
#include "core/work.h"

namespace reptile {

// A result ready to send: its header (all but the ids, which the transport
// sets) and its tensors in order delta, m, v, viewed where they lie or in
// `storage`.
struct EncodedResult {
  ResultHeader header;
  std::vector<absl::string_view> tensors;
  std::vector<std::string> storage;
};

// `result` of a model of `numel` parameters, its delta in `dtype` (an item
// of several tasks sends exact sums instead). A failed result is an error
// header alone. Views into `result`'s tensors: it must outlive the return.
EncodedResult EncodeResult(const absl::StatusOr<TaskResult>& result, DeltaDtype dtype, int64_t numel);

// What a result of `work` must look like, as the coordinator decides it.
struct ResultShape {
  int64_t numel = 0;
  CarriedMoments moments;
  int meta_batch = 0;  // the bound of exact sums
};

// The byte sizes of the tensors that must follow `header` for `work` (for a
// node's upload, all of its leases' tasks); InvalidArgument saying what is
// wrong when the header, or a node item's scalars, do not fit them.
absl::StatusOr<std::vector<size_t>> ResultPayloadSizes(const ResultHeader& header, const WorkItem& work,
                                                       const ResultShape& shape);

// The result of `work` from a header that passed ResultPayloadSizes and
// tensors of those sizes; InvalidArgument for a non-finite or negative value
// where there can be none.
absl::StatusOr<TaskResult> DecodeResult(const ResultHeader& header, const WorkItem& work, const ResultShape& shape,
                                        std::vector<std::string> payload);

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_WIRE_RESULT_CODEC_H_
