#include "transport/shared_memory/shared_board.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <limits>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

static_assert(std::atomic<uint32_t>::is_always_lock_free && sizeof(std::atomic<uint32_t>) == 4,
              "futex words must be plain 32-bit words");
static_assert(std::atomic<uint64_t>::is_always_lock_free, "claim words must be lock-free across processes");

constexpr char kBoardMagic[8] = {'R', 'P', 'T', 'B', 'O', 'A', 'R', 'D'};
constexpr char kBatchMagic[8] = {'R', 'P', 'T', 'B', 'A', 'T', 'C', 'H'};
constexpr char kClaimsMagic[8] = {'R', 'P', 'T', 'C', 'L', 'A', 'I', 'M'};
constexpr size_t kMaxConfigBytes = 1 << 20;
constexpr size_t kAlign = 64;

size_t Aligned(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

absl::Status Failure(const std::string& what, const std::string& path) {
  const int error = errno;
  const std::string message = absl::StrCat("cannot ", what, " ", path, ": ", std::strerror(error));
  return error == ENOENT ? absl::NotFoundError(message) : absl::InternalError(message);
}

// Where the specs start in a batch file of `items` items (after the index),
// and the size of its claims file.
size_t SpecsStart(size_t items) { return Aligned(sizeof(BatchHeader)) + items * sizeof(SpecPlace); }
size_t ClaimsBytes(size_t items) { return Aligned(sizeof(ClaimsHeader)) + items * sizeof(ItemSlot); }

}  // namespace

absl::StatusOr<SharedMapping> SharedMapping::Map(int fd, size_t size, const std::string& path, bool writable,
                                                 bool keep) {
  const int protection = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  void* data = size == 0 ? MAP_FAILED : mmap(nullptr, size, protection, MAP_SHARED, fd, 0);
  absl::Status failed = data == MAP_FAILED ? Failure("map", path) : absl::OkStatus();
  if (!keep || !failed.ok()) close(fd);
  if (!failed.ok()) return failed;
  return SharedMapping(static_cast<char*>(data), size, keep ? fd : -1);
}

absl::StatusOr<SharedMapping> SharedMapping::Create(const std::string& path, size_t size, Writers writers) {
  const int fd = memfd_create("reptile", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return Failure("make shared memory for", path);
  absl::Status made;
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) made = Failure("size", path);
  // Reserved now: memory that is short fails here, not as a fault later.
  if (const int error = made.ok() ? posix_fallocate(fd, 0, static_cast<off_t>(size)) : 0; error != 0)
    made = absl::ResourceExhaustedError(absl::StrCat("cannot reserve ", size, " bytes of shared memory for ", path,
                                                     ": ", std::strerror(error)));
  if (!made.ok()) {
    close(fd);
    return made;
  }
  // Mapped before it is sealed: a future-write seal leaves only this
  // mapping writable.
  ASSIGN_OR_RETURN(SharedMapping mapping, Map(fd, size, path, /*writable=*/true, /*keep=*/true));
  const int seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL | (writers == Writers::kCreator ? F_SEAL_FUTURE_WRITE : 0);
  if (fcntl(fd, F_ADD_SEALS, seals) != 0) return Failure("seal", path);
  const std::string target = absl::StrCat("/proc/", getpid(), "/fd/", fd);
  if (symlink(target.c_str(), path.c_str()) != 0) return Failure("create", path);
  return mapping;
}

absl::StatusOr<SharedMapping> SharedMapping::Open(const std::string& path, size_t min_size, Writers writers) {
  auto refused = [&path] {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a shared board or batch of this version"));
  };
  const bool writable = writers == Writers::kAll;
  const int access = writable ? O_RDWR : O_RDONLY;
  int fd = open(path.c_str(), access | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0 && errno == ELOOP) {
    // A link: only to a coordinator's memfd, and only one sealed as Create
    // seals it.
    char target[64] = {0};
    const ssize_t n = readlink(path.c_str(), target, sizeof(target) - 1);
    unsigned pid = 0, number = 0;
    char rest = 0;
    if (n <= 0 || std::sscanf(target, "/proc/%u/fd/%u%c", &pid, &number, &rest) != 2) return refused();
    fd = open(target, access | O_NONBLOCK | O_CLOEXEC);
    const int seals = fd < 0 ? 0 : fcntl(fd, F_GET_SEALS);
    const int needed = F_SEAL_SHRINK | F_SEAL_GROW | (writable ? 0 : F_SEAL_FUTURE_WRITE);
    if (fd >= 0 && (seals < 0 || (seals & needed) != needed)) {
      close(fd);
      return refused();
    }
  }
  if (fd < 0) return Failure("open", path);
  struct stat info;
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode) || static_cast<uint64_t>(info.st_size) < min_size) {
    close(fd);
    return refused();
  }
  return Map(fd, static_cast<size_t>(info.st_size), path, writable, /*keep=*/false);
}

