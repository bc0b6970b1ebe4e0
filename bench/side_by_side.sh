#!/usr/bin/env bash
# Side-by-side CPU benchmark: transformers (float32) vs the promptloop engine at each precision, on a
# random-weight checkpoint with facebook/musicgen-small's exact shapes.
#
#   bench/side_by_side.sh [DURATION]              # default 10 (seconds of audio)
#   bench/side_by_side.sh --table FILE.jsonl      # only print the table for saved JSON lines
#
# Environment: PYTHON (default python3; needs torch, transformers, tokenizers, safetensors, e.g.
# PYTHON=/work/pyref/bin/python), MODEL (default bench-models/musicgen-small-random),
# PRECISIONS (default "f32 q8_0 q4k"), ENGINE (default target/release/musicgen), PROMPT (default
# "dusty boom-bap drums, 90 bpm"; guidance 3, top-k 250 and seed 0 are both programs' defaults),
# SKIP_REFERENCE=1 / SKIP_BUILD=1 to leave those steps out.
#
# Raw JSON lines go to bench-results/<timestamp>.jsonl and the table to bench-results/<timestamp>.md.
# A failing run (reference or one precision) is reported and left out of the table; the script then
# exits non-zero after printing the rest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
MODEL=${MODEL:-bench-models/musicgen-small-random}
PRECISIONS=${PRECISIONS:-f32 q8_0 q4k}
ENGINE=${ENGINE:-target/release/musicgen}
PROMPT=${PROMPT:-dusty boom-bap drums, 90 bpm}  # passed to both, so both encode the same tokens

machine_info() {
    local cpu mem
    cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1 || true)
    mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null || true)
    export BENCH_CPU="${cpu:-unknown CPU}" BENCH_NPROC="$(nproc)" BENCH_MEM="${mem:-unknown}"
    export BENCH_DATE="${BENCH_DATE:-$(date '+%Y-%m-%d %H:%M:%S %Z')}"
}

# print_table FILE.jsonl: one markdown table (rows: transformers f32, then each engine precision) + machine/date.
print_table() {
    "$PYTHON" - "$1" <<'PY'
import json, os, sys

rows = []
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if line:
            rows.append(json.loads(line))

def num(r, key):
    v = r.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

def fmt(v, digits):
    return "–" if v is None else f"{v:.{digits}f}"

ref = next((r for r in rows if r.get("impl") == "transformers"), None)
ref_step = num(ref, "step_ms_median") if ref else None
# transformers does not report a bandwidth floor; the f32 engine's floor (same f32 weights) stands in for it
f32_floor = next((num(r, "floor_ms") for r in rows if r.get("impl") != "transformers"
                  and r.get("precision") == "f32" and num(r, "floor_ms")), None)
rows.sort(key=lambda r: r.get("impl") != "transformers")  # reference first, engine rows in run order

head = ["impl", "precision", "load s", "T5 ms", "ms/step (median)", "EnCodec s", "total s", "RTF",
        "peak RSS MB", "floor ms/step", "ms/step ÷ floor", "speed-up/step vs transformers"]
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
borrowed = False
for r in rows:
    step = num(r, "step_ms_median")
    floor = num(r, "floor_ms")
    mark = ""
    if floor is None and r.get("impl") == "transformers" and f32_floor:
        floor, mark, borrowed = f32_floor, "*", True
    ratio = step / floor if step and floor else None
    speedup = ref_step / step if ref_step and step else None
    cells = [str(r.get("impl", "?")), str(r.get("precision", "?")),
             fmt(num(r, "load_s"), 2), fmt(num(r, "t5_ms"), 1), fmt(step, 1), fmt(num(r, "encodec_s"), 2),
             fmt(num(r, "total_s"), 2), fmt(num(r, "rtf"), 3), fmt(num(r, "peak_rss_mb"), 0),
             fmt(floor, 1) + mark, fmt(ratio, 2) + mark, "–" if speedup is None else f"{speedup:.2f}×"]
    print("| " + " | ".join(cells) + " |")

print()
first = rows[0] if rows else {}
frames, audio_s, threads = first.get("frames"), first.get("audio_s"), sorted({r.get("threads") for r in rows}, key=str)
print(f"{frames} frames ({audio_s} s audio) per run; threads {', '.join(map(str, threads))}; "
      "RTF = total compute s / audio s; speed-up = transformers median ms/step ÷ row median ms/step.")
for r in rows:
    if r.get("impl") != "transformers" and num(r, "bandwidth_gbs"):
        print(f"- {r.get('precision')}: {num(r, 'step_bytes') / 1e6:.0f} MB/step at {num(r, 'bandwidth_gbs'):.1f} GB/s "
              f"-> floor {num(r, 'floor_ms'):.1f} ms/step")
if borrowed:
    print("- * transformers row: floor of the engine's f32 row (same f32 weights).")
print(f"- machine: {os.environ.get('BENCH_CPU', '?')}, {os.environ.get('BENCH_NPROC', '?')} CPUs, "
      f"{os.environ.get('BENCH_MEM', '?')} RAM")
if ref:
    cpu = os.environ.get("BENCH_CPU", "")
    blas = str(ref.get("blas", "?"))
    note = ""
    if "mkl" in blas.lower() and "AMD" in cpu.upper():
        note = " (MKL on an AMD CPU takes its slower generic paths: part of the gap is the reference's BLAS)"
    print(f"- reference: torch {ref.get('torch', '?')}, BLAS {blas}, CPU capability "
          f"{ref.get('cpu_capability', '?')}, on {cpu or '?'}{note}")
print(f"- date: {os.environ.get('BENCH_DATE', '?')}")
PY
}

