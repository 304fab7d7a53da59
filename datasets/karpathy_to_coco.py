#!/usr/bin/env python
"""Convert a Karpathy split file (dataset_coco.json, dataset_flickr8k.json, dataset_flickr30k.json)
to COCO captions files OUT/captions_{train,val,test[,restval]}.json.

    python datasets/karpathy_to_coco.py dataset_coco.json --out data/coco --restval-into-train
"""
import argparse

from captioning.cli.common import user_errors
from captioning.data.convert import karpathy_to_coco, print_written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("karpathy_json", help="Karpathy split file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--restval-into-train", action="store_true",
                   help="put COCO's 'restval' images into train (113k training images) instead of "
                        "captions_restval.json")
    args = p.parse_args()
    with user_errors():
        print_written(karpathy_to_coco(args.karpathy_json, args.out, args.restval_into_train))


if __name__ == "__main__":
    main()
