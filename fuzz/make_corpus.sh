#!/usr/bin/env bash
# Rewrites the seed corpus fuzz/corpus/<target>/ (committed; scripts/fuzz.sh
# only reads it): the configs of configs/, checkpoints written by build/reptile,
# an Omniglot PNG and small synthetic PNGs of every colour type, valid chunk
# streams, metrics.jsonl files written by build/reptile, chart panels, and
# JPEGs and the shared-memory board and batches as the real writers make them
# (by the fuzzer binaries themselves). Needs build/reptile, the fuzz build (FUZZ_BUILD_DIR,
# default build-fuzz), python3, unzip and ../shared/data/omniglot.
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=fuzz/corpus
rm -rf "$corpus"
mkdir -p "$corpus"/{config_fuzzer,checkpoint_fuzzer,png_fuzzer,jpeg_fuzzer,tensor_stream_fuzzer,metrics_fuzzer,chart_fuzzer,shared_memory_fuzzer,compact_sum_fuzzer}
for target in shared_memory_fuzzer jpeg_fuzzer compact_sum_fuzzer; do
  REPTILE_FUZZ_WRITE_SEEDS="$corpus/$target" "${FUZZ_BUILD_DIR:-build-fuzz}/fuzz/$target"
done

# Configs, and one followed by NUL-separated overrides as argv gives them.
cp configs/*.textproto "$corpus/config_fuzzer/"
{
  cat configs/demo.textproto
  printf '\0%s' outer.rounds=500 inner.state_mode=RESET task.data_dir=/data/omniglot name=renamed
} > "$corpus/config_fuzzer/demo_with_overrides"

# Real checkpoints of a small sine MLP: without Adam's moments, and with them.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
small=(outer.rounds=2 model.hidden_units=4 eval.every_rounds=0 eval.final_episodes=1 runtime.local_workers=THREADS)
build/reptile train --config configs/sine.textproto --run_dir "$scratch/sgd" "${small[@]}" > /dev/null
build/reptile train --config configs/sine.textproto --run_dir "$scratch/adam" "${small[@]}" \
  inner.optimizer=ADAM inner.adam_beta1=0 inner.adam_beta2=0.999 inner.adam_epsilon=1e-8 inner.state_mode=CARRY > /dev/null
cp "$scratch/sgd/checkpoint.bin" "$corpus/checkpoint_fuzzer/sine_sgd.bin"
cp "$scratch/adam/checkpoint.bin" "$corpus/checkpoint_fuzzer/sine_adam_carry.bin"

# metrics.jsonl: a small Omniglot run's (rounds with accuracy, evaluations, the
# final one), a sine run's, and one with rounds missing and a torn last line.
build/reptile train --config configs/omniglot_5w1s.textproto --run_dir "$scratch/omniglot" outer.rounds=8 \
  eval.every_rounds=4 eval.episodes=2 eval.final_episodes=2 eval.inner_iterations=2 runtime.local_workers=THREADS \
  runtime.metrics_every_rounds=2 > /dev/null 2>&1
cp "$scratch/omniglot/metrics.jsonl" "$corpus/metrics_fuzzer/omniglot_rounds_and_eval"
build/reptile train --config configs/sine.textproto --run_dir "$scratch/sine_metrics" outer.rounds=4 eval.every_rounds=2 \
  eval.episodes=2 eval.final_episodes=2 runtime.local_workers=THREADS > /dev/null 2>&1
cp "$scratch/sine_metrics/metrics.jsonl" "$corpus/metrics_fuzzer/sine_rounds"
{
  sed -n 1p "$scratch/omniglot/metrics.jsonl" | sed 's/"round":2,/"round":2000,/'
  grep -m1 '"kind":"eval"' "$scratch/omniglot/metrics.jsonl"
  printf '%s' '{"kind":"round","round":30100,"rou'
} > "$corpus/metrics_fuzzer/gap_and_torn_line"

unzip -p ../shared/data/omniglot/images_background.zip \
  images_background/Alphabet_of_the_Magi/character01/0709_01.png > "$corpus/png_fuzzer/omniglot_0709_01.png"

python3 - "$corpus" << 'EOF'
import struct, sys, zlib

corpus = sys.argv[1]

def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

def png(width, height, depth, colour, rows, interlace=0, extra=b""):
    """rows: the filtered scanlines' bytes (filter byte 0 prepended here)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    data = b"".join(b"\0" + row for row in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra +
            chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))

def write(name, data):
    with open(f"{corpus}/{name}", "wb") as f:
        f.write(data)

# Grey 8-bit gradient; RGB 8-bit; grey+alpha; RGBA; 16-bit grey; 1-bit palette
# with transparency; an Adam7-interlaced grey image (7 passes of 8x8).
write("png_fuzzer/grey8_6x5.png", png(6, 5, 8, 0, [bytes((x * 40 + y * 9) % 256 for x in range(6)) for y in range(5)]))
write("png_fuzzer/rgb8_4x3.png", png(4, 3, 8, 2, [bytes((x * 60 + c * 80 + y) % 256 for x in range(4) for c in range(3)) for y in range(3)]))
write("png_fuzzer/greyalpha8_3x3.png", png(3, 3, 8, 4, [bytes(v for x in range(3) for v in (x * 100, 255 - y * 100)) for y in range(3)]))
write("png_fuzzer/rgba8_2x2.png", png(2, 2, 8, 6, [bytes([10, 20, 30, 255, 200, 100, 50, 128]), bytes([0, 0, 0, 0, 255, 255, 255, 255])]))
write("png_fuzzer/grey16_3x2.png", png(3, 2, 16, 0, [struct.pack(">3H", 0, 30000, 65535), struct.pack(">3H", 1, 2, 3)]))
palette = chunk(b"PLTE", bytes([0, 0, 0, 255, 255, 255])) + chunk(b"tRNS", bytes([128]))
write("png_fuzzer/palette1_8x2.png", png(8, 2, 1, 3, [bytes([0b10110010]), bytes([0b01001101])], extra=palette))
# Adam7: passes 1..7 of an 8x8 grey image, each pass's rows with their filter byte.
passes = [(1, 1), (1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (8, 4)]  # (width, height) of each pass
rows = [bytes((p * 31 + i) % 256 for i in range(w)) for p, (w, h) in enumerate(passes) for _ in range(h)]
write("png_fuzzer/interlaced_grey8_8x8.png", png(8, 8, 8, 0, rows, interlace=1))

# Chunk streams: 4 bytes (flags: 1 tensor 0, 2 moments; dtype; parameter
# count, little-endian), then TensorChunk messages each after its varint length.
def varint(n):
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])

def tensor_chunk(tensor, offset, data):
    body = b""
    if tensor:
        body += b"\x08" + varint(tensor)
    if offset:
        body += b"\x10" + varint(offset)
    body += b"\x1a" + varint(len(data)) + data
    return varint(len(body)) + body

def stream(flags, dtype, numel, pieces):
    """pieces: per tensor, the chunk sizes it is split into."""
    element = {0: 4, 1: 2, 2: 2}[dtype]
    sizes = ([numel * element] if flags & 1 else []) + ([numel * 4] * 2 if flags & 2 else [])
    out = bytes([flags, dtype]) + struct.pack("<H", numel)
    for t, size in enumerate(sizes):
        value = 0.5 + t
        if t > 0 or dtype == 0:
            data = struct.pack("<f", value) * numel
        elif dtype == 1:  # bf16: the high half of the fp32
            data = struct.pack("<f", value)[2:] * numel
        else:
            data = struct.pack("<e", value) * numel
        offset = 0
        for piece in pieces[t]:
            out += tensor_chunk(t, offset, data[offset:offset + piece])
            offset += piece
        assert offset == size
    return out

write("tensor_stream_fuzzer/state_fp32", stream(1, 0, 16, [[64]]))
write("tensor_stream_fuzzer/state_fp32_moments", stream(3, 0, 8, [[32], [16, 16], [8, 8, 16]]))
write("tensor_stream_fuzzer/delta_bf16", stream(1, 1, 12, [[10, 14]]))
write("tensor_stream_fuzzer/delta_fp16_moments", stream(3, 2, 6, [[12], [24], [4, 20]]))
write("tensor_stream_fuzzer/evaluation_no_tensors", stream(0, 0, 100, []))

# Chart panels: a flag byte, the fixed bounds it names, then (x, y, low, high)
# points as little-endian doubles.
def panel(flags, bounds, points):
    return bytes([flags]) + b"".join(struct.pack("<d", b) for b in bounds) + \
        b"".join(struct.pack("<4d", *p) for p in points)

nan = float("nan")
write("chart_fuzzer/accuracy_with_band", panel(2 | 4 | 8, [0, 100, 0], [(r * 100, 20 + r, 18 + r, 22 + r) for r in range(30)]))
write("chart_fuzzer/workers_integer", panel(1 | 2 | 8, [0, 0], [(r, 2 + (r % 3), nan, nan) for r in range(12)]))
write("chart_fuzzer/evaluations_with_bars", panel(16, [], [(r * 1000, 0.5 + r / 50, 0.45 + r / 50, 0.55 + r / 50) for r in range(8)]))
write("chart_fuzzer/categories", panel(32 | 16, [], [(i, 0.3 * i, nan, nan) for i in range(3)]))
EOF
du -sh "$corpus"
