// Replacing a file so that a crash or power loss leaves either the old
// contents or the new, never a mix: the new contents go to a temporary file
// beside it, which is fsynced, renamed over the target, and then the
// directory is fsynced so that the rename itself is on disk once this returns.
// Not safe for two writers of one path at once.
#ifndef REPTILE_COORDINATOR_ATOMIC_FILE_H_
#define REPTILE_COORDINATOR_ATOMIC_FILE_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace reptile {

// Writes the concatenation of `pieces` to `path`, created with `mode` less
// the umask (a leftover <path>.tmp is removed first, so its mode does not
// carry over). On failure `path` is untouched and the error names the file
// and the system's reason.
absl::Status WriteFileAtomically(const std::string& path, const std::vector<absl::string_view>& pieces, mode_t mode);

}  // namespace reptile

#endif  // REPTILE_COORDINATOR_ATOMIC_FILE_H_
