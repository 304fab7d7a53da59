"""Integration: captioning-train through its Hydra entry point on a tiny generated dataset."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioning.checkpoint import load_checkpoint
from captioning.data.shapes import make_shapes_dataset
from captioning.precision import resolve_precision

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, n_train=48, n_val=12, n_test=12, seed=0, image_size=64)
    return root


def train(run_dir: Path, data: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    args = [str(BIN / "captioning-train"), *(["-m"] if multirun else []),
            f"dataset.root={data}", "encoder=small_cnn", f"cache_dir={data / 'cache'}",
            "decoder.hidden_dim=32", "decoder.embed_dim=16", "decoder.embed_dropout=0.1",
            "trainer.batch_size=16", "trainer.progress=false", "trainer.tensorboard=false",
            "optim.scheduler=constant", "optim.warmup_steps=0", *overrides]
    args.append(f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def split_images(data: Path, split: str) -> list[dict]:
    return json.loads((data / f"captions_{split}.json").read_text())["images"]


def test_run_writes_checkpoints_metrics_and_captions(tmp_path, tiny_shapes):
    run = tmp_path / "run"
    proc = train(run, tiny_shapes, "trainer.max_epochs=2")
    for name in ["checkpoints/best.pt", "checkpoints/last.pt", "metrics.json", "metrics.csv",
                 "test_captions.json", "curves.png", "vocab.json"]:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "loss"}
    assert metrics["test_knn1"]["k"] == 1 and metrics["test_knn10"]["k"] == 10  # the baselines, beside it
    assert all(set(metrics[k]) >= {"bleu4", "cider"} for k in ("test_knn1", "test_knn10", "test_shuffled_images"))
    fallback = metrics["test_fallback"]  # the model's captions, retrieval for the images unlike training
    assert 0 <= fallback["fell_back"] <= fallback["images"] == len(split_images(tiny_shapes, "test"))
    assert f"| test | the model, retrieval for the {fallback['fell_back']} of {fallback['images']} images unlike " \
           f"training | " in proc.stdout
    assert metrics["select_on"] == "cider" and metrics["parameters"] > 0 and metrics["train_seconds"] > 0
    auto = resolve_precision("auto", torch.device("cpu"))[0]  # trainer.precision=auto: what this machine has
    assert metrics["precision"] == auto and f"precision {auto} (auto: this CPU" in proc.stdout
    assert all("val_cider" in e for e in metrics["epochs"])
    assert all(0.0 <= metrics["test"][f"bleu{n}"] <= 1.0 for n in range(1, 5))
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    results = json.loads((run / "test_captions.json").read_text())
    test_ids = {im["id"] for im in json.loads((tiny_shapes / "captions_test.json").read_text())["images"]}
    assert {r["image_id"] for r in results} == test_ids
    assert all(isinstance(r["caption"], str) for r in results)
    assert "BLEU-4" in proc.stdout and str(run) in proc.stdout
    log = (run / "train.log").read_text()  # what the run printed, kept beside its outputs
    assert [line for line in proc.stdout.splitlines() if line.startswith(("precision", "epoch ", "| test |"))] == \
        [line for line in log.splitlines() if line.startswith(("precision", "epoch ", "| test |"))]
    assert len([line for line in log.splitlines() if line.startswith("epoch ")]) == 2 and "best validation" in log
    state = load_checkpoint(run / "checkpoints/last.pt")["train_state"]
    assert (state["epoch"], state["batch"], len(state["history"])) == (3, 0, 2)  # two epochs done, the third next


def test_sweep_makes_one_run_per_value(tmp_path, tiny_shapes):
    sweep = tmp_path / "sweep"
    train(sweep, tiny_shapes, "trainer.max_epochs=1", "decoder.cell=rnn,lstm", multirun=True)
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 2
    cells = {load_checkpoint(r / "checkpoints/last.pt")["model_config"]["decoder"]["cell"] for r in runs}
    assert cells == {"rnn", "lstm"}


def test_a_sweep_value_that_cannot_work_stops_the_sweep_before_its_first_job(tmp_path, tiny_shapes):
    sweep = tmp_path / "sweep"
    args = [str(BIN / "captioning-train"), "-m", f"dataset.root={tiny_shapes}", "encoder=small_cnn",
            "trainer.max_epochs=1", "decoder.cell=rnn,lstm,transfomer", "+decode.beams=1,2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: 6 of the sweep's 6 jobs cannot run, so none was started: job 0 (decoder.cell=rnn "
                           "+decode.beams=1): decode.beams is not an option of decode"), line
    assert "job 5 (decoder.cell=transfomer +decode.beams=2): decode.beams" in line
    assert not sweep.exists()  # no job started
    half = subprocess.run(args[:5] + ["decoder.cell=rnn,lstm", "decoder.hidden_dim=0,16"] + args[-1:],
                          capture_output=True, text=True, timeout=120)
    assert half.returncode == 1 and "2 of the sweep's 4 jobs cannot run" in half.stderr, half.stderr
    assert "job 0 (decoder.cell=rnn decoder.hidden_dim=0)" in half.stderr and "hidden_dim=16)" not in half.stderr
    assert not sweep.exists()


def test_missing_annotations_is_a_clear_error(tmp_path):
    args = [str(BIN / "captioning-train"), f"dataset.root={tmp_path / 'nowhere'}", "encoder=small_cnn",
            f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "captions_train.json" in proc.stderr and "Traceback" not in proc.stderr


def test_accumulation_and_step_decay_through_the_cli(tmp_path, tiny_shapes):
    """48 images x 5 captions in batches of 16: 15 batches, 8 optimizer steps an epoch with accumulate=2; the
    step schedule halves the learning rate after every epoch; scheduled sampling starts in epoch 2."""
    run = tmp_path / "run"
    train(run, tiny_shapes, "trainer.max_epochs=3", "trainer.accumulate=2", "optim.scheduler=step",
          "optim.decay_every=1", "optim.decay_rate=0.5", "trainer.patience=9",
          "trainer.scheduled_sampling.start_epoch=2", "trainer.scheduled_sampling.increase_every=1")
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [e["step"] for e in epochs] == [8, 16, 24]
    assert [e["sampling_prob"] for e in epochs] == pytest.approx([0.0, 0.05, 0.1])
    assert [e["lr"] for e in epochs] == pytest.approx([1e-3, 5e-4, 2.5e-4])  # lr 2e-3 (conf/optim/adam.yaml)
    bad = subprocess.run([str(BIN / "captioning-train"), f"dataset.root={tiny_shapes}", "optim.scheduler=linear",
                          "optim.decay_rate=2", f"hydra.run.dir={tmp_path / 'bad'}"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert ("optim.scheduler must be one of cosine, constant, step, plateau, got 'linear'; "
            "optim.decay_rate must be in (0, 1], got 2") in bad.stderr


def test_plateau_schedule_follows_the_validation_scores_through_the_cli(tmp_path, tiny_shapes):
    """Every epoch without a better validation CIDEr-D halves the learning rate from the next step on."""
    run = tmp_path / "run"
    train(run, tiny_shapes, "trainer.max_epochs=4", "optim.scheduler=plateau", "optim.plateau_patience=1",
          "optim.decay_rate=0.5", "trainer.patience=9")
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    best, factor, expected = -1.0, 1.0, []
    for e in epochs:
        if e["val_cider"] > best:
            best = e["val_cider"]
        else:
            factor /= 2
        expected.append(2e-3 * factor)  # lr 2e-3 (conf/optim/adam.yaml)
    assert [e["lr"] for e in epochs] == pytest.approx(expected)


def test_fine_tuning_from_epoch_2_trains_the_last_blocks_on_the_frozen_runs_cache(tmp_path, tiny_shapes):
    """Epoch 1 trains the decoder on the cache a frozen run made (no new cache file); from epoch 2 the last
    block of the CNN trains too, at optim.encoder_lr, and its batch-norm statistics stay as they were."""
    frozen, tuned = tmp_path / "frozen", tmp_path / "tuned"
    train(frozen, tiny_shapes, "trainer.max_epochs=1")
    cache = sorted((tiny_shapes / "cache").iterdir())
    proc = train(tuned, tiny_shapes, "trainer.max_epochs=2", "encoder.finetune_from_epoch=2",
                 "encoder.finetune_blocks=1", "optim.encoder_lr=1e-4", "trainer.patience=9")
    assert sorted((tiny_shapes / "cache").iterdir()) == cache
    assert "epoch 2: fine-tuning the CNN from now on (its last 1 blocks)" in proc.stdout
    epochs = json.loads((tuned / "metrics.json").read_text())["epochs"]
    assert "encoder_lr" not in epochs[0] and epochs[1]["encoder_lr"] == pytest.approx(1e-4)
    start = load_checkpoint(frozen / "checkpoints/last.pt")["model"]  # the same seed: the same initial CNN
    end = load_checkpoint(tuned / "checkpoints/last.pt")["model"]
    changed = {k for k in start if k.startswith("encoder.") and not torch.equal(start[k], end[k])}
    assert changed == {"encoder.trunk.body.9.weight", "encoder.trunk.body.9.bias", "encoder.trunk.body.10.weight",
                       "encoder.trunk.body.10.bias"}  # the last conv and its batch norm's scale and shift
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"bleu4", "cider"} and metrics["test_knn1"]["k"] == 1


@pytest.mark.parametrize("overrides, message", [
    (["encoder.finetune_from_epoch=2", "encoder.finetune_blocks=9"],
     "encoder.finetune_blocks must be between 1 and 4 (the blocks of small_cnn), got 9"),
    (["encoder.finetune_blocks=2"], "encoder.finetune_blocks=2 needs a trained CNN"),
    (["dataset.augment.crop_scale=[0.5,2]"], "dataset.augment.crop_scale must be [low, high]"),
])
def test_fine_tuning_options_that_cannot_work_are_one_line(tmp_path, tiny_shapes, overrides, message):
    proc = subprocess.run([str(BIN / "captioning-train"), f"dataset.root={tiny_shapes}", "encoder=small_cnn",
                           *overrides, f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_threads_and_precision_as_asked(tmp_path, tiny_shapes):
    run = tmp_path / "run"
    proc = train(run, tiny_shapes, "trainer.max_epochs=1", "trainer.threads=1", "trainer.precision=fp32")
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["threads"], metrics["precision"]) == (1, "fp32")
    assert "precision fp32 (as asked); 1 CPU threads (as asked)" in proc.stdout
