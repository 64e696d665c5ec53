#include "transport/lease_scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace reptile {

void LeaseScheduler::AddWorker(uint64_t id, const std::string& name, absl::Time now, int learners) {
  workers_[id] = WorkerRecord{name, now, std::max(1, learners)};
  ledger_.Join(id);
}

absl::Status LeaseScheduler::Touch(uint64_t id, absl::Time now) {
  auto it = workers_.find(id);
  if (it == workers_.end()) {
    if (evicted_.count(id)) return absl::PermissionDeniedError(absl::StrCat("worker ", id, " was evicted"));
    return absl::NotFoundError(absl::StrCat("unknown worker ", id, "; join again"));
  }
  it->second.last_seen = now;
  return absl::OkStatus();
}

void LeaseScheduler::RemoveWorker(uint64_t id, const std::string& why) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return;
  Event(absl::StrCat("worker ", id, " (", it->second.name, ") ", why, "; ", workers_.size() - 1, " left"));
  workers_.erase(it);
  ledger_.Drop(id);
  for (auto& [lease_id, lease] : leases_)
    if (lease.worker == id && lease.active) Redo(lease_id, absl::StrCat("worker ", id, " ", why));
}

void LeaseScheduler::Evict(uint64_t id, const std::string& why) {
  if (!workers_.count(id)) return;
  evicted_.insert(id);
  ++counters_.workers_evicted;
  RemoveWorker(id, absl::StrCat("evicted: ", why));
  ledger_.Forget(id);
}

void LeaseScheduler::StartBatch(std::vector<int> kinds) {
  EndBatch();
  in_batch_ = true;
  items_.assign(kinds.size(), ItemRecord());
  ledger_.StartBatch(kinds.size());
  for (size_t i = 0; i < kinds.size(); ++i) {
    items_[i].kind = kinds[i];
    pending_.push_back(i);
  }
  remaining_ = kinds.size();
}

void LeaseScheduler::EndBatch() {
  in_batch_ = false;
  items_.clear();
  ledger_.StartBatch(0);
  pending_.clear();
  for (auto& [id, lease] : leases_)
    if (lease.active) Deactivate(lease);
  // Leases with an open upload stay known until it closes; the rest go.
  for (auto it = leases_.begin(); it != leases_.end();) it = it->second.uploading ? std::next(it) : leases_.erase(it);
  remaining_ = 0;
  failure_.clear();
}

void LeaseScheduler::Deactivate(LeaseRecord& lease) {
  if (!lease.active) return;
  lease.active = false;
  --active_leases_;
  auto worker = workers_.find(lease.worker);
  if (worker != workers_.end()) --worker->second.leases;
}

void LeaseScheduler::Redo(uint64_t lease_id, const std::string& why) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end() || !it->second.active) return;
  LeaseRecord& lease = it->second;
  Deactivate(lease);
  if (!in_batch_ || items_[lease.item].done) return;
  // Another copy may still be running; the item is queued again only when
  // none is.
  for (const auto& [id, other] : leases_)
    if (other.active && other.item == lease.item) return;
  pending_.push_front(lease.item);
  ++counters_.tasks_redone;
  Event(absl::StrCat("task ", lease.item, " (lease ", lease_id, ") is redone: ", why));
}

absl::Duration LeaseScheduler::Typical(int kind) const {
  auto it = typical_.find(kind);
  return it == typical_.end() ? absl::ZeroDuration() : it->second;
}

bool LeaseScheduler::TypicalKnown(int kind) const { return typical_.count(kind) > 0; }

std::optional<absl::Duration> LeaseScheduler::HoardPatience(uint64_t worker) const {
  absl::Duration typical = absl::ZeroDuration();
  bool holds_any = false;
  for (const auto& [id, lease] : leases_) {
    if (!lease.active || lease.worker != worker || !in_batch_) continue;
    const int kind = items_[lease.item].kind;
    if (!TypicalKnown(kind)) return std::nullopt;
    typical = std::max(typical, Typical(kind));
    holds_any = true;
  }
  if (!holds_any) {  // its leases ended with their batch: judge by any kind
    if (typical_.empty()) return std::nullopt;
    for (const auto& [kind, t] : typical_) typical = std::max(typical, t);
  }
  return std::max(policy_.min_hoard_patience, policy_.hoard_factor * typical);
}

