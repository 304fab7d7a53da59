#!/usr/bin/env python
"""Download COCO 2014 images and Karpathy's splits, then write Karpathy-split COCO captions files.

    python datasets/download_coco.py --root data/coco --dry-run   # show what would happen
    python datasets/download_coco.py --root data/coco             # ~20 GB download, ~40 GB disk

Result: ROOT/images/{train2014,val2014}/ and ROOT/captions_{train,val,test}.json (113,287 /
5,000 / 5,000 images with restval in train), what `captioning-train dataset=coco_karpathy` reads.
Interrupted runs resume at the first step whose output is missing.
"""
import argparse
import sys

from captioning.data.download import download_coco
from captioning.io import InputError


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/coco", help="output folder (default: data/coco)")
    p.add_argument("--dry-run", action="store_true", help="print the steps, download nothing")
    p.add_argument("--official-annotations", action="store_true",
                   help="also fetch annotations_trainval2014.zip (the official captions files)")
    p.add_argument("--restval-separate", action="store_true",
                   help="keep 'restval' as captions_restval.json instead of adding it to train")
    args = p.parse_args()
    try:
        download_coco(args.root, official_annotations=args.official_annotations,
                      restval_into_train=not args.restval_separate, dry_run=args.dry_run)
    except (InputError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