# json_last_line FILE: the last non-empty line of FILE if it is a JSON object, else fail
json_last_line() {
    "$PYTHON" - "$1" <<'PY'
import json, sys
lines = [l.strip() for l in open(sys.argv[1]) if l.strip()]
if not lines:
    sys.exit("no output")
obj = json.loads(lines[-1])
if not isinstance(obj, dict):
    sys.exit("last line is not a JSON object")
print(json.dumps(obj))
PY
}

if [[ "${1:-}" == "--table" ]]; then
    [[ $# -eq 2 ]] || { echo "usage: $0 --table FILE.jsonl" >&2; exit 2; }
    machine_info
    print_table "$2"
    exit 0
fi

DURATION=${1:-10}
machine_info
stamp=$(date '+%Y-%m-%d_%H%M%S')
mkdir -p bench-results
[[ -e bench-results/.gitignore ]] || printf '*\n' > bench-results/.gitignore  # keep results out of git
results="bench-results/$stamp.jsonl"
: > "$results"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
failed=()

# (a) the random-weight musicgen-small checkpoint
if ! [[ -f $MODEL/config.json && -f $MODEL/generation_config.json && -f $MODEL/model.safetensors \
        && -f $MODEL/tokenizer.json ]]; then
    echo "== building $MODEL" >&2
    "$PYTHON" bench/make_full_size.py --out "$MODEL"
fi

# (b) the engine
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "== cargo build --release -p musicgen --features bench" >&2
    cargo build --release -p musicgen --features bench
fi

# run_one LABEL CMD...: run CMD with its stdout shown on stderr, append its last stdout line (JSON) to $results
run_one() {
    local label=$1
    shift
    echo "== $label: $*" >&2
    if "$@" | tee "$tmp" >&2 && json_last_line "$tmp" >> "$results"; then
        return 0
    fi
    echo "!! $label failed; left out of the table" >&2
    failed+=("$label")
}

# (c) transformers reference
if [[ "${SKIP_REFERENCE:-0}" != 1 ]]; then
    run_one "transformers f32" "$PYTHON" bench/reference_bench.py --model "$MODEL" --duration "$DURATION" --prompt "$PROMPT" --json
fi

# (d) the engine at each precision
for p in $PRECISIONS; do
    run_one "promptloop $p" "$ENGINE" bench --model "$MODEL" --duration "$DURATION" --precision "$p" --prompt "$PROMPT" --json
done

# (e) the table
echo >&2
print_table "$results" | tee "bench-results/$stamp.md"
echo >&2
echo "raw JSON lines: $results; table: bench-results/$stamp.md" >&2
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