std::optional<LeaseScheduler::Grant> LeaseScheduler::Lease(uint64_t worker_id, absl::Time now) {
  return NextGrant(worker_id, now, std::nullopt);
}

std::vector<LeaseScheduler::Grant> LeaseScheduler::LeaseForLearners(uint64_t worker_id, absl::Time now,
                                                                    int finished) {
  std::vector<Grant> grants;
  auto worker = workers_.find(worker_id);
  const int learners = worker == workers_.end() ? 0 : worker->second.learners;
  std::optional<int> kind;
  while (static_cast<int>(grants.size()) < learners) {
    std::optional<Grant> grant = NextGrant(worker_id, now, kind, finished);
    if (!grant.has_value()) break;
    grants.push_back(*grant);
    kind = items_[grant->item].kind;
  }
  return grants;
}

std::optional<LeaseScheduler::Grant> LeaseScheduler::NextGrant(uint64_t worker_id, absl::Time now,
                                                               std::optional<int> kind, int finished) {
  auto worker = workers_.find(worker_id);
  if (!in_batch_ || worker == workers_.end()) return std::nullopt;
  WorkerRecord& record = worker->second;
  const int allowed = record.learners * (ledger_.proven(worker_id) ? policy_.max_leases : 1) + finished;
  if (record.leases >= allowed) return std::nullopt;
  // Items done by a copy may still sit in the queue.
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [this](size_t i) { return items_[i].done; }),
                 pending_.end());
  auto fits = [&](size_t i) { return !kind.has_value() || items_[i].kind == *kind; };
  std::optional<size_t> item;
  // A task this worker was refused on goes to others first.
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    if (ledger_.refused(*it, worker_id) || !fits(*it)) continue;
    item = *it;
    pending_.erase(it);
    break;
  }
  if (!item.has_value() && !pending_.empty() && workers_.size() == 1 && fits(pending_.front())) {
    item = pending_.front();  // nobody else could do it
    pending_.pop_front();
  }
  if (!item.has_value() && pending_.empty() && record.leases == 0) item = StragglerFor(worker_id, now);
  if (!item.has_value()) return std::nullopt;
  const uint64_t id = next_lease_++;
  leases_[id] = LeaseRecord{*item, worker_id, now};
  ++active_leases_;
  ++record.leases;
  if (!record.owes_since.has_value()) record.owes_since = now;
  return Grant{id, *item};
}

int LeaseScheduler::num_learners() const {
  int learners = 0;
  for (const auto& [id, worker] : workers_) learners += worker.learners;
  return learners;
}

std::optional<size_t> LeaseScheduler::StragglerFor(uint64_t idle_worker, absl::Time now) {
  // Copies go to workers that have returned results, unless none has.
  if (!ledger_.proven(idle_worker)) {
    for (const auto& [id, w] : workers_)
      if (ledger_.proven(id)) return std::nullopt;
  }
  const LeaseRecord* oldest = nullptr;
  uint64_t oldest_id = 0;
  for (const auto& [id, lease] : leases_) {
    if (!lease.active || lease.worker == idle_worker || items_[lease.item].done || items_[lease.item].copied) continue;
    const int kind = items_[lease.item].kind;
    const absl::Duration patience =
        std::max(policy_.min_copy_patience, policy_.copy_factor * Typical(kind));
    if (now - lease.granted < patience) continue;
    if (oldest == nullptr || lease.granted < oldest->granted) {
      oldest = &lease;
      oldest_id = id;
    }
  }
  if (oldest == nullptr) return std::nullopt;
  items_[oldest->item].copied = true;
  ++counters_.tasks_redone;
  Event(absl::StrFormat("task %d (lease %d) has run %.1f s on worker %d; a copy goes to worker %d", oldest->item,
                        oldest_id, absl::ToDoubleSeconds(now - oldest->granted), oldest->worker, idle_worker));
  return oldest->item;
}

