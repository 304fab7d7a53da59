"""eval: our tokenize + BLEU + CIDEr-D vs the official scorer's PTBTokenizer (Java) + Bleu(4) + Cider on all
of Flickr8k.

Caption #0 of every image is the hypothesis, the image's other captions its references (8,091 images:
the one image whose #0 is filed under a `.jpg.1` name has no usable pair). Each side is timed from raw
strings to the scores; the best of --repeats runs is reported, and both must give the same numbers.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from captioning.data.convert import read_flickr8k_numbered
from captioning.io import InputError
from captioning.metrics import bleu_tokenized, cider_d, tokenize_for_scoring

# The copy kept with the tests (a source checkout); an installed package is given --captions.
DEFAULT_CAPTIONS = Path(__file__).resolve().parents[2] / "tests" / "data" / "flickr8k" / "Flickr8k.token.txt.xz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", type=Path, default=DEFAULT_CAPTIONS,
                        help="Flickr8k.token.txt, plain or .xz/.gz (default: the repository's tests/data copy)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per implementation; the fastest is reported")


def load_pairs(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """({image: caption #0}, {image: its other captions}) for images that have both."""
    if not path.is_file():
        raise InputError(f"Flickr8k captions file not found: {path} (pass --captions PATH/Flickr8k.token.txt)")
    captions = read_flickr8k_numbered(path)
    usable = [i for i, c in captions.items() if 0 in c and len(c) > 1]
    return ({i: captions[i][0] for i in usable},
            {i: [c for n, c in sorted(captions[i].items()) if n != 0] for i in usable})


def _official(results: dict[str, str], references: dict[str, list[str]]) -> tuple[float, float, float, float, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    t0 = time.perf_counter()
    tokenizer = PTBTokenizer()  # one Java process per call, as in COCOEvalCap.evaluate
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": results[i]}] for i in references})
    t1 = time.perf_counter()
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    t2 = time.perf_counter()
    cider, _ = Cider().compute_score(gts, res)
    return t1 - t0, t2 - t1, time.perf_counter() - t2, bleu[3], float(cider)


def _ours(results: dict[str, str], references: dict[str, list[str]]) -> tuple[float, float, float, float, float]:
    t0 = time.perf_counter()
    hypotheses, refs = tokenize_for_scoring(results, references)  # its cache starts empty each run
    t1 = time.perf_counter()
    bleu = bleu_tokenized(hypotheses, refs)
    t2 = time.perf_counter()
    cider, _ = cider_d(hypotheses, refs)
    return t1 - t0, t2 - t1, time.perf_counter() - t2, bleu.bleu[3], cider


def run(args: argparse.Namespace) -> list[dict]:
    results, references = load_pairs(args.captions)
    n_captions = len(results) + sum(len(r) for r in references.values())
    rows = []
    for name, fn in [("official: PTBTokenizer (Java) + Bleu(4) + Cider", _official),
                     ("captioning: text.tokenize + corpus_bleu + cider_d", _ours)]:
        tok_s, bleu_s, cider_s, bleu4, cider = min((fn(results, references) for _ in range(args.repeats)),
                                                   key=lambda r: sum(r[:3]))
        rows.append({"implementation": name, "images": len(results), "captions": n_captions,
                     "tokenize s": tok_s, "bleu s": bleu_s, "cider s": cider_s, "total s": tok_s + bleu_s + cider_s,
                     "BLEU-4": f"{bleu4:.9f}", "CIDEr-D": f"{cider:.9f}"})
    for row in rows:
        row["speedup"] = f"{rows[0]['total s'] / row['total s']:.2f}x"
    return rows
