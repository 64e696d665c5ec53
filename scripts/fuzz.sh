#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang++-14 (ASan + UBSan) and runs
# them from a scratch copy of their committed inputs: the seed corpus
# fuzz/corpus/<target>/ and the inputs that once crashed them,
# fuzz/regressions/<target>/. The repository is not modified.
#
#   scripts/fuzz.sh check [RUNS]       what ctest runs (Fuzz.Decoders): every
#       committed input through its target, then RUNS (default 100000; a
#       tenth for jpeg_fuzzer) inputs mutated from a fixed seed. The same code
#       gets the same verdict on every run.
#   scripts/fuzz.sh explore [SECONDS]  exploratory: SECONDS (default 600) per
#       target from a random seed. A find is kept in
#       <build>/run/<target>/crashes/; fix it and commit the input to
#       fuzz/regressions/<target>/. New corpus inputs are in
#       <build>/run/<target>/corpus/.
#
# Both print, per target, the inputs run, exec/s and the corpus's growth, and
# exit non-zero if a target does not build or an input crashes, leaks, times
# out or allocates too much. FUZZ_BUILD_DIR: build directory (build-fuzz);
# FUZZ_TARGETS: the targets to run (all).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-check}
case "$mode" in
  check) runs=${2:-100000} ;;
  explore) seconds=${2:-600} ;;
  *) echo "usage: scripts/fuzz.sh check [RUNS] | explore [SECONDS]" >&2; exit 2 ;;
esac
build=${FUZZ_BUILD_DIR:-build-fuzz}
read -r -a targets <<< "${FUZZ_TARGETS:-config_fuzzer checkpoint_fuzzer png_fuzzer jpeg_fuzzer tensor_stream_fuzzer metrics_fuzzer chart_fuzzer shared_memory_fuzzer compact_sum_fuzzer}"

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
# check's inputs for `target`: a tenth of them for jpeg_fuzzer, whose inputs
# may ask for images of up to 25 megapixels (about 200 exec/s against
# thousands for the others).
runs_of() {
  if [ "$1" = jpeg_fuzzer ]; then echo $((runs / 10)); else echo "$runs"; fi
}
# -malloc_limit_mb: no single allocation a decoder makes may exceed 1 GiB.
limits=(-timeout=30 -rss_limit_mb=2048 -malloc_limit_mb=1024)
failed=()
for target in "${targets[@]}"; do
  run="$build/run/$target"
  rm -rf "$run"
  mkdir -p "$run/corpus" "$run/crashes"
  cp fuzz/corpus/"$target"/* "$run/corpus/"
  if [ -d fuzz/regressions/"$target" ]; then cp fuzz/regressions/"$target"/* "$run/corpus/"; fi
  seeds=$(ls "$run/corpus" | wc -l)
  status=ok
  if [ "$mode" = check ]; then
    # Each committed input once, by name; then the fixed-seed mutations.
    if ! "$build/fuzz/$target" "${limits[@]}" -artifact_prefix="$run/crashes/" "$run"/corpus/* \
        > "$run/regressions.log" 2>&1; then
      status="FAILED on a committed input (log in $run/regressions.log)"
      tail -40 "$run/regressions.log"
    # Deterministic: no address randomisation, no values from comparisons
    # fed back into mutations (pointers and protobuf's clock-seeded map
    # hashes among them), no corpus reloads on a timer.
    elif ! setarch "$(uname -m)" -R "$build/fuzz/$target" "$run/corpus" -seed=1 -runs="$(runs_of "$target")" \
        -use_cmp=0 -reload=0 \
        "${limits[@]}" \
        -print_final_stats=1 -artifact_prefix="$run/crashes/" > "$run/log" 2>&1; then
      status="FAILED (log in $run/log, input in $run/crashes/)"
      tail -40 "$run/log"
    fi
  elif ! "$build/fuzz/$target" "$run/corpus" -max_total_time="$seconds" "${limits[@]}" -print_final_stats=1 \
      -artifact_prefix="$run/crashes/" > "$run/log" 2>&1; then
    status="FAILED (log in $run/log, input in $run/crashes/)"
    tail -40 "$run/log"
  fi
  [ "$status" = ok ] || failed+=("$target")
  executed=$(sed -n "s/^stat::number_of_executed_units: *//p" "$run/log" 2> /dev/null || true)
  speed=$(sed -n "s/^stat::average_exec_per_sec: *//p" "$run/log" 2> /dev/null || true)
  echo "fuzz: $target: ${executed:-?} inputs, ${speed:-?} exec/s, corpus $seeds -> $(ls "$run/corpus" | wc -l): $status"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${failed[*]} failed"
  exit 1
fi
if [ "$mode" = check ]; then
  echo "fuzz: every committed input and $runs seeded inputs per target ran without a crash"
else
  echo "fuzz: all ${#targets[@]} targets ran ${seconds} s each without a crash"
fi
