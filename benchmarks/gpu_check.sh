#!/usr/bin/env bash
# GPU readiness check (issue 19), for a machine with an NVIDIA GPU:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [--skip-suite] [--skip-bench] [--allow-cpu]
#
# 1. nvidia-smi and torch's view of CUDA                       -> OUT_DIR/nvidia-smi.txt, torch_cuda.txt
# 2. the test suite with RECBOLE_LLMESR_TEST_GPU=1 (the tests' runs then use use_gpu=True, gpu_id=0)
#                                                              -> OUT_DIR/pytest.txt, pytest.xml
# 3. one epoch of LLMESR_SASRec/GRU4Rec/BERT4Rec on a tiny dataset on the GPU, float32 and under enable_amp
#    with amp_dtype bfloat16 and float16 (GradScaler)          -> OUT_DIR/amp.json
# 4. python -m benchmarks.train_cost on GPU 0 with AMP rows     -> OUT_DIR/train_cost*.md / .json
#
# OUT_DIR defaults to gpu_check_results/. Exits non-zero when any step failed (every step still runs; see
# OUT_DIR/summary.txt). Environment: GPU_CHECK_DATASET (default amazon_beauty_5core, prepared under
# dataset_atomic/ by llmesr-prepare), GPU_CHECK_MAX_BATCHES (50), GPU_CHECK_EPOCHS (2), PYTEST_ARGS (default -x).
# --allow-cpu runs what it can without a GPU (steps 1 and 3 on the CPU, bfloat16 only), to check the script.
set -u -o pipefail

OUT=gpu_check_results
SKIP_SUITE=0
SKIP_BENCH=0
ALLOW_CPU=0
for arg in "$@"; do
    case "$arg" in
        --skip-suite) SKIP_SUITE=1 ;;
        --skip-bench) SKIP_BENCH=1 ;;
        --allow-cpu) ALLOW_CPU=1 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        -*) echo "unknown option $arg" >&2; exit 2 ;;
        *) OUT=$arg ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python}
DATASET=${GPU_CHECK_DATASET:-amazon_beauty_5core}
FAILED=()
: > "$OUT/summary.txt"

step() {  # step NAME COMMAND...: run, log its status to summary.txt, remember failures
    local name=$1
    shift
    echo "== $name" | tee -a "$OUT/summary.txt"
    local start=$SECONDS
    "$@"
    local rc=$?
    echo "   rc=$rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    if [ "$rc" -ne 0 ]; then FAILED+=("$name"); fi
    return 0
}

device_info() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
    else
        echo "nvidia-smi not found" | tee "$OUT/nvidia-smi.txt"
    fi
    "$PY" - "$ALLOW_CPU" <<'EOF' 2>&1 | tee "$OUT/torch_cuda.txt"
import sys
import torch
print("torch", torch.__version__, "CUDA build", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available(), "devices:", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported() if i == 0 else '-'}")
print("NCCL available:", torch.distributed.is_nccl_available())
sys.exit(0 if torch.cuda.is_available() or sys.argv[1] == "1" else 1)
EOF
}

test_suite() {
    # shellcheck disable=SC2086
    RECBOLE_LLMESR_TEST_GPU=1 "$PY" -m pytest -q tests ${PYTEST_ARGS:--x} --junitxml="$OUT/pytest.xml" \
        2>&1 | tee "$OUT/pytest.txt"
}

amp_runs() {
    "$PY" - "$OUT/amp.json" "$ALLOW_CPU" <<'EOF'
import json, math, os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "tests")
import torch
from conftest import FAST, write_artifacts, write_tiny_dataset
from recbole_llmesr.quick_start import run_recbole

cuda = torch.cuda.is_available()
if not cuda and sys.argv[2] != "1":
    sys.exit("no CUDA device")
work = Path(tempfile.mkdtemp(prefix="gpu_check_amp_"))
os.chdir(work)
write_artifacts(write_tiny_dataset(work / "data"))
base = {**FAST, "use_gpu": cuda, "gpu_id": "0", "data_path": str(work / "data"), "epochs": 1,
        "checkpoint_dir": str(work / "saved"), "state": "WARNING"}
dtypes = [None, "bfloat16"] + (["float16"] if cuda else [])
rows, ok = [], True
for model in ("LLMESR_SASRec", "LLMESR_GRU4Rec", "LLMESR_BERT4Rec"):
    for dtype in dtypes:
        cfg = {**base, "enable_amp": dtype is not None, "amp_dtype": dtype or "bfloat16"}
        start = time.perf_counter()
        try:
            res = run_recbole(model, "tiny", config_dict=cfg)
            test = {k: float(v) for k, v in res["test_result"].items()}
            row = {"model": model, "amp_dtype": dtype or "float32", "seconds": round(time.perf_counter() - start, 2),
                   "ndcg@10": test["ndcg@10"], "hit@10": test["hit@10"]}
            row["ok"] = math.isfinite(row["ndcg@10"])
        except Exception as err:  # noqa: BLE001 - reported, and the step fails
            row = {"model": model, "amp_dtype": dtype or "float32", "ok": False, "error": repr(err)[:2000]}
        ok &= row["ok"]
        rows.append(row)
        print(json.dumps(row), flush=True)
device = torch.cuda.get_device_name(0) if cuda else "cpu"
Path(sys.argv[1]).write_text(json.dumps({"device": device, "runs": rows}, indent=2))
sys.exit(0 if ok else 1)
EOF
}

train_cost() {
    if [ ! -f "dataset_atomic/$DATASET/$DATASET.inter" ]; then
        echo "dataset_atomic/$DATASET/$DATASET.inter is missing: prepare it first (llmesr-prepare --dataset" \
             "$DATASET ..., see benchmarks/README.md) or set GPU_CHECK_DATASET" | tee "$OUT/train_cost.md"
        return 1
    fi
    local common=(--dataset "$DATASET" --device cuda --epochs "${GPU_CHECK_EPOCHS:-2}"
                  --max-batches "${GPU_CHECK_MAX_BATCHES:-50}" --threads 4)
    "$PY" -m benchmarks.train_cost "${common[@]}" --amp bfloat16 --json "$OUT/train_cost.json" \
        2>"$OUT/train_cost.log" | tee "$OUT/train_cost.md" || return 1
    "$PY" -m benchmarks.train_cost "${common[@]}" --amp float16 --no-memory \
        --variants llmesr_default backbone_default llmesr_paper --json "$OUT/train_cost_fp16.json" \
        2>"$OUT/train_cost_fp16.log" | tee "$OUT/train_cost_fp16.md"
}

step "device info" device_info
if [ "$SKIP_SUITE" -eq 0 ]; then step "test suite on the GPU" test_suite; fi
step "AMP training runs" amp_runs
if [ "$SKIP_BENCH" -eq 0 ]; then step "benchmarks.train_cost --device cuda" train_cost; fi

if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}" | tee -a "$OUT/summary.txt"
    exit 1
fi
echo "all steps passed; results in $OUT" | tee -a "$OUT/summary.txt"
