"""Data-parallel training: 2 CPU processes (torchrun, gloo) vs one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioning import distributed
from captioning.baselines import FallbackIndex
from captioning.checkpoint import load_checkpoint
from captioning.data.shapes import make_shapes_dataset

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    # 24 train images x 5 captions = 120 = 7.5 global batches of 16: the last one is partial.
    # 9 val / 7 test images: the ranks' evaluation shards have different sizes (5 + 4, 4 + 3).
    make_shapes_dataset(root, n_train=24, n_val=9, n_test=7, seed=0, image_size=32, demo_images=0)
    return root


def train(run_dir: Path, data: Path, launcher: list[str], *overrides: str) -> subprocess.CompletedProcess:
    args = [*launcher, *overrides, f"dataset.root={data}", "encoder=small_cnn", f"cache_dir={run_dir / 'cache'}",
            "decoder.hidden_dim=32", "decoder.embed_dim=16", "decoder.embed_dropout=0.0", "decoder.output_dropout=0.0",
            "trainer.batch_size=16", "trainer.max_epochs=2", "trainer.patience=99", "trainer.progress=false",
            "trainer.tensorboard=false", "trainer.precision=fp32", "optim.optimizer.lr=0.01", "optim.scheduler=constant",
            "optim.warmup_steps=0",
            "decode.max_len=8", f"hydra.run.dir={run_dir}"]
    # TMPDIR: torchrun's own torchelastic_* folders go with the test's tmp_path instead of staying in /tmp.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(run_dir.parent)}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


# Adam's first steps move a weight by about lr whatever its gradient's size, so a gradient of ~1e-9 that the
# all-reduce sums in another order can move a CNN weight differently: the CNN learns at 1e-4, not 1e-2.
@pytest.mark.parametrize("overrides", [[], ["encoder.finetune_from_epoch=2", "encoder.finetune_blocks=2",
                                            "optim.encoder_lr=1e-4"]], ids=["frozen", "fine-tuned from epoch 2"])
def test_two_processes_match_one(tmp_path, tiny_shapes, overrides):
    """Frozen: every epoch on cached features. Fine-tuned: epoch 2 trains the CNN's last two blocks on augmented
    images (the encoder joins DDP at the switch) and the splits are then scored through the trained CNN."""
    one = tmp_path / "one"
    train(one, tiny_shapes, [str(BIN / "captioning-train")], *overrides)
    two = tmp_path / "two"
    proc = train(two, tiny_shapes, [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
                                    "--no-python", str(BIN / "captioning-train")], *overrides)

    # rank 0 alone logs, and builds the feature cache (one file per split) that rank 1 reads
    assert proc.stdout.count("epoch   2") == proc.stdout.count("run directory:") == 1, proc.stdout
    assert len(list((two / "cache").glob("*.pt"))) == 3

    a, b = (load_checkpoint(r / "checkpoints/last.pt") for r in (one, two))
    assert a["train_state"]["scheduler"]["last_epoch"] == b["train_state"]["scheduler"]["last_epoch"] == 16
    for name, wa in a["model"].items():
        assert torch.allclose(wa, b["model"][name], rtol=0, atol=1e-5), name

    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert min(e["val_bleu3"] for e in ma["epochs"]) > 0.1  # it learnt enough for BLEU to tell runs apart
    for ea, eb in zip(ma["epochs"], mb["epochs"], strict=True):
        assert all(eb[f"val_bleu{n}"] == ea[f"val_bleu{n}"] for n in range(1, 5))
        assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=1e-5)
        assert eb["val_loss"] == pytest.approx(ea["val_loss"], rel=1e-5)
    assert mb["test"] == pytest.approx(ma["test"], rel=1e-5)
    # the retrieval fallback (a row, and retrieval.pt written by rank 0) as the single process's; none where the CNN
    # trained (no cached features of that CNN)
    assert ("test_fallback" in ma) == ("test_fallback" in mb) == (two / "retrieval.pt").is_file() == (not overrides)
    if not overrides:
        assert mb["test_fallback"] == pytest.approx(ma["test_fallback"], rel=1e-5)
        ia, ib = (FallbackIndex.load(r / "retrieval.pt") for r in (one, two))
        assert torch.equal(ia.features, ib.features) and (ia.captions, ia.threshold) == (ib.captions, ib.threshold)
    # every test image captioned exactly once, the same caption as the single process wrote
    ca, cb = (json.loads((r / "test_captions.json").read_text()) for r in (one, two))
    assert len(cb) == 7 and cb == ca


@pytest.mark.slow
def test_scst_under_torchrun(tmp_path, tiny_shapes):
    """SCST's stage runs data-parallel too: each rank samples and rewards its own images, the logged rewards
    are all-reduced, the test captions gathered; with the mixed objective, whose samples and references share one
    DDP forward, on the half of the training images the cross-entropy stage left to it (scst.holdout; plain SCST
    under torchrun: test_matrix.py)."""
    train(tmp_path / "xe", tiny_shapes, [str(BIN / "captioning-train")], "scst.holdout=0.5")
    scst = tmp_path / "scst"
    proc = train(scst, tiny_shapes, [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python",
                                     str(BIN / "captioning-train"), "+experiment=scst", "scst.samples=2",
                                     "scst.xe_weight=0.5", "scst.holdout=0.5",
                                     f"trainer.init_from={tmp_path / 'xe' / 'checkpoints' / 'best.pt'}"])
    assert proc.stdout.count("reward") == 2  # rank 0 logs both epochs, with the mean reward of both ranks
    metrics = json.loads((scst / "metrics.json").read_text())
    start, *epochs = metrics["epochs"]  # the checkpoint it started from, scored as epoch 0, then its two epochs
    assert start["epoch"] == 0 and "val_cider" in start and metrics["best_epoch"] in (0, 1, 2)
    assert all(e["train_reward"] >= 0 and e["train_xe"] > 0 for e in epochs)
    assert [e["step"] for e in epochs] == [1, 2]  # 12 held-out images of 24, global batch 16: one step an epoch
    assert len(json.loads((scst / "test_captions.json").read_text())) == 7


def test_helpers_without_a_process_group():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(5) == [0, 1, 2, 3, 4]
    assert distributed.gather_dict({3: "a", 1: "b"}) == {3: "a", 1: "b"}
    assert distributed.any_rank(True, torch.device("cpu")) and not distributed.any_rank(False, torch.device("cpu"))
    x = torch.tensor([1.5, 2.0])
    assert distributed.all_reduce_sum(x).tolist() == [1.5, 2.0]


def test_slurm_launcher_config_composes():
    """conf/hydra/launcher/slurm.yaml fits hydra-submitit-launcher's schema (nothing is submitted)."""
    proc = subprocess.run([str(BIN / "captioning-train"), "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                           "--cfg", "hydra", "--package", "hydra.launcher"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "SlurmLauncher" in proc.stdout and "partition: gpu" in proc.stdout and "tasks_per_node: 1" in proc.stdout
