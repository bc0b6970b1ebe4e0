#!/usr/bin/env bash
# Build the engine and the plugin with the `cuda` feature on a machine with no GPU and no CUDA install:
# the CUDA compiler, headers and libraries come from NVIDIA's PyPI packages, installed into
# target/cuda-toolkit. Not part of CI: a cold run takes about 25 minutes on the 2-core development
# machine (timings at the end of this comment); run it when the CUDA build may have changed.
#
#   bench/cuda_build.sh [--toolkit-only] [--no-bundle]
#
# 1. toolkit   pip installs CUDA 13.0's nvcc, headers, cudart, cuBLAS, cuRAND and NVRTC (the versions the
#              cuda-toolkit==13.0.2 meta-package pins) into target/cuda-toolkit/site, and lays them out
#              as a CUDA root in target/cuda-toolkit/cuda (bin, include, nvvm, lib64 with the unversioned
#              .so names the linker wants, lib64/stubs/libcuda.so). Skipped when already there.
# 2. musicgen  cargo build --release -p musicgen --features cuda  (FEATURES=cuda,bench adds `musicgen bench`)
# 3. bundle    cargo xtask bundle promptloop --release --features cuda  (CLAP + VST3 in target/cuda/bundled)
# 4. smoke     the CLI starts against the stub driver and says there is no CUDA device.
#
# Why these choices:
# - CUDA 13.0: the GPU machines this project measures on run driver 580 (CUDA 13.0). candle's kernels
#   are PTX that the driver compiles at load, and a driver refuses PTX from a newer toolkit than itself;
#   the binaries also link libcublas.so.13 / libcudart.so.13, which such a machine has. cudarc 0.19
#   (candle 0.11's) reads the version from `nvcc --version` and knows 11.4 to 13.4.
# - candle turns on cudarc's `dynamic-linking`, so the linker needs a libcuda.so. NVIDIA's PyPI packages
#   ship none (the driver provides the real one), so a stub is generated from cuda.h: every driver entry
#   point, each returning CUDA_ERROR_NO_DEVICE, with the real library's soname libcuda.so.1.
# - CUDA_COMPUTE_CAP (default 90: H100/H200) picks the architecture the kernels are built for; with no
#   GPU here nothing can detect it. 90 builds sm_90a code, which only Hopper runs; 80 builds sm_80 PTX
#   that newer GPUs compile at load (slower first start, no Hopper-only instructions).
# - CARGO_TARGET_DIR defaults to target/cuda, so this neither fights over nor invalidates target/'s
#   CPU builds.
#
# Environment: CUDA_COMPUTE_CAP (90), CARGO_TARGET_DIR (target/cuda), FEATURES (cuda: the engine's cargo
# features; the bundle always gets the plugin's `cuda`), PYTHON (python3, for pip),
# CUDA_TOOLKIT_DIR (target/cuda-toolkit), CUDA_HOME (use this existing CUDA root instead of PyPI's,
# e.g. /usr/local/cuda on a GPU machine), CARGO_BUILD_JOBS as usual.
#
# Wall-clock times on the 2-core development machine, cold (empty target/cuda), each step printing its own:
# toolkit 12 s (~1.2 GB of wheels); musicgen 11 min, of which nvcc is about 6 (candle-kernels' PTX and its
# always-built quantized/MoE library, for one architecture); bundle 12 min (the plugin's dependency graph
# rebuilds candle with other features; its kernels are reused); smoke under a second. Warm, with nothing
# changed: seconds.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

toolkit_only=0
bundle=1
for arg in "$@"; do
    case $arg in
        --toolkit-only) toolkit_only=1 ;;
        --no-bundle) bundle=0 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (--toolkit-only, --no-bundle)" >&2
            exit 2
            ;;
    esac
done

