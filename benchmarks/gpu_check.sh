#!/usr/bin/env bash
# The GPU check of issue 3, as one script: the test suite on the cupy backend, then the U-Net
# benchmark on cupy against the PyTorch twin on CUDA (same net, same weights), logs and JSON to OUTDIR.
#
# For a machine with an NVIDIA GPU where CuPy and PyTorch are already installed; needs no network.
# About 8 minutes on one H100: the tests are cut at TEST_TIMEOUT (330 s), the benchmark at 120 s.
#
# Usage: benchmarks/gpu_check.sh OUTDIR
#   HYPOTHESIS_PROFILE   hypothesis profile of the test run (default "dev": 10 examples per property;
#                        "ci", 40 examples, is CI's and may not fit in 8 minutes)
#   TEST_TIMEOUT         seconds for the test run (default 330)
#
# OUTDIR receives: env.txt (GPU, versions, missing modules), tests_cupy.log and tests_cupy.xml
# (pytest -m gpu: the cupy case of every backend-parametrised test), bench_cupy.log and
# bench_cupy.json (benchmarks/bench_unet.py --backend cupy), status.txt (exit codes). The script's exit
# status is nonzero when the tests or the benchmark failed.
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's refdiff, installed or not
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-dev}
TEST_TIMEOUT=${TEST_TIMEOUT:-330}
PY=${PYTHON:-python}

echo "== environment" | tee "$OUT/env.txt"
{
    date -u
    nvidia-smi || echo "nvidia-smi not found"
    "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
missing = []
for name in ("numpy", "scipy", "array_api_compat", "array_api_strict", "threadpoolctl", "hypothesis",
             "pytest", "cupy", "torch"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as err:  # noqa: BLE001 - report every reason a module is unusable
        missing.append(name)
        print(name, "MISSING:", type(err).__name__, err)
try:
    import cupy
    print("GPU:", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
          "devices:", cupy.cuda.runtime.getDeviceCount())
except Exception as err:  # noqa: BLE001
    print("cupy cannot see a GPU:", err)
try:
    import torch
    print("torch.cuda.is_available():", torch.cuda.is_available())
except Exception:  # noqa: BLE001
    pass
print("missing:", " ".join(missing) or "none")
EOF
} >> "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== tests on cupy (pytest -m gpu, profile $HYPOTHESIS_PROFILE, at most ${TEST_TIMEOUT} s)"
start=$SECONDS
timeout "$TEST_TIMEOUT" "$PY" -m pytest tests -m gpu -q -p no:cacheprovider --durations=15 \
    --junitxml="$OUT/tests_cupy.xml" > "$OUT/tests_cupy.log" 2>&1
tests_rc=$?
if [[ $tests_rc -eq 0 ]] && ! grep -q " passed" "$OUT/tests_cupy.log"; then
    tests_rc=5  # everything skipped: cupy is missing or sees no GPU (env.txt says which)
fi
tail -n 25 "$OUT/tests_cupy.log"
echo "tests: exit $tests_rc after $((SECONDS - start)) s (124 = cut at the timeout)"

echo "== benchmark: refdiff on cupy vs PyTorch CUDA (mnist28: train step batch 64, forward batch 256)"
start=$SECONDS
timeout 120 "$PY" benchmarks/bench_unet.py --backend cupy --repeats 20 --json "$OUT/bench_cupy.json" \
    > "$OUT/bench_cupy.log" 2>&1
bench_rc=$?
cat "$OUT/bench_cupy.log"
echo "benchmark: exit $bench_rc after $((SECONDS - start)) s"

printf 'tests_rc=%s\nbench_rc=%s\nhypothesis_profile=%s\n' "$tests_rc" "$bench_rc" "$HYPOTHESIS_PROFILE" \
    | tee "$OUT/status.txt"
[[ $tests_rc -eq 0 && $bench_rc -eq 0 ]]
