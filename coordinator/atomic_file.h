// Replacing a file so that a crash or power loss leaves either the old
// contents or the new, never a mix: the new contents go to a temporary file
// beside it, which is fsynced, renamed over the target, and then the
// directory is fsynced so that the rename itself is on disk once this returns.
// Each write's temporary file has a name of its own (<path>.tmp-<pid>-<n>),
// so two writers of one path leave one's whole file or the other's.
#ifndef REPTILE_COORDINATOR_ATOMIC_FILE_H_
#define REPTILE_COORDINATOR_ATOMIC_FILE_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace reptile {

// What temporary files' names hold after their target's: a crash leaves
// them behind, and the run directory's holder removes them.
inline constexpr absl::string_view kTemporarySuffix = ".tmp-";

// Writes the concatenation of `pieces` to `path`, created with `mode` less
// the umask. On failure `path` is untouched and the error names the file and
// the system's reason.
absl::Status WriteFileAtomically(const std::string& path, const std::vector<absl::string_view>& pieces, mode_t mode);

}  // namespace reptile

#endif  // REPTILE_COORDINATOR_ATOMIC_FILE_H_
