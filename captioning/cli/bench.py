"""captioning-bench: benchmarks that print figures measured side by side in one run.

    captioning-bench beam        # batched vs per-image beam search
    captioning-bench eval        # our BLEU vs the official scorer
    captioning-bench encoder     # feature extraction: plain loop vs ours (fp32/bf16)
    captioning-bench caption     # captioning a folder: plain CNN in the main process vs captioning-caption
    captioning-bench allocator   # the CNN per image with glibc's malloc defaults vs keep_freed_memory
    captioning-bench decoder     # decoder training step: tokens/s and GFLOP/s vs matmul peak
    captioning-bench projection  # decoding's vocabulary projection: nn.Linear vs oneDNN, and which is used
    captioning-bench finetune    # raw-image training step: CNN frozen, last blocks trained, whole CNN
    captioning-bench data        # a dataset's vocabulary, caption lengths and decoder speed (Flickr8k)
    captioning-bench scale       # COCO's size: annotations, vocabulary, dataset, feature cache, decoder epoch
    captioning-bench all         # every one of the above
    captioning-bench gpu         # the GPU check (make gpu-check): CUDA tests, training, DDP, beam search, CUDA rows
"""
from __future__ import annotations

import argparse
import importlib
import sys

from captioning.bench.common import machine_description, markdown_table
from captioning.io import InputError

SUBCOMMANDS = ["beam", "eval", "encoder", "caption", "allocator", "decoder", "projection", "finetune", "data", "scale",
               "gpu"]
NOT_IN_ALL = {"gpu"}  # it needs CUDA, and runs the others' CUDA rows itself


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="captioning-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {name: importlib.import_module(f"captioning.bench.{name}") for name in SUBCOMMANDS}
    for name in SUBCOMMANDS:
        p = sub.add_parser(name, help=modules[name].__doc__.strip().splitlines()[0])
        modules[name].add_arguments(p)
    sub.add_parser("all", help="run every benchmark with its defaults")
    args = parser.parse_args(argv)
    names = [n for n in modules if n not in NOT_IN_ALL] if args.command == "all" else [args.command]
    print(f"Machine: {machine_description()}\n")
    for name in names:
        run_args = args if args.command != "all" else _defaults(modules[name])
        print(f"## {name}\n", flush=True)
        try:
            rows = modules[name].run(run_args)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        print(markdown_table(rows))
        print(flush=True)


def _defaults(module) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args([])


if __name__ == "__main__":
    sys.exit(main())
