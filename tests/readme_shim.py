"""Stand-in for the programs README's commands call, used by tests/test_docs.py.

test_docs.py runs every command of the README and docs/ verbatim in bash, with a folder of wrappers first on PATH: each
wrapper calls `python readme_shim.py PROGRAM ARGS...`, and this script runs the real PROGRAM at tiny size.
README_MODE says how:

* run:     the real program with tiny-size options appended (later options win: Hydra overrides and
           argparse alike), e.g. a small CNN, 3 training steps, 4 benchmark images;
* compose: where a command cannot run here (downloads, GPUs, SLURM, several nodes), it is only
           composed: Hydra apps get `--cfg job` for every combination of a `-m` sweep, download
           scripts `--dry-run`, make `-n`, captioning-bench `--help`.
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys

REAL_BIN = os.environ["README_REAL_BIN"]  # the environment's bin/ (captioning-*, torchrun)
MODE = os.environ["README_MODE"]
SHIM_VENV = os.environ["README_SHIM_VENV"]  # a folder whose bin/ is the wrappers: make's VENV
REAL_MAKE = os.environ["README_REAL_MAKE"]

TINY = {
    "captioning-train": ["encoder=small_cnn", "encoder.image_size=32", "encoder.num_workers=0",
                         "decoder.embed_dim=8", "decoder.hidden_dim=16", "trainer.batch_size=16",
                         "trainer.max_steps=3", "trainer.tensorboard=false"],
    "captioning-caption": ["num_workers=0", "thumbnail_size=32"],
    "captioning-eval": [],
    "captioning-lm": ["trainer.max_epochs=1", "max_chars=4000", "model.hidden_dim=32", "sample.length=20",
                      "sample.num_samples=1"],
    "captioning-gradflow": ["seq_len=12", "hidden_size=8", "seeds=[0]", "clip.seq_len=6"],
    "captioning-baseline": ["encoder=small_cnn", "encoder.image_size=32", "encoder.num_workers=0"],
}
TINY_BENCH = {
    "encoder": ["--limit", "4", "--repeats", "1", "--encoder", "small_cnn", "--workers", "1"],
    "decoder": ["--batch", "4", "--hidden", "16", "--embed", "8", "--vocab", "40", "--feature-dim", "12",
                "--seq-len", "6", "--steps", "1", "--repeats", "1", "--peak-size", "64"],
    "beam": ["--images", "3", "--beam-sizes", "2", "--batch-sizes", "3", "--vocab", "30", "--hidden", "16",
             "--embed", "8", "--feature-dim", "12", "--max-len", "5", "--repeats", "1"],
    "eval": ["--repeats", "1"],
    "caption": ["--limit", "4", "--workers", "1"],
    "allocator": ["--encoder", "small_cnn", "--image-size", "32", "--batch-sizes", "2", "--images", "2",
                  "--repeats", "1"],
    "scale": ["--images", "40", "--captions", "210", "--steps", "2", "--hidden", "16", "--embed", "8", "--batch", "8"],
    "finetune": ["--encoder", "small_cnn", "--image-size", "32", "--batch", "4", "--blocks", "1", "--vocab", "30",
                 "--steps", "1", "--repeats", "1"],
    "data": ["--repeats", "1", "--batch", "8", "--hidden", "16", "--embed", "8"],
    "projection": ["--hidden", "16", "--vocab", "50", "--batch-sizes", "1", "7", "--repeats", "1"],
}
TINY_SHAPES = ["--train", "24", "--val", "6", "--test", "6"]
# The icons set from the committed 300-icon slice of the same tarballs (tests/data/icons), offline.
TINY_ICONS = ["--pngs", "tests/data/icons/icons-png-slice-3.48.0.tgz", "--metadata",
              "tests/data/icons/icons-slice-3.48.0.tgz", "--val", "40", "--test", "40", "--shifted", "30"]


def call(args: list[str]) -> int:
    print("+", " ".join(args), file=sys.stderr, flush=True)
    return subprocess.call(args)


def sweep(args: list[str]) -> list[list[str]]:
    """Every combination of a -m command's comma-separated values (not inside brackets or quotes)."""
    choices = [[f"{a.split('=', 1)[0]}={v}" for v in a.split("=", 1)[1].split(",")]
               if re.fullmatch(r"[\w./+~-]+=[^\[\]'\"]*,[^\[\]'\"]*", a) else [a] for a in args]
    return [list(c) for c in itertools.product(*choices)]


def hydra_app(program: str, args: list[str]) -> int:
    real = os.path.join(REAL_BIN, program)
    if MODE == "run":
        resuming = any(a.startswith("trainer.resume=") for a in args)  # 3 more steps than the run it continues
        return call([real, *args, *TINY[program], *(["trainer.max_steps=6"] if resuming else [])])
    plain = [a for a in args if a not in ("-m", "--multirun")]
    return max(call([real, *combo, "--cfg", "job"]) for combo in sweep(plain))


def report(args: list[str]) -> int:
    real = os.path.join(REAL_BIN, "captioning-report")
    return call([real, "--help"] if MODE == "compose" else [real, *args])


def bench(args: list[str]) -> int:
    real = os.path.join(REAL_BIN, "captioning-bench")
    if MODE == "compose" or args[:1] == ["all"]:
        return call([real, *args[:1], "--help"])
    return call([real, *args, *TINY_BENCH[args[0]]])


def torchrun(args: list[str]) -> int:
    at = args.index("--no-python")
    launcher, program = args[:at], args[at + 1:]
    if MODE == "compose":  # several nodes: compose what every process would run
        return hydra_app(program[0], program[1:])
    launcher = [re.sub(r"^--nproc_per_node=\d+$", "--nproc_per_node=2", a) for a in launcher]
    return call([os.path.join(REAL_BIN, "torchrun"), *launcher, "--no-python", *program])


def python(args: list[str]) -> int:
    if MODE == "compose":
        args = [*args, "--dry-run"]
    elif args and args[0].endswith("make_shapes.py"):
        args = [*args, *TINY_SHAPES]
    elif args and args[0].endswith("make_icons.py"):
        args = [*args, *TINY_ICONS]
    return call([sys.executable, *args])


def make(args: list[str]) -> int:
    """The recipe's commands, printed by `make -n` with VENV pointing at the wrappers; run unless composing."""
    listing = subprocess.run([REAL_MAKE, "-s", "-n", "-o", "install", *args, f"VENV={SHIM_VENV}"],
                             capture_output=True, text=True)
    print(listing.stdout, listing.stderr, file=sys.stderr)
    if listing.returncode or MODE == "compose":
        return listing.returncode
    return subprocess.call(["bash", "-euo", "pipefail", "-c", listing.stdout])


def main() -> int:
    program, args = os.path.basename(sys.argv[1]), sys.argv[2:]
    if program == "captioning-bench":
        return bench(args)
    if program == "captioning-report":
        return report(args)
    if program in TINY:
        return hydra_app(program, args)
    return {"torchrun": torchrun, "python": python, "make": make}[program](args)


if __name__ == "__main__":
    sys.exit(main())
