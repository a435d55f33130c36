"""Prepare one category of Amazon Reviews 2018 or 2023 as a processed domain folder (the same as `mmsr-data amazon`):
UniSRec's preprocessing (items with metadata and a title, 5-core, chronological order), item text from title +
categories + brand, and the items' image URLs in an `image_urls` column.

    python scripts/prepare_amazon.py --domain office --version 2018 --data_dir data
    python scripts/prepare_amazon.py --domain office --version 2023 --data_dir data --raw_dir ~/amazon2023
    python scripts/download_images.py data/amazon2023/office

The raw files missing from --raw_dir (default <data_dir>/raw/amazon<version>) are downloaded into it; offline, put
`<Category>.json.gz` + `meta_<Category>.json.gz` (2018) or `<Category>.jsonl.gz` + `meta_<Category>.jsonl.gz` (2023)
there first.
"""

import sys

from mmsr_peft.cli import data_main

if __name__ == "__main__":
    sys.exit(data_main(["amazon", *sys.argv[1:]]))