PYTHON=${PYTHON:-python3}
FEATURES=${FEATURES:-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/cuda}
tk=${CUDA_TOOLKIT_DIR:-$repo/target/cuda-toolkit}
case $tk in /*) ;; *) tk=$repo/$tk ;; esac

# The cuda-toolkit==13.0.2 meta-package's pins, for the parts candle links or compiles with.
WHEELS=(
    nvidia-cuda-nvcc==13.0.88    # nvcc, ptxas, fatbinary, nvlink
    nvidia-cuda-crt==13.0.88     # nvcc's crt/ headers
    nvidia-nvvm==13.0.88         # cicc, libdevice
    nvidia-cuda-cccl==13.0.85    # thrust / cub / libcu++ headers
    nvidia-cuda-runtime==13.0.96 # cuda.h, cuda_runtime.h, libcudart.so.13
    nvidia-cuda-nvrtc==13.0.88   # libnvrtc.so.13
    nvidia-cublas==13.1.0.3      # libcublas.so.13, libcublasLt.so.13
    nvidia-curand==10.4.0.35     # libcurand.so.10
)

step_start=0
step() {
    step_start=$(date +%s)
    echo "== $*" >&2
}
step_done() {
    echo "== $1: $(($(date +%s) - step_start)) s" >&2
    timings+=("$1 $(($(date +%s) - step_start)) s")
}
timings=()

# The CUDA root from the PyPI wheels: target/cuda-toolkit/cuda.
install_toolkit() {
    local site=$tk/site root=$tk/cuda stamp want
    want=$(printf '%s\n' "${WHEELS[@]%%#*}" | tr -d ' ')
    stamp=$tk/.installed
    if [[ -f $stamp && "$(cat "$stamp")" == "$want" && -x $root/bin/nvcc && -e $root/lib64/stubs/libcuda.so ]]; then
        echo "toolkit already in $root" >&2
        return
    fi
    rm -rf "$site" "$root" "$stamp"
    mkdir -p "$site"
    # shellcheck disable=SC2046
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
        --target "$site" $(printf '%s\n' "$want")
    local cu=$site/nvidia/cu13
    [[ -x $cu/bin/nvcc && -f $cu/include/cuda.h ]] || {
        echo "error: the wheels did not give $cu/bin/nvcc and include/cuda.h" >&2
        exit 1
    }
    mkdir -p "$root/lib64/stubs"
    ln -s ../site/nvidia/cu13/bin "$root/bin"
    ln -s ../site/nvidia/cu13/include "$root/include"
    ln -s ../site/nvidia/cu13/nvvm "$root/nvvm"
    # The linker wants libfoo.so; the wheels ship only the runtime sonames (libfoo.so.13).
    local lib name
    for lib in "$cu"/lib/*.so.*; do
        name=$(basename "$lib")
        ln -s "../../site/nvidia/cu13/lib/$name" "$root/lib64/$name"
        ln -sfn "$name" "$root/lib64/${name%%.so.*}.so"
    done
    for lib in "$cu"/lib/*.a; do
        ln -s "../../site/nvidia/cu13/lib/$(basename "$lib")" "$root/lib64/$(basename "$lib")"
    done
    # Stub driver: every cu* entry point cuda.h declares (after its _v2 renames), returning 100,
    # CUDA_ERROR_NO_DEVICE. Link-time only; the real libcuda.so.1 comes with the GPU's driver.
    local src=$tk/libcuda_stub.c
    {
        echo "/* Generated by bench/cuda_build.sh from cuda.h: a link-time stand-in for the driver. */"
        cc -E -P -I"$root/include" "$root/include/cuda.h" \
            | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' \t(' | sort -u \
            | sed 's/.*/int &(void) { return 100; }/'
    } > "$src"
    cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$root/lib64/stubs/libcuda.so" "$src"
    ln -s libcuda.so "$root/lib64/stubs/libcuda.so.1"
    printf '%s\n' "$want" > "$stamp"
}

if [[ -n ${CUDA_HOME:-} ]]; then
    [[ -x $CUDA_HOME/bin/nvcc ]] || { echo "error: CUDA_HOME=$CUDA_HOME has no bin/nvcc" >&2; exit 1; }
    echo "using the CUDA root CUDA_HOME=$CUDA_HOME" >&2
else
    step "toolkit: ${WHEELS[*]%%#*} -> $tk"
    install_toolkit
    step_done toolkit
    export CUDA_HOME=$tk/cuda
fi
export PATH=$CUDA_HOME/bin:$PATH
echo "nvcc: $(nvcc --version | sed -n 's/^Cuda compilation tools, //p'); compute capability $CUDA_COMPUTE_CAP;" \
    "target dir $CARGO_TARGET_DIR" >&2
if ((toolkit_only)); then
    exit 0
fi

step "cargo build --release --locked -p musicgen --features $FEATURES"
nice cargo build --release --locked -p musicgen --features "$FEATURES"
step_done "musicgen ($FEATURES)"

if ((bundle)); then
    step "cargo xtask bundle promptloop --release --features cuda"
    nice cargo xtask bundle promptloop --release --features cuda
    step_done "bundle (cuda)"
    ls -d "$CARGO_TARGET_DIR"/bundled/* >&2
fi

# Smoke test: the binary loads (every CUDA library resolves) and, against the stub driver, reports that
# there is no CUDA device rather than crashing. On a GPU machine the real driver answers instead.
step "smoke test"
exe=$CARGO_TARGET_DIR/release/musicgen
libs=$CUDA_HOME/lib64
[[ -e $libs/stubs/libcuda.so.1 ]] && libs=$libs:$libs/stubs
if LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ldd "$exe" | grep 'not found'; then
    echo "error: $exe has unresolved libraries" >&2
    exit 1
fi
LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$exe" --version >&2
if ! command -v nvidia-smi >/dev/null; then
    out=$(RUST_BACKTRACE=0 LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$exe" generate --device cuda \
        --model "$repo/tests/fixtures/models/tiny-a" --prompt smoke --duration 0.1 --out "$CARGO_TARGET_DIR/smoke.wav" 2>&1) \
        && { echo "error: a CUDA generation succeeded against the stub driver?" >&2; exit 1; }
    grep -m 1 '^error' <<<"$out" >&2 || true
    grep -q 'CUDA_ERROR_NO_DEVICE' <<<"$out" || { echo "error: expected CUDA_ERROR_NO_DEVICE: $out" >&2; exit 1; }
fi
step_done smoke

echo >&2
echo "built with CUDA $(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p') for compute capability" \
    "$CUDA_COMPUTE_CAP:" >&2
printf '  %s\n' "${timings[@]}" >&2
echo "  $exe" >&2
