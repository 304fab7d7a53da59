"""allocator: the CNN's time per image with glibc's malloc defaults vs `keep_freed_memory`, and its page faults.

A DataLoader worker's CNN (the encoder's inference copy, channels_last, inference_mode, one thread) runs over
random images at each of --batch-sizes, once with glibc's malloc as it comes and once after
`captioning.cpus.keep_freed_memory()`. A malloc setting cannot be undone, so every measurement runs in a
fresh process of its own; the configurations take turns over --repeats rounds and the fastest counts. Page
faults (minor: memory the kernel hands back zeroed) are counted over the timed batches. Linux with glibc only.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from captioning.cpus import glibc_mallopt
from captioning.io import InputError
from captioning.precision import autocast, resolve_precision

MALLOC = {"glibc defaults": False, "keep_freed_memory": True}


def default_malloc_env() -> dict[str, str]:
    """This process's environment without what changes glibc's malloc (a preloaded allocator, MALLOC_* settings,
    tunables): a child started with it runs glibc's defaults."""
    return {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "GLIBC_TUNABLES") and not k.startswith("MALLOC_")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--images", type=int, default=64, help="images timed per measurement")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"],
                        help="auto: bf16 where native (a duplicate of fp32 is dropped)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; the fastest counts")


def measure(encoder: str, image_size: int, batch: int, images: int, precision: str, keep: bool) -> dict:
    """In this process: (ms per image, page faults per image) of the CNN over `images` random images."""
    from captioning.cpus import keep_freed_memory
    from captioning.models import build_encoder
    from captioning.models.inference import inference_copy

    if keep and not keep_freed_memory():
        raise RuntimeError("keep_freed_memory changed nothing: this C library's malloc is not glibc's")
    torch.set_num_threads(1)
    cnn = inference_copy(build_encoder(encoder).eval()).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    n = max(1, images // batch)
    with torch.inference_mode(), autocast(torch.device("cpu"), precision):
        cnn(x)  # warm-up: first-call allocations and oneDNN's kernel choices
        faults, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        for _ in range(n):
            cnn(x)
        seconds = time.perf_counter() - t0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"ms": 1000 * seconds / (n * batch), "faults": faults / (n * batch)}


def run(args: argparse.Namespace) -> list[dict]:
    if glibc_mallopt() is None:
        raise InputError("this benchmark compares glibc's malloc settings: it needs Linux with glibc")
    precisions = list(dict.fromkeys(resolve_precision(p, torch.device("cpu"))[0] for p in args.precisions))
    configs = [(p, b, m) for p in precisions for b in args.batch_sizes for m in MALLOC]
    best: dict[tuple, dict] = {}
    for _ in range(args.repeats):  # take turns, so a burst of load elsewhere hits every configuration alike
        for precision, batch, malloc in configs:
            spec = dict(encoder=args.encoder, image_size=args.image_size, batch=batch, images=args.images,
                        precision=precision, keep=MALLOC[malloc])
            out = subprocess.run([sys.executable, "-m", __name__, json.dumps(spec)], capture_output=True, text=True,
                                 env=default_malloc_env())
            if out.returncode:
                raise RuntimeError(f"measurement {spec} failed:\n{out.stderr[-2000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if (precision, batch, malloc) not in best or result["ms"] < best[precision, batch, malloc]["ms"]:
                best[precision, batch, malloc] = result
    return [{"precision": p, "batch": b, "malloc": m, "ms/image": best[p, b, m]["ms"],
             "page faults/image": round(best[p, b, m]["faults"]),
             "speedup": f"{best[p, b, 'glibc defaults']['ms'] / best[p, b, m]['ms']:.2f}x"}
            for p, b, m in configs]


if __name__ == "__main__":  # one measurement, in a fresh process: JSON spec in, JSON result out
    print(json.dumps(measure(**json.loads(sys.argv[1]))))