SharedMapping::SharedMapping(SharedMapping&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      fd_(std::exchange(other.fd_, -1)) {}

SharedMapping& SharedMapping::operator=(SharedMapping&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

SharedMapping::~SharedMapping() { Release(); }

void SharedMapping::Release() {
  if (data_ != nullptr) munmap(data_, size_);
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<SharedBoard> SharedBoard::Create(const std::string& folder, const ExperimentConfig& config) {
  const std::string serialized = config.SerializeAsString();
  if (serialized.size() > kMaxConfigBytes) return absl::InvalidArgumentError("the config is too large to share");
  ASSIGN_OR_RETURN(SharedMapping config_file,
                   SharedMapping::Create(SharedConfigPath(folder), serialized.size() + 1, Writers::kCreator));
  // A trailing byte, so that even an empty config makes a file.
  std::memcpy(config_file.data(), serialized.data(), serialized.size());
  ASSIGN_OR_RETURN(SharedMapping board, SharedMapping::Create(SharedBoardPath(folder), sizeof(BoardHeader), Writers::kAll));
  BoardHeader* header = new (board.data()) BoardHeader();  // the file starts zeroed
  std::memcpy(header->magic, kBoardMagic, sizeof(kBoardMagic));
  return SharedBoard(std::move(board), std::move(config_file));
}

absl::StatusOr<SharedBoard> SharedBoard::Open(const std::string& folder) {
  const std::string path = SharedBoardPath(folder);
  ASSIGN_OR_RETURN(SharedMapping board, SharedMapping::Open(path, sizeof(BoardHeader), Writers::kAll));
  if (std::memcmp(reinterpret_cast<const BoardHeader*>(board.data())->magic, kBoardMagic, sizeof(kBoardMagic)) != 0)
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a shared board of this version"));
  ASSIGN_OR_RETURN(SharedMapping config, SharedMapping::Open(SharedConfigPath(folder), 1, Writers::kCreator));
  if (config.size() - 1 > kMaxConfigBytes)
    return absl::InvalidArgumentError(absl::StrCat(SharedConfigPath(folder), " is too large to be a config"));
  return SharedBoard(std::move(board), std::move(config));
}

absl::StatusOr<ExperimentConfig> SharedBoard::Config() const {
  ExperimentConfig config;
  if (!config.ParseFromArray(config_.data(), static_cast<int>(config_.size() - 1)))
    return absl::InvalidArgumentError("the shared board's config does not parse");
  return config;
}

absl::StatusOr<SharedBatch> SharedBatch::Create(const std::string& folder, const BatchHeader& fields,
                                                const std::vector<ItemSpec>& specs) {
  std::vector<std::string> serialized;
  serialized.reserve(specs.size());
  size_t size = SpecsStart(specs.size());
  for (const ItemSpec& spec : specs) size += serialized.emplace_back(spec.SerializeAsString()).size();
  if (size > std::numeric_limits<uint32_t>::max()) return absl::InvalidArgumentError("the batch is too large to share");
  ASSIGN_OR_RETURN(SharedMapping batch,
                   SharedMapping::Create(SharedBatchPath(folder, fields.batch), size, Writers::kCreator));
  absl::StatusOr<SharedMapping> claims =
      SharedMapping::Create(SharedClaimsPath(folder, fields.batch), ClaimsBytes(specs.size()), Writers::kAll);
  if (!claims.ok()) {
    unlink(SharedBatchPath(folder, fields.batch).c_str());
    return claims.status();
  }
  BatchHeader* header = new (batch.data()) BatchHeader(fields);
  std::memcpy(header->magic, kBatchMagic, sizeof(kBatchMagic));
  header->items = static_cast<uint32_t>(specs.size());
  SpecPlace* places = reinterpret_cast<SpecPlace*>(batch.data() + Aligned(sizeof(BatchHeader)));
  size_t offset = SpecsStart(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    places[i] = {static_cast<uint32_t>(offset), static_cast<uint32_t>(serialized[i].size())};
    std::memcpy(batch.data() + offset, serialized[i].data(), serialized[i].size());
    offset += serialized[i].size();
  }
  ClaimsHeader* claims_header = new (claims->data()) ClaimsHeader();
  std::memcpy(claims_header->magic, kClaimsMagic, sizeof(kClaimsMagic));
  claims_header->batch = fields.batch;
  for (size_t i = 0; i < specs.size(); ++i) new (claims->data() + Aligned(sizeof(ClaimsHeader)) + i * sizeof(ItemSlot)) ItemSlot();
  return SharedBatch(std::move(batch), *std::move(claims));
}

absl::StatusOr<SharedBatch> SharedBatch::Open(const std::string& folder, uint64_t number) {
  const std::string path = SharedBatchPath(folder, number);
  ASSIGN_OR_RETURN(SharedMapping batch, SharedMapping::Open(path, Aligned(sizeof(BatchHeader)), Writers::kCreator));
  const BatchHeader* header = reinterpret_cast<const BatchHeader*>(batch.data());
  if (std::memcmp(header->magic, kBatchMagic, sizeof(kBatchMagic)) != 0 || header->batch != number ||
      header->items > batch.size() / sizeof(SpecPlace) || SpecsStart(header->items) > batch.size())
    return absl::InvalidArgumentError(absl::StrCat(path, " is not batch ", number));
  const std::string claims_path = SharedClaimsPath(folder, number);
  ASSIGN_OR_RETURN(SharedMapping claims, SharedMapping::Open(claims_path, ClaimsBytes(header->items), Writers::kAll));
  const ClaimsHeader* claims_header = reinterpret_cast<const ClaimsHeader*>(claims.data());
  if (std::memcmp(claims_header->magic, kClaimsMagic, sizeof(kClaimsMagic)) != 0 || claims_header->batch != number)
    return absl::InvalidArgumentError(absl::StrCat(claims_path, " is not the claims of batch ", number));
  return SharedBatch(std::move(batch), std::move(claims));
}

ItemSlot& SharedBatch::item(size_t i) const {
  return *reinterpret_cast<ItemSlot*>(claims_.data() + Aligned(sizeof(ClaimsHeader)) + i * sizeof(ItemSlot));
}

absl::StatusOr<ItemSpec> SharedBatch::Spec(size_t i) const {
  const SpecPlace& place = reinterpret_cast<const SpecPlace*>(batch_.data() + Aligned(sizeof(BatchHeader)))[i];
  const size_t offset = place.offset, bytes = place.bytes;
  ItemSpec spec;
  if (offset < SpecsStart(header().items) || offset > batch_.size() || bytes > batch_.size() - offset ||
      !spec.ParseFromArray(batch_.data() + offset, static_cast<int>(bytes)))
    return absl::InvalidArgumentError(absl::StrCat("item ", i, " of batch ", header().batch, " does not parse"));
  return spec;
}

absl::StatusOr<ResultHeader> SharedBatch::ResultHeaderOf(size_t i) const {
  const ItemSlot& slot = item(i);
  const uint32_t bytes = slot.result_bytes;  // once: the worker may change it
  ResultHeader header;
  if (bytes > kResultHeaderBytes)
    return absl::InvalidArgumentError(
        absl::StrCat("its result header claims ", bytes, " bytes; the slot holds ", kResultHeaderBytes));
  if (!header.ParseFromArray(slot.result, static_cast<int>(bytes)))
    return absl::InvalidArgumentError("its result header does not parse");
  return header;
}

std::string SharedBoardPath(const std::string& folder) { return folder + "/board"; }

std::string SharedConfigPath(const std::string& folder) { return folder + "/config"; }

std::string SharedClaimsPath(const std::string& folder, uint64_t batch) {
  return absl::StrCat(folder, "/claims-", batch);
}

std::string SharedBatchPath(const std::string& folder, uint64_t batch) {
  return absl::StrCat(folder, "/batch-", batch);
}

std::string SharedMemoryStatePath(const std::string& folder) { return folder + "/state"; }

void FutexWait(std::atomic<uint32_t>* word, uint32_t expected, absl::Duration timeout) {
  const timespec wait = absl::ToTimespec(timeout);
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &wait, nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

}  // namespace reptile
