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

namespace reptile {
namespace {

static_assert(std::atomic<uint32_t>::is_always_lock_free && sizeof(std::atomic<uint32_t>) == 4,
              "futex words must be plain 32-bit words");
static_assert(std::atomic<uint64_t>::is_always_lock_free, "claim words must be lock-free across processes");

constexpr char kBoardMagic[8] = {'R', 'P', 'T', 'B', 'O', 'A', 'R', 'D'};
constexpr char kBatchMagic[8] = {'R', 'P', 'T', 'B', 'A', 'T', 'C', 'H'};
constexpr size_t kMaxConfigBytes = 1 << 20;
constexpr size_t kAlign = 64;

size_t Aligned(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

absl::Status Failure(const std::string& what, const std::string& path) {
  const int error = errno;
  const std::string message = absl::StrCat("cannot ", what, " ", path, ": ", std::strerror(error));
  return error == ENOENT ? absl::NotFoundError(message) : absl::InternalError(message);
}

size_t BatchPrefixBytes(size_t items) { return Aligned(sizeof(BatchHeader)) + items * sizeof(ItemSlot); }

}  // namespace

absl::StatusOr<SharedMapping> SharedMapping::Map(int fd, size_t size, const std::string& path, bool keep) {
  void* data = size == 0 ? MAP_FAILED : mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  absl::Status failed = data == MAP_FAILED ? Failure("map", path) : absl::OkStatus();
  if (!keep || !failed.ok()) close(fd);
  if (!failed.ok()) return failed;
  return SharedMapping(static_cast<char*>(data), size, keep ? fd : -1);
}

absl::StatusOr<SharedMapping> SharedMapping::Create(const std::string& path, size_t size) {
  const int fd = memfd_create("reptile", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return Failure("make shared memory for", path);
  absl::Status made;
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) made = Failure("size", path);
  // Reserved now: memory that is short fails here, not as a fault later.
  if (const int error = made.ok() ? posix_fallocate(fd, 0, static_cast<off_t>(size)) : 0; error != 0)
    made = absl::ResourceExhaustedError(absl::StrCat("cannot reserve ", size, " bytes of shared memory for ", path,
                                                     ": ", std::strerror(error)));
  if (made.ok() && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) made = Failure("seal", path);
  const std::string target = absl::StrCat("/proc/", getpid(), "/fd/", fd);
  if (made.ok() && symlink(target.c_str(), path.c_str()) != 0) made = Failure("create", path);
  if (!made.ok()) {
    close(fd);
    return made;
  }
  absl::StatusOr<SharedMapping> mapping = Map(fd, size, path, /*keep=*/true);
  if (!mapping.ok()) unlink(path.c_str());
  return mapping;
}

absl::StatusOr<SharedMapping> SharedMapping::Open(const std::string& path, size_t min_size) {
  auto refused = [&path] {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a shared board or batch of this version"));
  };
  int fd = open(path.c_str(), O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0 && errno == ELOOP) {
    // A link: only to a coordinator's memfd, and only a sealed one.
    char target[64] = {0};
    const ssize_t n = readlink(path.c_str(), target, sizeof(target) - 1);
    unsigned pid = 0, number = 0;
    char rest = 0;
    if (n <= 0 || std::sscanf(target, "/proc/%u/fd/%u%c", &pid, &number, &rest) != 2) return refused();
    fd = open(target, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    const int seals = fd < 0 ? 0 : fcntl(fd, F_GET_SEALS);
    if (fd >= 0 && (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))) {
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
  return Map(fd, static_cast<size_t>(info.st_size), path, /*keep=*/false);
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

absl::StatusOr<SharedBoard> SharedBoard::Create(const std::string& path, const ExperimentConfig& config) {
  const std::string serialized = config.SerializeAsString();
  if (serialized.size() > kMaxConfigBytes) return absl::InvalidArgumentError("the config is too large to share");
  absl::StatusOr<SharedMapping> mapping = SharedMapping::Create(path, Aligned(sizeof(BoardHeader)) + serialized.size());
  if (!mapping.ok()) return mapping.status();
  BoardHeader* header = new (mapping->data()) BoardHeader();  // the file starts zeroed
  std::memcpy(header->magic, kBoardMagic, sizeof(kBoardMagic));
  header->config_bytes = static_cast<uint32_t>(serialized.size());
  std::memcpy(mapping->data() + Aligned(sizeof(BoardHeader)), serialized.data(), serialized.size());
  return SharedBoard(*std::move(mapping));
}

absl::StatusOr<SharedBoard> SharedBoard::Open(const std::string& path) {
  absl::StatusOr<SharedMapping> mapping = SharedMapping::Open(path, Aligned(sizeof(BoardHeader)));
  if (!mapping.ok()) return mapping.status();
  const BoardHeader* header = reinterpret_cast<const BoardHeader*>(mapping->data());
  if (std::memcmp(header->magic, kBoardMagic, sizeof(kBoardMagic)) != 0 ||
      header->config_bytes > mapping->size() - Aligned(sizeof(BoardHeader)))
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a shared board of this version"));
  return SharedBoard(*std::move(mapping));
}

absl::StatusOr<ExperimentConfig> SharedBoard::Config() const {
  ExperimentConfig config;
  if (!config.ParseFromArray(mapping_.data() + Aligned(sizeof(BoardHeader)), static_cast<int>(header().config_bytes)))
    return absl::InvalidArgumentError("the shared board's config does not parse");
  return config;
}

absl::StatusOr<SharedBatch> SharedBatch::Create(const std::string& path, const BatchHeader& fields,
                                                const std::vector<ItemSpec>& specs) {
  std::vector<std::string> serialized;
  serialized.reserve(specs.size());
  size_t size = BatchPrefixBytes(specs.size());
  for (const ItemSpec& spec : specs) size += serialized.emplace_back(spec.SerializeAsString()).size();
  if (size > std::numeric_limits<uint32_t>::max()) return absl::InvalidArgumentError("the batch is too large to share");
  absl::StatusOr<SharedMapping> mapping = SharedMapping::Create(path, size);
  if (!mapping.ok()) return mapping.status();
  BatchHeader* header = new (mapping->data()) BatchHeader();
  std::memcpy(header->magic, kBatchMagic, sizeof(kBatchMagic));
  header->batch = fields.batch;
  header->numel = fields.numel;
  header->adam_step = fields.adam_step;
  header->items = static_cast<uint32_t>(specs.size());
  size_t offset = BatchPrefixBytes(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    ItemSlot* slot = new (mapping->data() + Aligned(sizeof(BatchHeader)) + i * sizeof(ItemSlot)) ItemSlot();
    slot->spec_offset = static_cast<uint32_t>(offset);
    slot->spec_bytes = static_cast<uint32_t>(serialized[i].size());
    std::memcpy(mapping->data() + offset, serialized[i].data(), serialized[i].size());
    offset += serialized[i].size();
  }
  return SharedBatch(*std::move(mapping));
}

absl::StatusOr<SharedBatch> SharedBatch::Open(const std::string& path, uint64_t batch) {
  absl::StatusOr<SharedMapping> mapping = SharedMapping::Open(path, Aligned(sizeof(BatchHeader)));
  if (!mapping.ok()) return mapping.status();
  const BatchHeader* header = reinterpret_cast<const BatchHeader*>(mapping->data());
  if (std::memcmp(header->magic, kBatchMagic, sizeof(kBatchMagic)) != 0 || header->batch != batch ||
      header->items > (mapping->size() - Aligned(sizeof(BatchHeader))) / sizeof(ItemSlot))
    return absl::InvalidArgumentError(absl::StrCat(path, " is not batch ", batch));
  return SharedBatch(*std::move(mapping));
}

ItemSlot& SharedBatch::item(size_t i) const {
  return *reinterpret_cast<ItemSlot*>(mapping_.data() + Aligned(sizeof(BatchHeader)) + i * sizeof(ItemSlot));
}

absl::StatusOr<ItemSpec> SharedBatch::Spec(size_t i) const {
  const ItemSlot& slot = item(i);
  const size_t offset = slot.spec_offset, bytes = slot.spec_bytes;
  ItemSpec spec;
  if (offset < BatchPrefixBytes(header().items) || offset > mapping_.size() || bytes > mapping_.size() - offset ||
      !spec.ParseFromArray(mapping_.data() + offset, static_cast<int>(bytes)))
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
