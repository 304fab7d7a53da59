#!/usr/bin/env python
"""Write the synthetic shapes captioning dataset (see captioning/data/shapes.py).

    python datasets/make_shapes.py --out data/shapes --train 3000 --val 300 --test 300 --seed 0
    python datasets/make_shapes.py --out data/shapes_shifted --distractors 2 --shifted-style outline
"""
import argparse
import time

from captioning.cli.common import user_errors
from captioning.data.shapes import Drawing, format_summary, make_shapes_dataset, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (images/{split}/, captions_{split}.json)")
    p.add_argument("--train", type=int, default=3000, help="training images")
    p.add_argument("--val", type=int, default=300, help="validation images")
    p.add_argument("--test", type=int, default=300, help="test images")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(2, cores))")
    p.add_argument("--demo-images", type=int, default=8, help="test images copied to OUT/demo_images")
    p.add_argument("--style", default="filled", help="drawing style of every split: filled | outline")
    p.add_argument("--shifted-style", default=None,
                   help="also write test_shifted (--test images) in this style: a shift from the training style")
    p.add_argument("--distractors", type=int, default=0, help="up to this many unmentioned grey shapes per image")
    args = p.parse_args()
    start = time.perf_counter()
    with user_errors():
        make_shapes_dataset(args.out, args.train, args.val, args.test, seed=args.seed, image_size=args.size,
                            workers=args.workers, demo_images=args.demo_images, progress="auto",
                            drawing=Drawing(args.style, args.shifted_style, args.distractors))
        print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
        print(format_summary(summary(args.out)))


if __name__ == "__main__":
    main()
