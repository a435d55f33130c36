"""Publish a base checkpoint and its adapters to the Hugging Face Hub (the same as `mmsr-publish`, once per folder).

    python scripts/push_to_hub.py --folder outputs/demo/base --repo_id org/mmsr-base
    python scripts/push_to_hub.py --folder outputs/demo/adapters/office --repo_id org/mmsr-lora-office \
        --base_repo_id org/mmsr-base
    python scripts/push_to_hub.py --folder outputs/demo/base --repo_id org/mmsr-base --dry_run

The token comes from HF_TOKEN or `hf auth login`.
"""

import sys

from mmsr_peft.cli import publish_main as main

if __name__ == "__main__":
    sys.exit(main())
