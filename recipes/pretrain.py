"""Pretrain a universal MMSR base model on source domains.

Single process (CPU or one GPU), on the embedded synthetic world, with the CPU-sized defaults:
    accelerate launch recipes/pretrain.py
Several GPUs (DDP; `accelerate config` once to describe the machines):
    accelerate launch --multi_gpu --num_processes 8 recipes/pretrain.py --config recipes/configs/pretrain_synthetic.yaml
Two CPU processes (gloo DDP):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no recipes/pretrain.py
Tiny smoke run (seconds):
    accelerate launch recipes/pretrain.py --text_model tiny-bert --vision_model micro-vit --image_size 32 \
        --num_epochs 1 --output_dir outputs/smoke
Resume an interrupted run: add --resume (same --output_dir).
Every option: python recipes/pretrain.py --help
"""

import sys

from mmsr_peft.cli import pretrain_main as main

if __name__ == "__main__":
    sys.exit(main())
