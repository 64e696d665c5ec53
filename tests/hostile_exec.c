/* Puts a hostile worker in a real worker's place, for tests/shared_memory_test:
 * preloaded (LD_PRELOAD) into a `reptile train --workers N`, it lets the
 * coordinator and most workers be, but turns the `reptile worker
 * --shared_memory BOARD` it starts into HOSTILE_BINARY (same pid, so still
 * the coordinator's own child) while modes are left. HOSTILE_MODES lists one
 * mode per worker started, in order ("honest" leaves that one be); each is
 * taken once, by creating HOSTILE_DIR/<n>.taken. The hostile worker is run as
 *   HOSTILE_BINARY MODE BOARD HOSTILE_DIR */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void BecomeHostile(void) {
  const char* modes = getenv("HOSTILE_MODES");
  const char* binary = getenv("HOSTILE_BINARY");
  const char* dir = getenv("HOSTILE_DIR");
  if (modes == NULL || binary == NULL || dir == NULL) return;
  char args[8192] = {0};
  const int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  const ssize_t n = read(fd, args, sizeof(args) - 1);
  close(fd);
  if (n <= 0) return;
  const char* argv1 = args + strlen(args) + 1;
  const char* argv2 = argv1 + strlen(argv1) + 1;
  const char* board = argv2 + strlen(argv2) + 1;
  if (argv2 >= args + n || board >= args + n || strcmp(argv1, "worker") != 0 || strcmp(argv2, "--shared_memory") != 0)
    return;
  char list[1024];
  snprintf(list, sizeof(list), "%s", modes);
  int number = 0;
  for (char* mode = strtok(list, ","); mode != NULL; mode = strtok(NULL, ","), ++number) {
    char taken[4096];
    snprintf(taken, sizeof(taken), "%s/%d.taken", dir, number);
    const int mine = open(taken, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (mine < 0) continue;
    close(mine);
    if (strcmp(mode, "honest") == 0) return;
    unsetenv("LD_PRELOAD");
    char board_path[4096];
    snprintf(board_path, sizeof(board_path), "%s", board);
    execl(binary, binary, mode, board_path, dir, (char*)NULL);
    _exit(127);
  }
}
