#!/usr/bin/env python
"""Convert the Flickr8k release to COCO captions files OUT/captions_{train,val,test}.json.

    python datasets/flickr8k_to_coco.py --captions Flickr8k.token.txt --splits-dir DIR --out data/flickr8k

DIR holds Flickr_8k.{train,dev,test}Images.txt (dev becomes val). Images go in a folder of
their own (the release's Flicker8k_Dataset/), given to training as the split's images directory.
"""
import argparse

from captioning.cli.common import user_errors
from captioning.data.convert import flickr8k_to_coco, print_written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", required=True, help="Flickr8k.token.txt (<image>#<n><TAB><caption>)")
    p.add_argument("--splits-dir", required=True, help="folder with Flickr_8k.{train,dev,test}Images.txt")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args()
    with user_errors():
        print_written(flickr8k_to_coco(args.captions, args.splits_dir, args.out))


if __name__ == "__main__":
    main()
