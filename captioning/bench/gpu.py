"""The GPU check: everything that needs CUDA, in one go, as one table (`make gpu-check`).

Stages, in order, each a row (what ran, its result, seconds); on a machine without CUDA the check stops at the first
stage with one line saying so (exit status 1):
1. device: every CUDA device, its compute capability, memory and native bf16;
2. tests: `pytest -m cuda` (tests/test_cuda.py: the same maths on the GPU as on the CPU, training, SCST, bf16
   autocast, NCCL over two or more GPUs), from a source checkout;
3. train: captioning-train on a generated shapes set, the feature cache built on the GPU, a few hundred steps at
   `precision=auto` (bf16 where the GPU has it);
4. ddp: the same run under torchrun over every GPU (two or more);
5. caption: captioning-caption with beam search on the GPU from that checkpoint, its captions compared with the
   CPU's (fp32 both);
6. bench: the CUDA rows of `captioning-bench decoder` and `beam`, printed below the table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="training steps of the train and ddp stages")
    parser.add_argument("--images", type=int, default=600, help="training images of the generated shapes set")
    parser.add_argument("--workdir", type=Path, default=None, help="where the data and runs go (default: a temp dir)")


def program(name: str) -> str:
    """A console script of this environment."""
    return str(Path(sys.executable).parent / name)


def call(args: list[str], timeout: int = 900) -> tuple[bool, str]:
    """(exit status 0, the last line of its output) of one command."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return proc.returncode == 0, (lines[-1] if lines else "")[:160]


def device_stage() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, (f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}; "
                       f"torch.cuda.is_available() is False): nothing ran on a GPU")
    names = [f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))}, "
             f"{torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
             for i in range(torch.cuda.device_count())]
    return True, f"{', '.join(names)}; bf16: {torch.cuda.is_bf16_supported()}"


def train_command(work: Path, steps: int, run_dir: Path) -> list[str]:
    return [f"dataset.root={work / 'shapes'}", f"cache_dir={work / 'cache'}", "trainer.device=cuda",
            f"trainer.max_steps={steps}", "trainer.batch_size=64", "trainer.progress=false",
            "trainer.tensorboard=false", f"hydra.run.dir={run_dir}"]


def stages(args: argparse.Namespace, work: Path) -> list[tuple[str, callable]]:
    """The stages after `device`, each a (name, function returning (ok, result))."""
    from captioning.data.shapes import make_shapes_dataset

    def tests():
        if not (REPO / "tests" / "test_cuda.py").is_file():
            return True, "skipped: not a source checkout (no tests/)"
        return call([sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(REPO / "tests")], timeout=1800)

    def train():
        val = max(args.images // 6, 20)
        make_shapes_dataset(work / "shapes", n_train=args.images, n_val=val, n_test=val, seed=0, demo_images=8)
        return call([program("captioning-train"), *train_command(work, args.steps, work / "run")])

    def ddp():
        if torch.cuda.device_count() < 2:
            return True, "skipped: one GPU (torchrun needs two or more to test NCCL)"
        return call([program("torchrun"), "--standalone", f"--nproc_per_node={torch.cuda.device_count()}",
                     "--no-python", program("captioning-train"), *train_command(work, args.steps, work / "ddp")])

    def caption():
        outs = {}
        for device in ("cuda", "cpu"):
            ok, last = call([program("captioning-caption"), f"checkpoint={work / 'run' / 'checkpoints' / 'best.pt'}",
                             f"images={work / 'shapes' / 'images' / 'test'}", f"output={work / device}",
                             f"device={device}", "precision=fp32", "progress=false"])
            if not ok:
                return False, f"{device}: {last}"
            outs[device] = {r["file_name"]: r.get("caption") for r in
                            json.loads((work / device / "captions.json").read_text(encoding="utf-8"))}
        same = sum(outs["cuda"][k] == outs["cpu"].get(k) for k in outs["cuda"])
        return same == len(outs["cuda"]), f"{same}/{len(outs['cuda'])} captions identical to the CPU's"

    return [("tests", tests), ("train", train), ("ddp", ddp), ("caption", caption)]


def run(args: argparse.Namespace) -> list[dict]:
    ok, result = device_stage()
    if not ok:
        print(f"gpu check: {result}")
        sys.exit(1)
    rows = [{"stage": "device", "ok": "yes", "result": result, "seconds": 0.0}]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        for name, stage in stages(args, work):
            start = time.perf_counter()
            try:
                ok, result = stage()
            except Exception as e:  # noqa: BLE001 - a stage that crashes is a row, and the next stages still run
                ok, result = False, f"{type(e).__name__}: {e}"[:160]
            rows.append({"stage": name, "ok": "yes" if ok else "NO", "result": result,
                         "seconds": time.perf_counter() - start})
            print(f"{name}: {'ok' if ok else 'FAILED'} ({result})", flush=True)
    start = time.perf_counter()
    bench = [subprocess.run([program("captioning-bench"), name, "--device", "cuda"], capture_output=True, text=True)
             for name in ("decoder", "beam")]
    rows.append({"stage": "bench", "ok": "yes" if all(b.returncode == 0 for b in bench) else "NO",
                 "result": "decoder and beam: their CUDA tables follow", "seconds": time.perf_counter() - start})
    print("\n".join(b.stdout + b.stderr[-2000:] for b in bench), flush=True)
    return rows
