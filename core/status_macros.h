// RETURN_IF_ERROR / ASSIGN_OR_RETURN for absl::Status, which Debian's Abseil
// (20220623) does not ship publicly.
#ifndef REPTILE_CORE_STATUS_MACROS_H_
#define REPTILE_CORE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define REPTILE_CONCAT_INNER(a, b) a##b
#define REPTILE_CONCAT(a, b) REPTILE_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                       \
  do {                                              \
    ::absl::Status reptile_status_ = (expr);        \
    if (!reptile_status_.ok()) return reptile_status_; \
  } while (false)

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(REPTILE_CONCAT(reptile_statusor_, __LINE__), lhs, expr)

#define ASSIGN_OR_RETURN_IMPL(statusor, lhs, expr) \
  auto statusor = (expr);                          \
  if (!statusor.ok()) return statusor.status();    \
  lhs = std::move(statusor).value()

#endif  // REPTILE_CORE_STATUS_MACROS_H_
