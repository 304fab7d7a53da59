"""data: what a caption dataset's training split means for the model: vocabulary, lengths, decoder speed.

For each --min-counts threshold (`vocab.min_count`): the vocabulary size (with the 4 special tokens),
the share of training tokens that become <unk>, and the decoder's training speed (the `decoder`
benchmark's step: teacher forcing, loss, backward, clipping, Adam; fp32) with an output layer of that
size. Also the share of training captions longer than --max-len words, which `dataset.max_caption_len`
cuts. Default data: the real Flickr8k captions kept with the tests (converted on the fly), so it runs
on a fresh clone; any COCO-format training file with --annotations.
"""
from __future__ import annotations

import argparse
import lzma
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from captioning.bench import decoder as decoder_bench
from captioning.data.coco import load_coco_captions
from captioning.data.convert import flickr8k_to_coco
from captioning.io import InputError
from captioning.text import Vocabulary, tokenize

FLICKR8K = Path(__file__).resolve().parents[2] / "tests" / "data" / "flickr8k"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", type=Path, default=None,
                        help="a COCO-format training captions file (default: Flickr8k's train split, from tests/data)")
    parser.add_argument("--min-counts", type=int, nargs="+", default=[1, 5], help="vocab.min_count values")
    parser.add_argument("--max-len", type=int, default=20, help="dataset.max_caption_len (words)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the decoder step; the fastest counts")


def flickr8k_train_split(out_dir: Path) -> Path:
    if not (FLICKR8K / "Flickr8k.token.txt.xz").is_file():
        raise InputError(f"no Flickr8k captions at {FLICKR8K} (an installed package): pass --annotations FILE")
    for name in ("train", "dev", "test"):  # the split lists, unpacked where flickr8k_to_coco looks for them
        packed = FLICKR8K / f"Flickr_8k.{name}Images.txt.xz"
        (out_dir / packed.stem).write_bytes(lzma.decompress(packed.read_bytes()))
    return flickr8k_to_coco(FLICKR8K / "Flickr8k.token.txt.xz", out_dir, out_dir)["train"]


def run(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = args.annotations or flickr8k_train_split(Path(tmp))
        captions = [tokenize(c) for cs in load_coco_captions(path).captions.values() for c in cs]
    lengths = [len(c) for c in captions]
    counts = Counter(w for c in captions for w in c)
    cut = sum(n > args.max_len for n in lengths) / len(lengths)
    seq_len = round(statistics.mean(min(n, args.max_len) for n in lengths)) + 2  # + <start>, <end>
    rows = []
    for min_count in args.min_counts:
        vocab = Vocabulary.build(captions, min_count=min_count)
        unk = sum(vocab.missing(counts).values()) / sum(counts.values())
        step = decoder_bench.run(argparse.Namespace(
            batch=args.batch, hidden=args.hidden, embed=args.embed, vocab=len(vocab), feature_dim=1280,
            seq_len=seq_len, cell="lstm", impls=["fused"], precisions=["fp32"], steps=2, repeats=args.repeats,
            peak_size=256, device="cpu"))[0]
        rows.append({"data": path.name if args.annotations else "Flickr8k train", "captions": len(captions),
                     "vocab.min_count": min_count, "vocabulary": len(vocab), "<unk> share of tokens": f"{unk:.2%}",
                     "words: mean / p95 / max": f"{statistics.mean(lengths):.1f} / "
                                                f"{sorted(lengths)[int(0.95 * len(lengths))]} / {max(lengths)}",
                     f"captions cut at {args.max_len} words": f"{cut:.2%}",
                     f"decoder step tokens/s (LSTM {args.hidden}, batch {args.batch}, fp32)": step["tokens/s"]})
    return rows
