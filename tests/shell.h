// Shell command lines for tests, run in the source tree with their output
// captured: nothing but the C library, so that light tests can use it.
#ifndef REPTILE_TESTS_SHELL_H_
#define REPTILE_TESTS_SHELL_H_

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace reptile::testing {

// A shell command's exit code (-1 if it did not exit) and its stdout and
// stderr together.
struct ShellResult {
  int exit_code;
  std::string output;
};

// Runs a shell command line in the source tree, capturing its output.
inline ShellResult Shell(const std::string& line) {
  const std::string command = std::string("cd ") + REPTILE_SOURCE_DIR + " && " + line + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  ShellResult result{-1, ""};
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// Runs the reptile binary with `args` (a shell-quoted string).
inline ShellResult RunReptile(const std::string& args) { return Shell(std::string(REPTILE_BINARY) + " " + args); }

}  // namespace reptile::testing

#endif  // REPTILE_TESTS_SHELL_H_
