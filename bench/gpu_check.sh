#!/usr/bin/env bash
# The first-GPU checklist in one command, from the repository root of a machine with an NVIDIA
# GPU and CuPy:
#
#   bash bench/gpu_check.sh [OUT] [--quick]
#
# It runs, each into its own file under OUT (default bench/results/gpu-<GPU name>):
#   nvidia-smi.txt, info.txt       the driver, the GPU, the library versions
#   gpu-tests.txt                  pytest -m gpu: every test that needs the GPU
#   gpu-checks.txt, checks.*       bench/gpu_checks.py: fused kernels in chunks, arrays over
#                                  2 GiB, the pool-limit out-of-memory message, divergence, a
#                                  missing cuda:N, the TF32 switch, CUDA-event timing
#   info-check.txt                 mnist-xp info --check: every backend against NumPy
#   bench.{txt,json,md,png}        mnist-xp bench on every backend, the GPU's and the CPU's
#   accuracy.{txt,json,md}         time to 97%/98% for `best`, when MNIST_XP_DATA_DIR is set
#   all-tests.txt                  the whole suite (skipped with --quick)
#   record.{txt,json,md}           time to 98%/99%/99.4% for `record` on the GPU, when
#                                  MNIST_XP_DATA_DIR is set (last: minutes)
# and says which steps failed. The project and array-api-compat may come as wheels on
# PYTHONPATH (see ../shared/gpu/README.md); everything runs as python3 -m ...
set -u
cd "$(dirname "$0")/.."

quick=0
out=""
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        *) out=$arg ;;
    esac
done
if [ -z "$out" ]; then
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    out="bench/results/gpu-$(echo "${gpu:-unknown}" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')"
fi
mkdir -p "$out"
failed=()

step() {  # step NAME COMMAND...: run it into $out/NAME.txt, show its tail, remember a failure
    local name=$1
    shift
    echo "== $name: $*"
    "$@" > "$out/$name.txt" 2>&1
    local status=$?
    tail -n 4 "$out/$name.txt" | sed 's/^/   /'
    if [ "$status" -ne 0 ]; then
        echo "   (exit $status)"
        failed+=("$name")
    fi
}

step nvidia-smi nvidia-smi
step info python3 -m mnist_xp info
step gpu-tests python3 -m pytest -m gpu -rA -p no:cacheprovider tests
step gpu-checks python3 bench/gpu_checks.py --out "$out"
step info-check python3 -m mnist_xp info --check
step bench python3 -m mnist_xp bench --device all --backend all --no-accuracy \
    --json "$out/bench.json" --markdown "$out/bench.md" --plot "$out/bench.png"
if [ -n "${MNIST_XP_DATA_DIR:-}" ]; then
    step accuracy python3 -m mnist_xp bench --device all --hidden 128 --repeats 5 \
        --json "$out/accuracy.json" --markdown "$out/accuracy.md"
fi
if [ "$quick" -eq 0 ]; then
    step all-tests python3 -m pytest -q -rs -p no:cacheprovider tests
fi
if [ -n "${MNIST_XP_DATA_DIR:-}" ]; then  # last: the longest, and nothing waits on it
    step record python3 -m mnist_xp bench --device cuda --hidden 128 --repeats 5 \
        --no-torch --accuracy-preset record --json "$out/record.json" --markdown "$out/record.md"
fi

echo "results in $out"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all steps passed"
