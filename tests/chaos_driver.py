"""captioning-train that SIGKILLs itself at a chosen point, for tests/test_chaos.py, or sends itself SIGTERM.

    python chaos_driver.py POINT [captioning-train overrides...]

POINT is step:N (while computing training step N of this process), val:N (in this process's N-th
validation), write:NAME:N (the N-th write of NAME, after its temporary file is written and before it is
renamed into place) or never. SIGKILL cannot be caught: no handler, `finally` or atexit runs, as when
the kernel's OOM killer or a node failure ends a job. sigterm:N sends SIGTERM (which the run catches, saving
where it is) while optimizer step N is taken, whatever the objective (test_matrix.py, under torchrun too).
"""
import os
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def counting(n: int, fn, when=lambda *a, **k: True, then=die):
    calls = []

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                then()
        return fn(*args, **kwargs)
    return wrapper


def sigterm_at_step(n: int) -> None:
    """SIGTERM to this process while its optimizer step n is taken (each step measures the gradient's norm once)."""
    import torch
    torch.nn.utils.get_total_norm = counting(n, torch.nn.utils.get_total_norm,
                                             then=lambda: os.kill(os.getpid(), signal.SIGTERM))


def main() -> None:
    point, sys.argv = sys.argv[1], ["captioning-train", *sys.argv[2:]]
    kind, *args = point.split(":")
    import captioning.engine
    import captioning.objectives

    if kind == "step":
        captioning.objectives.batch_loss = counting(int(args[0]), captioning.objectives.batch_loss,
                                                when=lambda decoder, *a, **k: decoder.training)
    elif kind == "val":
        captioning.engine.score_split = counting(int(args[0]), captioning.engine.score_split,
                                                   when=lambda *a, desc, **k: desc == "val")
    elif kind == "sigterm":
        sigterm_at_step(int(args[0]))
    elif kind == "write":
        os.replace = counting(int(args[1]), os.replace, when=lambda src, dst: Path(dst).name == args[0])
    from captioning.cli.train import main as train_main
    train_main()


if __name__ == "__main__":
    main()
