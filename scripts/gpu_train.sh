#!/usr/bin/env bash
# Train on a lent GPU machine (no network there), within one time budget.
# Needs: data/train_set (python -m glvc.data.prepare) and .whl/ with the wheels the machine lacks
# (diffusers, compressai, pytorch-msssim, importlib_metadata, tomli for its Python).
# Usage: OUT=/path/for/results [RUN_DIR=/path/of/run] bash scripts/gpu_train.sh [CONFIG] [SECONDS]
#
# The run folder (checkpoints, logs, model/) is the config's output_dir, or RUN_DIR. One that exists
# already is resumed and its exported stages are kept (this script says so first): remove it, or set
# RUN_DIR, to start afresh. When SECONDS run out, `timeout` sends SIGTERM: training saves a checkpoint
# and stops (the same command resumes it).
# OUT receives train.log, the log CSVs and the exported model files (tokenizer/ codec/ glvc.json
# rate_table.json, loadable with --model OUT), or the raw weights of an unfinished stage.
# Exit status: the training's (124: the time budget ran out).
set -u -o pipefail
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
run=${RUN_DIR:-$(python3 -c "import sys; from glvc.train import load_config; print(load_config(sys.argv[1])['output_dir'])" "$config")} || exit 1
if [ -e "$run" ]; then
  echo "note: the run folder $run exists: this run resumes it (a stage already exported is kept, not trained again); remove it or set RUN_DIR to start afresh"
fi
timeout -k 60 "$seconds" python3 -m glvc train --config "$config" --output-dir "$run" 2>&1 | grep --line-buffered -v -i warn | tee "$out/train.log"
status=${PIPESTATUS[0]}
# whatever finished comes back: the exported model files, or the raw weights of an unfinished stage
python3 - "$run" "$out" <<'PY'
import os, shutil, sys, torch
run, out = sys.argv[1:]
model = os.path.join(run, "model")
for name in sorted(os.listdir(model)) if os.path.isdir(model) else []:
    src = os.path.join(model, name)
    if os.path.isdir(src):
        if not name.endswith(".partial"):
            shutil.copytree(src, os.path.join(out, name), dirs_exist_ok=True)
    else:
        shutil.copy(src, out)  # glvc.json (how the model was trained: tokenizer_segment), rate_table.json
for stage in ("tokenizer", "codec"):
    if not os.path.isdir(os.path.join(model, stage)) and os.path.isfile(os.path.join(run, f"{stage}.pt")):
        from safetensors.torch import save_file
        state = torch.load(os.path.join(run, f"{stage}.pt"), map_location="cpu", weights_only=False)["model"]
        save_file({k: v.half() if v.is_floating_point() and stage == "tokenizer" else v.contiguous() for k, v in state.items()}, f"{out}/{stage}_unfinished.safetensors")
for name in os.listdir(run) if os.path.isdir(run) else []:
    if name.endswith(".csv"):
        shutil.copy(os.path.join(run, name), out)
print(sorted(os.listdir(out)))
PY
case $status in
  0) echo "training finished: the model is in $run/model and its files in $out" ;;
  124) echo "training stopped: the time budget of $seconds s ran out (a checkpoint was saved: the same command resumes it)" ;;
  *) echo "training failed with exit status $status (see $out/train.log)" ;;
esac
exit "$status"
