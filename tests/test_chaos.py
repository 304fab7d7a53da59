"""A run killed with SIGKILL again and again, resumed after each kill, ends exactly where an uninterrupted run
ends, and leaves no temporary file behind."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioning.checkpoint import load_checkpoint
from captioning.data.shapes import make_shapes_dataset

BIN = Path(sys.executable).parent
DRIVER = Path(__file__).with_name("chaos_driver.py")
TINY = ["encoder=small_cnn", "encoder.image_size=32", "encoder.num_workers=0", "decoder.hidden_dim=16",
        "decoder.embed_dim=8", "decoder.output_dropout=0.5", "decoder.embed_dropout=0.5", "trainer.batch_size=8", "trainer.max_epochs=3",
        "trainer.patience=99", "trainer.tensorboard=false", "trainer.progress=false"]
# In order; each kill is counted within the process it hits (a resumed run starts counting again).
KILLS = ["step:4", "write:best.pt:1", "step:7", "val:1", "write:last.pt:1", "step:12", "val:2", "write:metrics.json:1"]


@pytest.mark.slow
def test_sigkill_at_every_kind_of_moment_then_resume(tmp_path):
    data = tmp_path / "shapes"
    make_shapes_dataset(data, n_train=16, n_val=6, n_test=6, seed=0, image_size=32, demo_images=0)
    common = [f"dataset.root={data}", f"cache_dir={tmp_path / 'cache'}", *TINY]
    reference = subprocess.run([str(BIN / "captioning-train"), *common, f"hydra.run.dir={tmp_path / 'reference'}"],
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr

    run = tmp_path / "run"
    killed = []
    for point in [*KILLS, "never"]:
        proc = subprocess.run([sys.executable, str(DRIVER), point, *common, "trainer.resume=auto",
                               f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, -9), proc.stderr
        killed.append(proc.returncode == -9)
    assert killed == [True] * len(KILLS) + [False]  # every kill happened where it was aimed

    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "reference", run))
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    assert [(e["train_loss"], e["val_loss"], e["step"]) for e in a["epochs"]] == \
        [(e["train_loss"], e["val_loss"], e["step"]) for e in b["epochs"]]
    for name in ("best.pt", "last.pt"):
        wa, wb = (load_checkpoint(d / "checkpoints" / name)["model"] for d in (tmp_path / "reference", run))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert not list(tmp_path.rglob(".*.tmp"))  # the kills during writes left some; resuming removed them
