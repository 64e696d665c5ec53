#!/usr/bin/env bash
# Configures and builds the project (Release) into build/: every target, or
# only those named (`scripts/build.sh reptile`, as the container image's
# build stage does). Shows one line per
# file compiled and per target built, with make's percentage; the full output
# (warnings, commands) goes to build.log, whose last 50 lines are shown if the
# build fails.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
# Ninja where it is installed (scripts/install_deps.sh installs it): it
# compiles a target's files while the libraries it links are still being
# built, where make waits for them. A build/ made by the other generator is
# started afresh, as CMake cannot switch a build directory's generator.
generator="Unix Makefiles"
if command -v ninja > /dev/null; then generator=Ninja; fi
if [ -f build/CMakeCache.txt ] && ! grep -qx "CMAKE_GENERATOR:INTERNAL=$generator" build/CMakeCache.txt; then
  echo "build: build/ was made with another generator; starting it afresh with $generator"
  rm -rf build
fi
export NINJA_STATUS="[%p] "  # make's "[ 42%] " prefix, which condense() reads
echo "build: configuring (cmake -G \"$generator\" -S . -B build; full log in build.log)"
cmake -G "$generator" -S . -B build -DCMAKE_BUILD_TYPE=Release > build.log 2>&1 || { cat build.log; exit 1; }
echo "build: compiling with $jobs jobs (from nothing, on 2 cores: the reptile binary about 2 minutes, everything about 5; docs/performance.md)"
# "[ 22%] Building CXX object CMakeFiles/reptile_core.dir/core/config.cc.o"
#   -> "[ 22%] compiling core/config.cc (reptile_core)"
# "[ 30%] Building CXX object CMakeFiles/reptile_core.dir/Unity/unity_1_cxx.cxx.o"
#   -> "[ 30%] compiling reptile_core, batch 1" (a unity build's batch of files)
# "[ 40%] Built target reptile_core" -> "[ 40%] built reptile_core"
# "[ 41%] Linking CXX executable reptile" -> "[ 41%] linking reptile"
condense() {
  sed -u -n -E \
    -e 's#^(\[ *[0-9]+%\]) Building [A-Z]+ object (.*/)?([^/]+)\.dir/Unity/unity_([0-9]+)_[a-z]+\.[a-z]+\.o$#\1 compiling \3, batch \4#p' \
    -e 's#^(\[ *[0-9]+%\]) Building [A-Z]+ object (.*/)?([^/]+)\.dir/(.*)\.o$#\1 compiling \4 (\3)#p' \
    -e 's#^(\[ *[0-9]+%\]) Built target (.*)$#\1 built \2#p' \
    -e 's#^(\[ *[0-9]+%\]) Linking [A-Z]+ [a-z ]+ (.*/)?([^/]+)$#\1 linking \3#p' \
    -e 's#^(\[ *[0-9]+%\]) ((Running|protoc) .*)$#\1 \2#p'
}
status=0
targets=()
for target in "$@"; do targets+=(--target "$target"); done
cmake --build build -j "$jobs" "${targets[@]}" 2>&1 | tee -a build.log | condense || status=$?
if [ "$status" -ne 0 ]; then
  echo "build: FAILED; the end of build.log:"
  tail -50 build.log
  exit 1
fi
echo "build: ok (log in build.log)"
