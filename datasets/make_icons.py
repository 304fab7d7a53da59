#!/usr/bin/env python
"""Write the icons set: Tabler's icons (MIT) with their human-given names (see captioning/data/icons.py).

    python datasets/make_icons.py --out data/icons                  # downloads 2 tarballs (22 MB) once
    python datasets/make_icons.py --out data/icons --pngs icons-png-3.48.0.tgz --metadata icons-3.48.0.tgz

Offline: fetch the two tarballs where you are online (`npm pack @tabler/icons-png@3.48.0 @tabler/icons@3.48.0`)
and put them in OUT/downloads/ (or name them with --pngs and --metadata).
Result: OUT/images/{train,val,test,test_shifted}/*.png and OUT/captions_{split}.json, what
`captioning-train dataset=icons` reads.
"""
import argparse
import time
from pathlib import Path

from captioning.cli.common import user_errors
from captioning.data.icons import METADATA, PNGS, fetch, make_icons_dataset, write_slice
from captioning.data.shapes import format_summary, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (images/{split}/, captions_{split}.json)")
    p.add_argument("--downloads", default=None, help="where the tarballs are kept (default: OUT/downloads)")
    p.add_argument("--pngs", default=None, help=f"a local {PNGS.package} tarball (or slice) instead of the download")
    p.add_argument("--metadata", default=None, help=f"a local {METADATA.package} tarball (or slice)")
    p.add_argument("--val", type=int, default=500, help="validation icons (outline, none of them in train)")
    p.add_argument("--test", type=int, default=500, help="test icons (outline, none of them in train)")
    p.add_argument("--shifted", type=int, default=500, help="test_shifted icons (filled renders of train icons)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same splits")
    p.add_argument("--demo-images", type=int, default=8, help="test icons copied to OUT/demo_images")
    p.add_argument("--slice", type=int, default=None, metavar="N",
                   help="instead: write tarballs of N random icons to OUT (a small real set, as in tests/data/icons)")
    args = p.parse_args()
    start = time.perf_counter()
    with user_errors():
        out, downloads = Path(args.out), Path(args.downloads or Path(args.out) / "downloads")
        pngs = Path(args.pngs) if args.pngs else fetch(PNGS, downloads)
        metadata = Path(args.metadata) if args.metadata else fetch(METADATA, downloads)
        if args.slice:
            for path in write_slice(pngs, metadata, out, args.slice, args.seed):
                print(f"wrote {path}")
            return
        make_icons_dataset(out, pngs, metadata, args.val, args.test, args.shifted, args.seed, args.demo_images)
        print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
        print(format_summary(summary(out)))


if __name__ == "__main__":
    main()
