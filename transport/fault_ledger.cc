#include "transport/fault_ledger.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace reptile {

void FaultLedger::Join(uint64_t worker) { workers_[worker] = WorkerFaults(); }

void FaultLedger::Drop(uint64_t worker) { workers_.erase(worker); }

void FaultLedger::Forget(uint64_t worker) {
  workers_.erase(worker);
  for (ItemFaults& item : items_) item.faulted_by.erase(worker);
}

void FaultLedger::StartBatch(size_t items) { items_.assign(items, ItemFaults()); }

void FaultLedger::Accepted(uint64_t worker) {
  auto it = workers_.find(worker);
  if (it == workers_.end()) return;
  it->second = WorkerFaults();
  it->second.proven = true;
}

std::string FaultLedger::Refused(uint64_t worker, absl::Span<const size_t> items, const std::string& why) {
  auto it = workers_.find(worker);
  const bool member = it != workers_.end();
  for (size_t item : items) {
    if (item >= items_.size()) continue;
    items_[item].refused_by.insert(worker);
    if (member && it->second.proven) items_[item].faulted_by[worker] = why;
  }
  if (!member) return "";
  WorkerFaults& faults = it->second;
  faults.recent_refusals.push_back(why);
  if (++faults.refusals_in_a_row < evict_after_refusals_) return "";
  return absl::StrCat(faults.refusals_in_a_row, " results refused in a row (",
                      absl::StrJoin(faults.recent_refusals, "; "), ")");
}

std::string FaultLedger::TaskFault(size_t item) const {
  if (item >= items_.size()) return "";
  const std::map<uint64_t, std::string>& faulted_by = items_[item].faulted_by;
  if (static_cast<int>(faulted_by.size()) < max_task_attempts_) return "";
  std::vector<std::string> parts;
  for (const auto& [worker, why] : faulted_by) parts.push_back(absl::StrCat("worker ", worker, ": ", why));
  return absl::StrCat("work item ", item, " failed on ", faulted_by.size(),
                      " different workers, so the task, not a worker, is at fault (", absl::StrJoin(parts, "; "),
                      ")");
}

bool FaultLedger::proven(uint64_t worker) const {
  auto it = workers_.find(worker);
  return it != workers_.end() && it->second.proven;
}

bool FaultLedger::refused(size_t item, uint64_t worker) const {
  return item < items_.size() && items_[item].refused_by.count(worker) > 0;
}

}  // namespace reptile
