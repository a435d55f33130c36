#!/usr/bin/env bash
# The open issues' GPU checks in one call of the device tool (about 8 minutes on one H100 or H200):
#   1. training-step throughput of LoRA and full fine-tuning in bf16 (#22): as they are and with steady step
#      shapes (--pad_items_to_multiple_of 64), with the profiler's busiest operators, then full fine-tuning
#      compiled as well (--torch_compile; LoRA on the ViT's attention cannot be);
#   2. an FSDP smoke run of pretraining (#25): Accelerate's FSDP needs a GPU (its CPU backend has none).
# Everything lands in $OUT (the device tool's folder; outputs/gpu without it) as at most 6 files, within the
# tool's limit on files that come back. The machine's image has torch and accelerate; carry what else the
# package needs as wheels (see the device tool's README) and a MiniLM config + tokenizer folder as TEXT_MODEL
# (the weights are not read: the throughput benchmark uses random weights).
#
#   TEXT_MODEL=.carry/minilm bash scripts/gpu_checks.sh
set -uo pipefail
out=${OUT:-outputs/gpu}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
text_model=${TEXT_MODEL:-$(python3 -c 'from mmsr_peft.builder import minilm_path; print(minilm_path())')}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import torch, accelerate; print("torch", torch.__version__, "accelerate", accelerate.__version__)'
} > "$out/machine.txt" 2>&1

bench() {  # bench NAME CONFIGS FLAGS...: bf16, 30 timed steps
    local name=$1 configs=$2
    shift 2
    timeout 170 python3 scripts/benchmark_throughput.py --configs $configs --precisions bf16 --steps 30 \
        --text_model "$text_model" --output_dir "$work/$name" "$@" 2>&1 | tail -n 5
}
{
    bench plain "lora full" --profile
    bench padded "lora full" --pad_items_to_multiple_of 64 --profile
    # LoRA on the ViT's nn.MultiheadAttention cannot be compiled (refused): full fine-tuning only
    bench compiled full --pad_items_to_multiple_of 64 --torch_compile
} > "$out/throughput.log"
for name in plain padded compiled; do
    [ -f "$work/$name/throughput.md" ] && { echo "## $name"; cat "$work/$name/throughput.md"; echo; }
done > "$out/throughput.md"
cat "$work"/*/profile-*.txt > "$out/profiles.txt" 2>/dev/null
python3 - "$work" "$out/throughput.json" <<'EOF'
import json, sys
from pathlib import Path
runs = {p.parent.name: json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("*/throughput.json")}
Path(sys.argv[2]).write_text(json.dumps(runs, indent=2))
EOF

timeout 150 accelerate launch --use_fsdp --num_processes 1 --mixed_precision bf16 recipes/pretrain.py \
    --text_model tiny-bert --vision_model micro-vit --image_size 32 --hidden_size 32 --max_steps 20 \
    --data_dir "$work/data" --output_dir "$work/fsdp" --report_to none > "$out/fsdp.log" 2>&1
echo "FSDP smoke run: exit status $?" >> "$out/fsdp.log"
