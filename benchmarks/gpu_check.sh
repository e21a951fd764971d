#!/usr/bin/env bash
# The GPU checks in one go: the test suite (its CuPy cases run instead of skipping) and the
# training-step benchmark on the GPU, side by side with PyTorch on the same GPU.
#
# Offline: on a machine that already has CuPy (cupy-cuda13x or -12x), PyTorch, NumPy, SciPy,
# tqdm, pytest and hypothesis, it uses this checkout in place (PYTHONPATH) and downloads
# nothing. Under 10 minutes on one H100 (its steps' time limits add up to 570 s): the device tests,
# then the benchmark, then the rest of the suite. Results go to $OUT (default: out/gpu_check/).
#
#   bash benchmarks/gpu_check.sh            (PYTHON=... picks the interpreter; default python3)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-out/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"  # the interpreter that has CuPy and PyTorch (on the lent machines, python3)

"$python" - <<'PY' || exit 2
import sys
try:
    import cupy, numpy
    cupy.cuda.runtime.getDeviceCount()
except Exception as exc:
    sys.exit(f"gpu_check: CuPy with a CUDA device is needed ({type(exc).__name__}: {exc})")
props = cupy.cuda.runtime.getDeviceProperties(0)
print(f"CuPy {cupy.__version__}, NumPy {numpy.__version__}, device {props['name'].decode()}, "
      f"{props['totalGlobalMem'] / 2**30:.0f} GiB")
PY
"$python" -c "import torch; print('PyTorch', torch.__version__, 'CUDA', torch.cuda.is_available())" || true

status=0
device_tests="tests/test_backend.py tests/test_device_paths.py tests/test_optim.py"  # every file with real-CuPy cases
echo "== the device tests (the real-CuPy cases must run, not skip) =="
timeout 240 "$python" -m pytest -q -rs -p no:cacheprovider $device_tests 2>&1 | tee "$out/test_device.log" || status=1
if grep -q "SKIPPED.*no CuPy" "$out/test_device.log"; then echo "gpu_check: the GPU tests were skipped" >&2; status=1; fi

echo "== training step on the GPU: the paper's 21M configuration, ours against PyTorch eager =="
rm -f "$out/bench_train_gpu.json"  # the summary below must never read an earlier run's figures
timeout 180 "$python" benchmarks/bench_train.py --device gpu --configs paper,medium --vs torch --steps 10 \
    --json "$out/bench_train_gpu.json" --force 2>&1 | tee "$out/bench_train_gpu.log" || status=1
if [ -f "$out/bench_train_gpu.json" ]; then
"$python" - "$out/bench_train_gpu.json" <<'PY' || status=1
import json, sys
figures = json.load(open(sys.argv[1]))
judged = False
for name, result in figures["configs"].items():
    wall = result["wall"]
    ratio = wall.get("ratio_median")
    verdict = "no PyTorch comparison" if ratio is None else f"ours/PyTorch {ratio:.2f}"
    if name == "paper" and ratio is not None:
        judged = True
        verdict += " (target >= 0.7: " + ("met" if ratio >= 0.7 else "MISSED") + ")"
    print(f"summary {name}: {wall['tokens_per_s']:,.0f} tokens/s, {verdict}, host issue "
          f"{result.get('issue_share_of_step', float('nan')):.0%} of the step")
if not judged:
    sys.exit("gpu_check: no PyTorch ratio on the paper's configuration, so the 0.7x target was not judged")
PY
else
    echo "gpu_check: the benchmark wrote no figures" >&2; status=1
fi

echo "== the rest of the suite (the device files ran above) =="
timeout 150 "$python" -m pytest -q -p no:cacheprovider tests $(printf -- '--ignore=%s ' $device_tests) \
    > "$out/test_suite.log" 2>&1 || status=1
tail -n 5 "$out/test_suite.log"
echo "results in $out/"
exit $status
