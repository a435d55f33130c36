"""Adapt a base model to a target domain with LoRA (the same function as the `mmsr-adapt` command).

    accelerate launch recipes/adapt.py --target office --base outputs/pretrain
    mmsr-adapt --target office --base org/mmsr-base --revision main --components text fusion --lora_r 16
Every option: mmsr-adapt --help
"""

import sys

from mmsr_peft.cli import adapt_main as main

if __name__ == "__main__":
    sys.exit(main())