absl::StatusOr<std::vector<size_t>> LeaseScheduler::BeginUpload(uint64_t worker,
                                                                 absl::Span<const uint64_t> lease_ids) {
  if (lease_ids.empty()) return absl::InvalidArgumentError("an upload must answer for a lease");
  std::vector<size_t> items;
  std::set<uint64_t> named;
  bool duplicate = false;
  for (uint64_t lease_id : lease_ids) {
    if (!named.insert(lease_id).second)
      return absl::InvalidArgumentError(absl::StrCat("lease ", lease_id, " named twice in one upload"));
    auto it = leases_.find(lease_id);
    if (it == leases_.end()) return absl::NotFoundError(absl::StrCat("unknown lease ", lease_id));
    const LeaseRecord& lease = it->second;
    if (lease.worker != worker)
      return absl::PermissionDeniedError(
          absl::StrCat("lease ", lease_id, " belongs to worker ", lease.worker, ", not ", worker));
    if (lease.uploading)
      return absl::ResourceExhaustedError(absl::StrCat("an upload for lease ", lease_id, " is already open"));
    duplicate = duplicate || !in_batch_ || items_[lease.item].done;
    items.push_back(lease.item);
  }
  if (duplicate) return absl::AlreadyExistsError("the task is already done");
  for (uint64_t lease_id : lease_ids) leases_[lease_id].uploading = true;
  return items;
}

absl::StatusOr<std::vector<size_t>> LeaseScheduler::OpenItems(absl::Span<const uint64_t> lease_ids) const {
  std::vector<size_t> items;
  for (uint64_t lease_id : lease_ids) {
    auto it = leases_.find(lease_id);
    if (it == leases_.end() || !in_batch_ || it->second.item >= items_.size() || items_[it->second.item].done)
      return absl::FailedPreconditionError(absl::StrCat("lease ", lease_id, ": its task is not open"));
    items.push_back(it->second.item);
  }
  return items;
}

int LeaseScheduler::Accept(absl::Span<const uint64_t> lease_ids, absl::Time now) {
  int completed = 0;
  std::optional<uint64_t> worker_id;
  for (uint64_t lease_id : lease_ids) {
    auto it = leases_.find(lease_id);
    if (it == leases_.end()) continue;
    LeaseRecord& lease = it->second;
    lease.uploading = false;
    worker_id = lease.worker;
    if (!in_batch_ || lease.item >= items_.size() || items_[lease.item].done) {
      Deactivate(lease);
      continue;
    }
    ++completed;
    ItemRecord& item = items_[lease.item];
    item.done = true;
    --remaining_;
    const absl::Duration took = now - lease.granted;
    auto typical = typical_.find(item.kind);
    if (typical == typical_.end()) {
      typical_[item.kind] = took;
    } else {
      typical->second = 0.9 * typical->second + 0.1 * took;
    }
    // Every lease of the item ends: a copy still running is not waited for.
    for (auto& [id, other] : leases_)
      if (other.item == lease.item) Deactivate(other);
  }
  auto worker = worker_id.has_value() ? workers_.find(*worker_id) : workers_.end();
  if (completed > 0 && worker != workers_.end()) {
    ledger_.Accepted(*worker_id);
    WorkerRecord& record = worker->second;
    record.late_in_a_row = 0;
    record.owes_since = record.leases > 0 ? std::optional<absl::Time>(now) : std::nullopt;
  }
  return completed;
}

const char* RefusalReasonLabel(RefusalReason reason) {
  switch (reason) {
    case RefusalReason::kWorkerError:
      return "worker_error";
    case RefusalReason::kUploadTooSlow:
      return "upload_too_slow";
    case RefusalReason::kInvalidResult:
    default:
      return "invalid_result";
  }
}

