#!/usr/bin/env bash
# The engine on an NVIDIA GPU in one short run: parity with the CPU on the committed fixtures, then
# `musicgen bench` at f32, f16 and bf16 on musicgen-small's shapes beside transformers (torch CUDA, sdpa)
# on the same GPU. Not part of CI.
#
#   bench/gpu_check.sh prepare   # on a development machine (no GPU needed): build and pack the binaries
#   bench/gpu_check.sh [run]     # on the GPU machine, with target/gpu-check copied there
#
# prepare  bench/cuda_build.sh (CUDA 13.0 from PyPI; see there) with FEATURES=cuda,bench, then the
#          cuda_parity test binary; both stripped and xz-compressed into target/gpu-check (~PACK_MB below),
#          small enough to travel with the working tree to a GPU machine that has no Rust toolchain and
#          no network. The machine needs NVIDIA's driver (CUDA 13.0 or newer: driver 580+) and the CUDA
#          13 runtime libraries (libcudart.so.13, libcublas(Lt).so.13, libcurand.so.10, libnvrtc.so.13:
#          a CUDA 13 toolkit, or the nvidia-* wheels PyTorch cu130 installs, which are searched for).
# run      1. the binaries: target/gpu-check's, else a local build when cargo is there
#          2. parity: `cuda_parity` (musicgen/tests/cuda_parity.rs), GPU f32 against CPU f32 on every
#             fixture: codes equal, or where they differ teacher-forced logits within 1e-3 of peak,
#             counted; on the engine's device and on one explicit CUDA stream
#          3. bench-models/musicgen-small-random with bench/make_full_size.py (random weights, built there)
#          4. `musicgen bench --device cuda` at each of PRECISIONS, then bench/reference_bench.py
#             --device cuda --attn sdpa at each of REF_PRECISIONS, as long as the time budget lasts
#          5. a table, and a summary at the end of the output
#          Files (in $OUT when set, else target/gpu-check-out): gpu_check.log, parity.txt, results.jsonl,
#          table.md.
#
# Environment (run): PYTHON (python3, with torch + transformers), MODEL (bench-models/musicgen-small-random),
# DURATION (10 s of audio), PRECISIONS ("f32 f16 bf16"), REF_PRECISIONS ("f32 f16 bf16"), BUDGET_S (420:
# past it the remaining benchmarks are skipped), SKIP_PARITY=1, SKIP_BENCH=1, SKIP_REFERENCE=1.
# Environment (prepare): as bench/cuda_build.sh (CUDA_COMPUTE_CAP 90 = H100/H200).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
pack=$repo/target/gpu-check
mode=${1:-run}

# The executable of `cargo test --no-run` for one test target, from cargo's JSON messages.
test_executable() {
    python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        exe = m["executable"]
print(exe or "")' "$1"
}

prepare() {
    local t0=$SECONDS
    FEATURES=cuda,bench bench/cuda_build.sh --no-bundle
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/cuda}
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
    if [[ -z ${CUDA_HOME:-} ]]; then
        export CUDA_HOME=$repo/target/cuda-toolkit/cuda
    fi
    export PATH=$CUDA_HOME/bin:$PATH
    echo "== cargo test --release -p musicgen --features cuda,bench --test cuda_parity --no-run" >&2
    local parity
    parity=$(nice cargo test --release --locked -p musicgen --features cuda,bench --test cuda_parity --no-run \
        --message-format json-render-diagnostics | test_executable cuda_parity)
    [[ -x $parity ]] || { echo "error: no cuda_parity test executable" >&2; exit 1; }
    rm -rf "$pack"
    mkdir -p "$pack"
    local name src
    for name in musicgen cuda_parity; do
        src=$CARGO_TARGET_DIR/release/musicgen
        [[ $name == cuda_parity ]] && src=$parity
        strip -o "$pack/$name" "$src"
        xz -T0 -6 "$pack/$name"
    done
    {
        echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
        echo "built $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m), $(ldd --version | head -n 1)"
        echo "nvcc $(nvcc --version | sed -n 's/^Cuda compilation tools, //p')"
        echo "compute capability $CUDA_COMPUTE_CAP"
    } > "$pack/BUILD"
    local kb
    kb=$(du -sk "$pack" | cut -f1)
    echo "packed into $pack: $((kb / 1024)) MiB ($(cd "$pack" && echo *))" >&2
    if ((kb > 48 * 1024)); then
        echo "warning: over 48 MiB; with the working tree it may not fit a 64 MiB transfer" >&2
    fi
    echo "prepare took $((SECONDS - t0)) s; on the GPU machine: bash bench/gpu_check.sh (carry target/gpu-check)" >&2
}

