"""Download the item images of a processed domain folder from its `image_urls` column (the same as
`mmsr-data images`): fills the `image` column of `items.parquet` and writes `images_report.json`.

    python scripts/download_images.py data/amazon2023/office
    python scripts/download_images.py data/amazon2023/office --workers 32 --max_side 512

Run the same command again to resume: images already on disk and valid are not downloaded again.
"""

import sys

from mmsr_peft.cli import data_main

if __name__ == "__main__":
    sys.exit(data_main(["images", *sys.argv[1:]]))