void LeaseScheduler::Refuse(absl::Span<const uint64_t> lease_ids, const std::string& refusal,
                            RefusalReason reason) {
  std::optional<uint64_t> worker_id;
  std::vector<size_t> open_items;
  for (uint64_t lease_id : lease_ids) {
    auto it = leases_.find(lease_id);
    if (it == leases_.end()) continue;
    it->second.uploading = false;
    worker_id = it->second.worker;
    const size_t item = it->second.item;
    if (in_batch_ && item < items_.size() && !items_[item].done) open_items.push_back(item);
  }
  if (!worker_id.has_value()) return;
  ++counters_.results_refused;
  ++counters_.results_refused_by_reason[RefusalReasonLabel(reason)];
  Event(absl::StrCat("result of task", open_items.size() == 1 ? " " : "s ", absl::StrJoin(open_items, ", "),
                     " from worker ", *worker_id, " refused: ", refusal));
  const std::string worker_fault = ledger_.Refused(*worker_id, open_items, refusal);
  for (uint64_t lease_id : lease_ids) Redo(lease_id, absl::StrCat("its result was refused: ", refusal));
  auto worker = workers_.find(*worker_id);
  // It answered; refusals are counted apart.
  if (worker != workers_.end() && worker->second.leases == 0) worker->second.owes_since.reset();
  if (!worker_fault.empty()) Evict(*worker_id, worker_fault);
  // Judged after the eviction, which takes back this refusal too.
  for (size_t item : open_items)
    if (failure_.empty()) failure_ = ledger_.TaskFault(item);
}

void LeaseScheduler::Duplicate(uint64_t worker_id, absl::Span<const uint64_t> lease_ids) {
  for (uint64_t lease_id : lease_ids) {
    auto lease = leases_.find(lease_id);
    if (lease == leases_.end()) continue;
    lease->second.uploading = false;
    Redo(lease_id, "it was summed with a task done elsewhere");  // only those still open go again
  }
  auto worker = workers_.find(worker_id);
  if (worker == workers_.end()) return;
  WorkerRecord& record = worker->second;
  if (record.leases == 0) record.owes_since.reset();  // it did deliver
  if (++record.late_in_a_row >= policy_.evict_after_refusals)
    Evict(worker_id, absl::StrCat(record.late_in_a_row,
                                  " results in a row came after their task was done by another worker"));
}

void LeaseScheduler::Lost(absl::Span<const uint64_t> lease_ids) {
  for (uint64_t lease_id : lease_ids) {
    auto it = leases_.find(lease_id);
    if (it == leases_.end()) continue;
    it->second.uploading = false;
    Redo(lease_id, "its upload was cut off");
    auto worker = workers_.find(it->second.worker);
    if (worker != workers_.end() && worker->second.leases == 0) worker->second.owes_since.reset();
  }
}

void LeaseScheduler::Tick(absl::Time now) {
  std::vector<uint64_t> silent;
  for (const auto& [id, worker] : workers_)
    if (now - worker.last_seen > policy_.worker_timeout) silent.push_back(id);
  for (uint64_t id : silent) {
    RemoveWorker(id, absl::StrFormat("lost: no word for %.1f s", absl::ToDoubleSeconds(policy_.worker_timeout)));
    last_lost_ = now;
  }
  std::vector<uint64_t> expired;
  for (const auto& [id, lease] : leases_)
    if (lease.active && !lease.uploading && now - lease.granted > policy_.task_timeout) expired.push_back(id);
  std::vector<std::pair<uint64_t, std::string>> hoarders;
  for (const auto& [id, worker] : workers_) {
    if (!worker.owes_since.has_value()) continue;
    if (now - worker.last_seen > 2 * policy_.heartbeat) continue;  // silent: the worker_timeout rule
    const std::optional<absl::Duration> patience = HoardPatience(id);
    const absl::Duration owed = now - *worker.owes_since;
    if (patience.has_value() && owed > *patience)
      hoarders.emplace_back(id, absl::StrFormat("owed a result for %.1f s (%.1f s allowed)",
                                                absl::ToDoubleSeconds(owed), absl::ToDoubleSeconds(*patience)));
  }
  for (uint64_t id : expired)
    Redo(id, absl::StrFormat("not done within runtime.task_timeout_seconds (%.0f s)",
                             absl::ToDoubleSeconds(policy_.task_timeout)));
  for (const auto& [worker, why] : hoarders) Evict(worker, why);
}

std::vector<std::string> LeaseScheduler::TakeEvents() {
  std::vector<std::string> out;
  out.swap(events_);
  return out;
}

}  // namespace reptile
