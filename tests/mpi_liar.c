/* A lying MPI rank, for tests/mpi_test: preloaded (LD_PRELOAD) into one
 * rank of a real `reptile mpi` job, it rewrites the header of each result
 * that rank sends to rank 0 (the first message of a result: tag 0, 80
 * bytes, its fields as transport/mpi/mpi_transport.cc lays them out) before
 * it leaves, as a broken or hostile rank would. MPI_LIAR says how:
 *   error_bytes  claims an error text of 2^40 bytes
 *   tasks        claims 7 tasks for every item
 * Everything else goes through untouched (PMPI). */
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { kHeaderBytes = 80, kTasksAt = 40, kErrorBytesAt = 72 };

int MPI_Isend(const void* buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm, MPI_Request* request) {
  const char* mode = getenv("MPI_LIAR");
  if (mode == NULL || dest != 0 || tag != 0 || type != MPI_BYTE || count != kHeaderBytes)
    return PMPI_Isend(buf, count, type, dest, tag, comm, request);
  /* The send may complete after this returns: the lie must outlive it. */
  char* lie = malloc(kHeaderBytes);
  memcpy(lie, buf, kHeaderBytes);
  const int64_t value = strcmp(mode, "tasks") == 0 ? 7 : (int64_t)1 << 40;
  memcpy(lie + (strcmp(mode, "tasks") == 0 ? kTasksAt : kErrorBytesAt), &value, sizeof(value));
  return PMPI_Isend(lie, count, type, dest, tag, comm, request);
}
