// Tensors between processes of one machine as files in a folder beside the
// coordinator's Unix socket, which only this user may enter (on tmpfs where
// there is one): the bulk bytes of a state or a result skip the socket,
// HTTP/2 and protobuf, while gRPC still carries the lease, the header and
// the answer. A file holds its tensors back to back in the encoding their
// chunks would have had on the stream. Reads trust nothing in the file:
// only a regular file, never through a symlink, of exactly the size the
// reader expects, without ever blocking on a FIFO.
#ifndef REPTILE_TRANSPORT_WIRE_SHARED_FOLDER_H_
#define REPTILE_TRANSPORT_WIRE_SHARED_FOLDER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace reptile {

// The file of state `version`, written by the coordinator.
std::string SharedStatePath(const std::string& folder, uint64_t version);
// The file of worker `worker`'s results, one at a time: the worker
// rewrites it for each result it submits (its uploads go one after another)
// and removes it when it leaves; the coordinator reads it while it handles
// the submission. The number is one the coordinator has checked.
std::string SharedResultPath(const std::string& folder, uint64_t worker);

// Writes `tensors` back to back to a new file `path`, whole or not at all
// (through a temporary file renamed into place), readable by this user only.
absl::Status WriteTensorFile(const std::string& path, absl::Span<const absl::string_view> tensors);

// Writes `tensors` back to back over what `path` holds (created if needed,
// readable by this user only, cut to their size): the file's pages are
// reused rather than allocated and freed again for every result.
absl::Status OverwriteTensorFile(const std::string& path, absl::Span<const absl::string_view> tensors);

// The tensors of `path`, of `sizes[i]` bytes each. NotFound if there is no
// such file; InvalidArgument if it is not a regular file, its size is not
// the sum of `sizes` (and its framing), or a writer rewrote it while it was
// read (each file is framed by a generation number written first and last,
// so a read that overlaps a rewrite is refused, never taken as a mix).
absl::StatusOr<std::vector<std::string>> ReadTensorFile(const std::string& path, absl::Span<const size_t> sizes);

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_WIRE_SHARED_FOLDER_H_
