#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang++-14 (ASan + UBSan) and runs
# each for SECONDS (default 60), starting from a scratch copy of its committed
# corpus fuzz/corpus/<target>/ and of the inputs that once crashed it,
# fuzz/regressions/<target>/, so the repository is not modified. Exits
# non-zero if a target does not build or any input crashes, leaks, times out or
# allocates too much; the input is kept in <build>/run/<target>/crashes/.
#
# Usage: scripts/fuzz.sh [SECONDS]   (FUZZ_BUILD_DIR: build directory, default build-fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
build=${FUZZ_BUILD_DIR:-build-fuzz}
targets=(config_fuzzer checkpoint_fuzzer png_fuzzer tensor_stream_fuzzer metrics_fuzzer)

if ! command -v clang++-14 > /dev/null; then
  echo "fuzz: clang++-14 is missing (scripts/install_deps.sh installs clang-14 and libclang-rt-14-dev)"
  exit 1
fi
mkdir -p "$build"
log="$build/fuzz-build.log"
started=$SECONDS
{
  cmake -S . -B "$build" -DREPTILE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 &&
    cmake --build "$build" -j 2 --target "${targets[@]}"
} > "$log" 2>&1 || { tail -50 "$log"; echo "fuzz: build failed (log in $log)"; exit 1; }
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - started)) s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
failed=()
for target in "${targets[@]}"; do
  run="$build/run/$target"
  rm -rf "$run"
  mkdir -p "$run/corpus" "$run/crashes"
  cp fuzz/corpus/"$target"/* "$run/corpus/"
  if [ -d fuzz/regressions/"$target" ]; then cp fuzz/regressions/"$target"/* "$run/corpus/"; fi
  seeds=$(ls "$run/corpus" | wc -l)
  # -malloc_limit_mb: no single allocation a decoder makes may exceed 1 GiB.
  if "$build/fuzz/$target" "$run/corpus" -max_total_time="$seconds" -timeout=30 \
      -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
      -artifact_prefix="$run/crashes/" > "$run/log" 2>&1; then
    status=ok
  else
    status="FAILED (log in $run/log, input in $run/crashes/)"
    failed+=("$target")
    tail -40 "$run/log"
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run/log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$run/log")
  echo "fuzz: $target: ${runs:-?} inputs, ${speed:-?} exec/s, corpus $seeds -> $(ls "$run/corpus" | wc -l): $status"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${failed[*]} failed"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds} s each without a crash"