# Directories holding the CUDA 13 runtime libraries the binaries link, for LD_LIBRARY_PATH.
cuda_library_path() {
    local -a dirs=() want=(libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10
        libnvrtc.so.13)
    local -a candidates=()
    [[ -n ${CUDA_HOME:-} ]] && candidates+=("$CUDA_HOME/lib64" "$CUDA_HOME/lib")
    candidates+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64
        /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64)
    local d
    # the nvidia-* wheels PyTorch brings: site-packages/nvidia/cu13/lib, nvidia/<name>/lib
    while IFS= read -r d; do
        candidates+=("$d"/cu13/lib "$d"/*/lib)
    done < <("$PYTHON" -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null || true)
    local lib found
    for lib in "${want[@]}"; do
        found=
        for d in "${candidates[@]}"; do
            if [[ -e $d/$lib ]]; then
                found=$d
                break
            fi
        done
        if [[ -z $found ]]; then
            found=$(ldconfig -p 2>/dev/null | awk -v s="$lib" '$1 == s {print $NF; exit}')
            [[ -n $found ]] && found=$(dirname "$found")
        fi
        if [[ -z $found ]]; then
            found=$(find /usr /opt /root -name "$lib" -print -quit 2>/dev/null || true)
            [[ -n $found ]] && found=$(dirname "$found")
        fi
        if [[ -n $found ]]; then
            [[ " ${dirs[*]} " == *" $found "* ]] || dirs+=("$found")
        else
            echo "warning: $lib not found" >&2
        fi
    done
    (IFS=:; echo "${dirs[*]}")
}

run() {
    local t0=$SECONDS
    PYTHON=${PYTHON:-python3}
    MODEL=${MODEL:-bench-models/musicgen-small-random}
    DURATION=${DURATION:-10}
    PRECISIONS=${PRECISIONS:-f32 f16 bf16}
    REF_PRECISIONS=${REF_PRECISIONS:-f32 f16 bf16}
    BUDGET_S=${BUDGET_S:-420}
    local out=${OUT:-$repo/target/gpu-check-out}
    mkdir -p "$out"
    local log=$out/gpu_check.log results=$out/results.jsonl
    : > "$results"
    exec > >(tee "$log") 2>&1
    export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
    local -a summary=() failed=()
    note() {
        summary+=("$*")
        echo "-- $*"
    }

    echo "== machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv || true
    local cap
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .') || cap=
    echo "$(nproc) CPUs, $(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM;" \
        "$("$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1 | tail -n 1)"

    echo "== binaries"
    local bin=/tmp/promptloop-gpu-check
    local engine parity
    if [[ ! -f $pack/musicgen.xz || ! -f $pack/cuda_parity.xz ]] && command -v cargo >/dev/null; then
        echo "no $pack; building here"
        if [[ -z ${CUDA_HOME:-} && -x /usr/local/cuda/bin/nvcc ]]; then
            export CUDA_HOME=/usr/local/cuda
        fi
        [[ -n $cap ]] && export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$cap}
        prepare
    fi
    if [[ -f $pack/musicgen.xz && -f $pack/cuda_parity.xz ]]; then
        rm -rf "$bin"
        mkdir -p "$bin"
        for f in musicgen cuda_parity; do
            "$PYTHON" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$pack/$f.xz" "$bin/$f"
            chmod +x "$bin/$f"
        done
        engine=$bin/musicgen
        parity=$bin/cuda_parity
        sed 's/^/  /' "$pack/BUILD"
        local built_cap
        built_cap=$(sed -n 's/^compute capability //p' "$pack/BUILD")
        if [[ -n $cap && -n $built_cap && $cap != "$built_cap" ]]; then
            echo "warning: built for compute capability $built_cap, this GPU is $cap: its kernels may not load"
        fi
    else
        echo "error: no $pack/{musicgen,cuda_parity}.xz and no cargo: run 'bench/gpu_check.sh prepare' on a" \
            "development machine and bring target/gpu-check along"
        exit 1
    fi
    local libpath
    libpath=$(cuda_library_path)
    export LD_LIBRARY_PATH=$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    if ldd "$engine" "$parity" | grep 'not found'; then
        echo "error: unresolved libraries (above)"
        exit 1
    fi
    ldd "$engine" | grep -E 'libcu|libnvrtc' | sed 's/^[[:space:]]*/  /'
    note "binaries ready at $((SECONDS - t0)) s"

    # 1. parity
    if [[ ${SKIP_PARITY:-0} != 1 ]]; then
        echo "== parity: cuda_parity (GPU f32 against CPU f32 on the fixtures)"
        local p0=$SECONDS
        if PROMPTLOOP_FIXTURES=$repo/tests/fixtures "$parity" --nocapture --test-threads=1 2>&1 \
            | tee "$out/parity.txt"; then
            note "parity passed in $((SECONDS - p0)) s"
        else
            failed+=(parity)
            note "parity FAILED in $((SECONDS - p0)) s"
        fi
        while IFS= read -r line; do note "$line"; done < <(grep '^cuda f32 vs cpu f32' "$out/parity.txt" || true)
    fi

    if [[ ${SKIP_BENCH:-0} == 1 ]]; then
        SKIP_REFERENCE=1
        PRECISIONS=
    fi

    # 2. the random-weight musicgen-small checkpoint, built on this machine
    if [[ -n $PRECISIONS || ${SKIP_REFERENCE:-0} != 1 ]]; then
        echo "== model: $MODEL"
        local m0=$SECONDS
        if "$PYTHON" bench/make_full_size.py --out "$MODEL" 2>&1 | tail -n 12; then
            note "model ready in $((SECONDS - m0)) s"
        else
            failed+=(model)
            note "model FAILED; no benchmarks"
            PRECISIONS=
            SKIP_REFERENCE=1
        fi
    fi

    # 3. the benchmarks, most wanted first, while the budget lasts
    local -a runs=()
    local p
    for p in $PRECISIONS; do runs+=("engine $p"); done
    if [[ ${SKIP_REFERENCE:-0} != 1 ]]; then
        for p in $REF_PRECISIONS; do runs+=("transformers $p"); done
    fi
    local tmp=$out/.last
    local r impl b0
    for r in "${runs[@]}"; do
        impl=${r% *}
        p=${r#* }
        if ((SECONDS - t0 > BUDGET_S)); then
            note "$r skipped: past the ${BUDGET_S} s budget"
            continue
        fi
        echo "== $r"
        b0=$SECONDS
        local -a cmd
        if [[ $impl == engine ]]; then
            cmd=("$engine" bench --device cuda --model "$MODEL" --duration "$DURATION" --precision "$p" --json)
        else
            cmd=("$PYTHON" bench/reference_bench.py --device cuda --attn sdpa --dtype "$p" --model "$MODEL"
                --duration "$DURATION" --json)
        fi
        if "${cmd[@]}" > "$tmp" && tail -n 1 "$tmp" | "$PYTHON" -c 'import json, sys; json.loads(sys.stdin.read())'; then
            tail -n 1 "$tmp" >> "$results"
            note "$r: $(tail -n 1 "$tmp" | "$PYTHON" -c 'import json, sys
r = json.loads(sys.stdin.read())
step, total, load = r["step_ms_median"], r["total_s"], r["load_s"]
print(f"{step:.2f} ms/step median, total {total:.2f} s, load {load:.1f} s")') ($((SECONDS - b0)) s)"
        else
            failed+=("$r")
            note "$r FAILED ($((SECONDS - b0)) s)"
        fi
    done
    rm -f "$tmp"

    # 4. the table; the GPU's copy bandwidth gives each engine row a floor
    if [[ -s $results ]]; then
        echo "== table"
        "$PYTHON" - "$results" > "$out/table.md" <<'PY' || failed+=(table)
import json, sys
import torch

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# Device-to-device copy: bytes read + written per second, best of five (1 GiB each way).
x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
y = torch.empty_like(x)
best = 0.0
for _ in range(6):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    y.copy_(x)
    b.record()
    torch.cuda.synchronize()
    best = max(best, 2 * x.numel() / (a.elapsed_time(b) / 1e3))
bw = best
gpu = torch.cuda.get_device_name()

ref = {r["precision"]: r for r in rows if r.get("impl") == "transformers"}
def num(r, k):
    v = r.get(k)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
def fmt(v, d):
    return "–" if v is None else f"{v:.{d}f}"
head = ["impl", "precision", "load s", "T5 ms", "ms/step (median)", "EnCodec s", "total s", "RTF",
        "floor ms/step", "÷ floor", "speed-up vs transformers (same precision)", "vs transformers f32"]
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
for r in rows:
    step = num(r, "step_ms_median")
    floor = num(r, "step_bytes") / bw * 1e3 if num(r, "step_bytes") else None
    same = num(ref.get(r.get("precision"), {}), "step_ms_median")
    f32 = num(ref.get("f32", {}), "step_ms_median")
    sp = lambda base: "–" if not (base and step) or r.get("impl") == "transformers" else f"{base / step:.2f}×"
    print("| " + " | ".join([r.get("impl", "?"), r.get("precision", "?"), fmt(num(r, "load_s"), 2),
                             fmt(num(r, "t5_ms"), 1), fmt(step, 2), fmt(num(r, "encodec_s"), 2),
                             fmt(num(r, "total_s"), 2), fmt(num(r, "rtf"), 3), fmt(floor, 3),
                             fmt(step / floor if step and floor else None, 1), sp(same), sp(f32)]) + " |")
first = rows[0]
print()
print(f"{first.get('frames')} frames ({first.get('audio_s')} s audio) per run, guidance 3, top-k 250; {gpu}; "
      f"device-to-device copy {bw / 1e9:.0f} GB/s (read + written); floor = the engine's bytes read per step "
      f"(weights in its precision + KV cache) at that rate. transformers: torch CUDA, sdpa attention.")
PY
        cat "$out/table.md"
    fi

    echo
    echo "== summary ($((SECONDS - t0)) s)"
    printf '  %s\n' "${summary[@]}"
    echo "  files: $out/{gpu_check.log,parity.txt,results.jsonl,table.md}"
    if ((${#failed[@]})); then
        echo "FAILED: ${failed[*]}"
        exit 1
    fi
    echo "gpu check passed"
}

case $mode in
    prepare) prepare ;;
    run) run ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *)
        echo "usage: $0 [prepare|run]" >&2
        exit 2
        ;;
esac
