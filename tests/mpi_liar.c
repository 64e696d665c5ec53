/* A lying MPI rank, for tests/mpi_test: preloaded (LD_PRELOAD) into one
 * rank of a real `reptile mpi` job, it rewrites the header of each result
 * that rank sends to rank 0 (the first message of a result: tag 0, a
 * serialized ResultHeader of proto/wire.proto) before it leaves, as a
 * broken or hostile rank would. MPI_LIAR says how:
 *   huge     sends 64 MiB: the header and an error text of that size
 *   tasks    claims 7 tasks for every item (ResultHeader.tasks, field 15,
 *            appended: protobuf takes the last value of a field)
 *   garbage  sends bytes that do not parse
 * Everything else goes through untouched (PMPI). */
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int MPI_Isend(const void* buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm, MPI_Request* request) {
  const char* mode = getenv("MPI_LIAR");
  if (mode == NULL || dest != 0 || tag != 0 || type != MPI_BYTE)
    return PMPI_Isend(buf, count, type, dest, tag, comm, request);
  /* The send may complete after this returns: the lie must outlive it. */
  if (strcmp(mode, "huge") == 0) {
    const int size = 64 << 20;
    char* lie = calloc(size, 1);
    memcpy(lie, buf, count);
    return PMPI_Isend(lie, size, MPI_BYTE, dest, tag, comm, request);
  }
  char* lie = malloc(count + 2);
  if (strcmp(mode, "tasks") == 0) {
    memcpy(lie, buf, count);
    lie[count] = (char)(15 << 3); /* field 15, varint */
    lie[count + 1] = 7;
    return PMPI_Isend(lie, count + 2, type, dest, tag, comm, request);
  }
  memset(lie, 0xff, count + 2);
  return PMPI_Isend(lie, count + 2, type, dest, tag, comm, request);
}
