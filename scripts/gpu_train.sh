#!/usr/bin/env bash
# Train the default model on a lent GPU machine (no network there), within one time budget.
# Needs: data/train_set (python -m glvc.data.prepare) and .whl/ with the wheels the machine lacks
# (diffusers, compressai, pytorch-msssim, importlib_metadata, tomli for its Python).
# Usage: OUT=/path/for/results bash scripts/gpu_train.sh [CONFIG] [SECONDS]
set -u
config=${1:-configs/default.json}
seconds=${2:-540}
out=${OUT:-runs/gpu_out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$(pwd)
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, diffusers, compressai; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'compressai', compressai.__version__, 'cuda', torch.cuda.is_available())" || exit 1
timeout "$seconds" python3 -m glvc train --config "$config" --output-dir /tmp/run 2>&1 | grep -v -i warn | tee "$out/train.log"
# whatever finished comes back: the exported model, or the raw weights of an unfinished stage
python3 - "$out" <<'PY'
import os, shutil, sys, torch
out = sys.argv[1]
for stage in ("tokenizer", "codec"):
    src = f"/tmp/run/model/{stage}"
    if os.path.isdir(src):
        shutil.copytree(src, f"{out}/{stage}", dirs_exist_ok=True)
    elif os.path.isfile(f"/tmp/run/{stage}.pt"):
        from safetensors.torch import save_file
        state = torch.load(f"/tmp/run/{stage}.pt", map_location="cpu", weights_only=False)["model"]
        save_file({k: v.half() if v.is_floating_point() and stage == "tokenizer" else v.contiguous() for k, v in state.items()}, f"{out}/{stage}_unfinished.safetensors")
for name in os.listdir("/tmp/run"):
    if name.endswith(".csv"):
        shutil.copy(f"/tmp/run/{name}", out)
print(os.listdir(out))
PY
