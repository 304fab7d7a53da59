"""Interrupted and resumed runs lose nothing: the resumed run ends exactly where the uninterrupted one does.

Most tests call `captioning.training.train` in this process (the entry point's code below Hydra), so
they can stop a run at an exact step: a SIGTERM sent to this process at a chosen step, or a failure
injected between two checkpoint writes. The CLI's own handling is in test_reliability_cli.py.
"""
from __future__ import annotations

import math
import os
import signal
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import captioning.engine
import captioning.objectives
import captioning.trainer
from captioning import interrupt
from captioning.checkpoint import load_checkpoint
from captioning.cli._conf import CONF_DIR
from captioning.data.shapes import make_shapes_dataset
from captioning.engine import Diverged
from captioning.io import InputError
from captioning.training import train

REAL_SCORE_SPLIT, REAL_BATCH_LOSS = captioning.engine.score_split, captioning.objectives.batch_loss
TINY = ["encoder=small_cnn", "encoder.image_size=32", "encoder.num_workers=0", "decoder.hidden_dim=16",
        "decoder.embed_dim=8", "trainer.batch_size=8", "trainer.tensorboard=false", "trainer.progress=false",
        "trainer.patience=99", "optim.warmup_steps=5",
        "optim.scheduler=constant"]  # the schedule must not depend on max_epochs: runs of 1 and 3 epochs are compared


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, n_train=16, n_val=6, n_test=6, seed=0, image_size=32, demo_images=0)
    return root


def config(shapes: Path, *overrides: str) -> tuple[dict, object]:
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"dataset.root={shapes}", f"cache_dir={shapes / 'cache'}", *TINY,
                                          *overrides])
    return OmegaConf.to_container(cfg, resolve=True), instantiate(cfg.optim.optimizer)


def run(shapes: Path, run_dir: Path, *overrides: str) -> dict:
    cfg, make_optimizer = config(shapes, *overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resuming with changed limits warns; tested on its own below
        return train(cfg, run_dir, make_optimizer)


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def scripted_validation(monkeypatch, scores: dict[int, float]) -> None:
    """Validation BLEU-4 per epoch as given (the real captions and loss otherwise): which epoch is best is then
    known in advance, even for a tiny model whose BLEU-4 is 0 every epoch."""
    real, epochs = REAL_SCORE_SPLIT, iter(sorted(scores))

    def score_split(model, split, cfg, device, desc):
        metrics, results = real(model, split, cfg, device, desc)
        if desc == "val":
            metrics["cider"] = metrics["bleu4"] = scores[next(epochs)]
        return metrics, results
    monkeypatch.setattr(captioning.engine, "score_split", score_split)


def test_resume_into_a_new_run_dir_scores_the_best_weights(shapes, tmp_path, monkeypatch):
    """The README's resume example writes to a new run directory: best.pt must come along."""
    scripted_validation(monkeypatch, {1: 0.5, 2: 0.2, 3: 0.1})
    full = run(shapes, tmp_path / "full", "trainer.max_epochs=3")
    scripted_validation(monkeypatch, {1: 0.5})
    run(shapes, tmp_path / "part", "trainer.max_epochs=1")
    scripted_validation(monkeypatch, {2: 0.2, 3: 0.1})
    resumed = run(shapes, tmp_path / "resumed", "trainer.max_epochs=3",
                  f"trainer.resume={tmp_path / 'part' / 'checkpoints' / 'last.pt'}")
    assert (tmp_path / "resumed" / "checkpoints" / "best.pt").is_file()
    assert same_weights(tmp_path / "resumed" / "checkpoints" / "best.pt", tmp_path / "full" / "checkpoints" / "best.pt")
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"] == 1
    assert resumed["best_val_score"] == 0.5


def test_a_run_from_a_checkpoint_keeps_it_until_an_epoch_beats_it(shapes, tmp_path, monkeypatch):
    """trainer.init_from: the starting checkpoint is scored as epoch 0. Where no epoch beats it on validation (an SCST
    stage that overfits its training images, say), best.pt keeps its weights, the test split is scored on them and
    patience counts from it; an epoch that beats it replaces it."""
    xe = run(shapes, tmp_path / "xe", "trainer.max_epochs=1")
    start = tmp_path / "xe" / "checkpoints" / "last.pt"
    scripted_validation(monkeypatch, {0: 0.5, 1: 0.4, 2: 0.3, 3: 0.45, 4: 0.9})
    kept = run(shapes, tmp_path / "kept", "trainer.max_epochs=5", "trainer.patience=3", f"trainer.init_from={start}")
    assert [e["epoch"] for e in kept["epochs"]] == [0, 1, 2, 3]  # 3 epochs without beating epoch 0: stopped
    assert kept["best_epoch"] == 0 and kept["best_val_score"] == 0.5 and "train_loss" not in kept["epochs"][0]
    assert same_weights(tmp_path / "kept" / "checkpoints" / "best.pt", start) and kept["test"] == xe["test"]
    scripted_validation(monkeypatch, {0: 0.5, 1: 0.6, 2: 0.1})
    beaten = run(shapes, tmp_path / "beaten", "trainer.max_epochs=2", f"trainer.init_from={start}")
    assert beaten["best_epoch"] == 1 and not same_weights(tmp_path / "beaten" / "checkpoints" / "best.pt", start)


def test_a_signal_while_the_starting_checkpoint_is_scored_scores_it_again_on_resume(shapes, tmp_path, monkeypatch):
    """SIGTERM during epoch 0's validation saves last.pt before anything trained; the resumed run scores the
    starting checkpoint again (else best.pt could end below it) and ends as the uninterrupted run."""
    run(shapes, tmp_path / "xe", "trainer.max_epochs=1")
    init = f"trainer.init_from={tmp_path / 'xe' / 'checkpoints' / 'last.pt'}"
    full = run(shapes, tmp_path / "full", "trainer.max_epochs=2", init)
    real, calls = REAL_SCORE_SPLIT, []

    def score_split(model, split, cfg, device, desc):
        calls.append(desc)
        if calls == ["val"]:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model, split, cfg, device, desc)
    monkeypatch.setattr(captioning.engine, "score_split", score_split)
    with pytest.raises(interrupt.Interrupted):
        run(shapes, tmp_path / "run", "trainer.max_epochs=2", init)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]["history"] == []
    monkeypatch.setattr(captioning.engine, "score_split", real)
    resumed = run(shapes, tmp_path / "run", "trainer.max_epochs=2", init, "trainer.resume=auto")
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2] and resumed["test"] == full["test"]
    assert same_weights(tmp_path / "run" / "checkpoints" / "best.pt", tmp_path / "full" / "checkpoints" / "best.pt")


def test_a_kill_between_writing_best_and_last_loses_nothing(shapes, tmp_path, monkeypatch):
    """best.pt is written before last.pt: dying between the two leaves last.pt one epoch behind, and the
    resumed run repeats that epoch identically, so it ends with the uninterrupted run's best weights."""
    scripted_validation(monkeypatch, {1: 0.1, 2: 0.3, 3: 0.2})
    full = run(shapes, tmp_path / "full", "trainer.max_epochs=3")

    class Killed(BaseException):
        pass

    real_save, writes = captioning.trainer.save_run_checkpoint, []

    def save(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        writes.append(path.name)
        if writes == ["best.pt", "last.pt", "best.pt"]:  # epoch 2 improved: its best.pt is on disk, last.pt not yet
            raise Killed
    monkeypatch.setattr(captioning.trainer, "save_run_checkpoint", save)
    scripted_validation(monkeypatch, {1: 0.1, 2: 0.3})
    with pytest.raises(Killed):
        run(shapes, tmp_path / "run", "trainer.max_epochs=3")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["train_state"]
    assert (last["epoch"], best["best_epoch"]) == (2, 2)  # last.pt still before epoch 2; best.pt from epoch 2

    monkeypatch.setattr(captioning.trainer, "save_run_checkpoint", real_save)
    scripted_validation(monkeypatch, {2: 0.3, 3: 0.2})
    resumed = run(shapes, tmp_path / "run", "trainer.max_epochs=3", "trainer.resume=auto")
    assert resumed["best_epoch"] == 2 and resumed["test"] == full["test"]
    assert same_weights(tmp_path / "run" / "checkpoints" / "best.pt", tmp_path / "full" / "checkpoints" / "best.pt")
    assert same_weights(tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "full" / "checkpoints" / "last.pt")


def signal_at_step(monkeypatch, step: int, signum: int = signal.SIGTERM) -> None:
    """Send `signum` to this process when the training loop computes the loss of optimizer step `step`."""
    real, calls = REAL_BATCH_LOSS, []

    def batch_loss(decoder, encoder, batch, *args, **kwargs):
        if decoder.training:
            calls.append(1)
            if len(calls) == step:
                os.kill(os.getpid(), signum)
        return real(decoder, encoder, batch, *args, **kwargs)
    monkeypatch.setattr(captioning.objectives, "batch_loss", batch_loss)


@pytest.mark.parametrize("stop_step", [3, 10, 12])  # mid-epoch 1, mid-epoch 1 of 10 batches' end, in epoch 2
def test_sigterm_saves_mid_epoch_and_the_resumed_run_is_identical(shapes, tmp_path, monkeypatch, stop_step):
    full = run(shapes, tmp_path / "full", "trainer.max_epochs=2", "decoder.output_dropout=0.5", "decoder.embed_dropout=0.5")
    signal_at_step(monkeypatch, stop_step)
    with pytest.raises(interrupt.Interrupted) as stopped:
        run(shapes, tmp_path / "run", "trainer.max_epochs=2", "decoder.output_dropout=0.5", "decoder.embed_dropout=0.5")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]
    assert state["step"] == stop_step and stopped.value.signum == signal.SIGTERM  # the step it was in finished
    assert str(stopped.value.checkpoint).endswith("last.pt") and f"step {stop_step}" in stopped.value.where
    monkeypatch.undo()
    resumed = run(shapes, tmp_path / "run", "trainer.max_epochs=2", "decoder.output_dropout=0.5", "decoder.embed_dropout=0.5", "trainer.resume=auto")
    assert same_weights(tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "full" / "checkpoints" / "last.pt")
    for a, b in zip(full["epochs"], resumed["epochs"], strict=True):
        assert (a["train_loss"], a["val_loss"], a["step"]) == (b["train_loss"], b["val_loss"], b["step"])
    assert resumed["test"] == full["test"]


@pytest.mark.parametrize("stop_step", [10, 13])  # at the end of epoch 1 (before the switch), in epoch 2 (after)
def test_a_run_resumed_across_the_switch_to_fine_tuning_is_identical(shapes, tmp_path, monkeypatch, stop_step):
    """encoder.finetune_from_epoch=2: epoch 1 on cached features, epochs 2 and 3 train the CNN on augmented
    images. Stopped before or after the switch, the resumed run ends with the same weights (the CNN's too)."""
    finetune = ["trainer.max_epochs=3", "encoder.finetune_from_epoch=2", "optim.encoder_lr=1e-3",
                "decoder.output_dropout=0.5"]
    full = run(shapes, tmp_path / "full", *finetune)
    signal_at_step(monkeypatch, stop_step)
    with pytest.raises(interrupt.Interrupted):
        run(shapes, tmp_path / "run", *finetune)
    monkeypatch.undo()
    resumed = run(shapes, tmp_path / "run", *finetune, "trainer.resume=auto")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert same_weights(last, tmp_path / "full" / "checkpoints" / "last.pt")
    run(shapes, tmp_path / "frozen", "trainer.max_epochs=1")  # the same seed: the CNN as it started
    start = weights(tmp_path / "frozen" / "checkpoints" / "last.pt")
    assert any(not torch.equal(v, start[k]) for k, v in weights(last).items() if k.startswith("encoder."))
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in full["epochs"]]
    assert resumed["test"] == full["test"]


def test_sigint_during_validation_resumes_with_validation(shapes, tmp_path, monkeypatch):
    full = run(shapes, tmp_path / "full", "trainer.max_epochs=1")
    real = REAL_SCORE_SPLIT

    def score_split(model, split, cfg, device, desc):
        if desc == "val":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the validation captions are generated
        return real(model, split, cfg, device, desc)
    monkeypatch.setattr(captioning.engine, "score_split", score_split)
    with pytest.raises(interrupt.Interrupted):
        run(shapes, tmp_path / "run", "trainer.max_epochs=1")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]
    assert (state["epoch"], state["batch"], state["history"]) == (1, 10, [])  # trained, not yet validated
    monkeypatch.undo()
    resumed = run(shapes, tmp_path / "run", "trainer.max_epochs=1", "trainer.resume=auto")
    assert resumed["epochs"][0]["train_loss"] == full["epochs"][0]["train_loss"] and resumed["test"] == full["test"]


def poison_step(monkeypatch, step: int) -> None:
    """The loss of training step `step` (1-based, counting every batch) is NaN."""
    real, calls = REAL_BATCH_LOSS, []

    def batch_loss(decoder, *args, **kwargs):
        loss, tokens, terms = real(decoder, *args, **kwargs)
        if decoder.training:
            calls.append(1)
            if len(calls) == step:
                loss = loss * float("nan")
        return loss, tokens, terms
    monkeypatch.setattr(captioning.objectives, "batch_loss", batch_loss)


def test_nan_mid_run_stops_before_overwriting_a_checkpoint(shapes, tmp_path, monkeypatch):
    run(shapes, tmp_path / "good", "trainer.max_epochs=1")
    poison_step(monkeypatch, 13)  # epoch 2, batch 3
    with pytest.raises(Diverged, match=r"non-finite loss nan at step 13 \(epoch 2, batch 3\).*keeps the end of epoch 1"):
        run(shapes, tmp_path / "run", "trainer.max_epochs=2")
    ckpts = tmp_path / "run" / "checkpoints"
    assert same_weights(ckpts / "last.pt", tmp_path / "good" / "checkpoints" / "last.pt")  # epoch 1's, intact
    assert all(torch.isfinite(w).all() for w in weights(ckpts / "best.pt").values() if w.is_floating_point())
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_nan_steps_can_be_skipped_and_counted(shapes, tmp_path, monkeypatch):
    poison_step(monkeypatch, 4)
    metrics = run(shapes, tmp_path / "run", "trainer.max_epochs=2", "trainer.nonfinite=skip")
    assert [e["skipped_steps"] for e in metrics["epochs"]] == [1, 0]
    assert [e["step"] for e in metrics["epochs"]] == [9, 19]  # the skipped batch made no optimizer step
    assert all(math.isfinite(e["train_loss"]) for e in metrics["epochs"])


def test_a_huge_learning_rate_stops_at_once(shapes, tmp_path):
    with pytest.raises(Diverged, match=r"at step \d+ \(epoch 1, batch \d+\); no checkpoint was written"):
        run(shapes, tmp_path / "run", "optim.optimizer.lr=1e38")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_refuses_another_architecture_and_warns_about_changed_settings(shapes, tmp_path):
    run(shapes, tmp_path / "a", "trainer.max_epochs=1")
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    with pytest.raises(InputError, match=rf"cannot resume from {last}: .*decoder.hidden_dim: 16 in the checkpoint, 24 here"):
        run(shapes, tmp_path / "b", f"trainer.resume={last}", "decoder.hidden_dim=24")
    cfg, make_optimizer = config(shapes, f"trainer.resume={last}", "trainer.max_epochs=2", "optim.optimizer.lr=0.01")
    with pytest.warns(UserWarning, match=r"taken from the checkpoint: optim.optimizer.lr=0.002 \(not 0.01\); "
                                         r"taken from this command line: trainer.max_epochs=2 \(was 1\)"):
        train(cfg, tmp_path / "c", make_optimizer)


def test_a_run_of_the_per_tensor_adam_resumes_with_it_under_the_fused_default(shapes, tmp_path):
    """Runs started before `optim.optimizer.fused` became the default continue as they began: the optimizer's
    settings come from the checkpoint, so the resumed run is the uninterrupted one, weight for weight."""
    run(shapes, tmp_path / "full", "trainer.max_epochs=2", "optim.optimizer.fused=false")
    run(shapes, tmp_path / "part", "trainer.max_epochs=1", "optim.optimizer.fused=false")
    last = tmp_path / "part" / "checkpoints" / "last.pt"
    cfg, make_optimizer = config(shapes, f"trainer.resume={last}", "trainer.max_epochs=2")
    with pytest.warns(UserWarning, match=r"taken from the checkpoint: optim.optimizer.fused=False \(not None\)"):
        train(cfg, tmp_path / "part", make_optimizer)
    assert same_weights(tmp_path / "full" / "checkpoints" / "last.pt", last)
    run(shapes, tmp_path / "fused", "trainer.max_epochs=2")  # the check can fail: the fused update rounds otherwise
    assert not same_weights(tmp_path / "full" / "checkpoints" / "last.pt", tmp_path / "fused" / "checkpoints" / "last.pt")


def test_resuming_a_finished_run_scores_it_again(shapes, tmp_path, capsys):
    first = run(shapes, tmp_path / "a", "trainer.max_epochs=1")
    again = run(shapes, tmp_path / "a", "trainer.max_epochs=1", "trainer.resume=auto")
    assert again["test"] == first["test"] and "nothing left to train" in capsys.readouterr().out


def test_a_finished_fine_tuning_run_resumed_scores_through_its_trained_cnn(shapes, tmp_path):
    """Nothing left to train: the test splits are scored again through the fine-tuned CNN, not on the cache."""
    finetune = ["trainer.max_epochs=2", "encoder.finetune_from_epoch=2", "optim.encoder_lr=1e-2"]
    full = run(shapes, tmp_path / "run", *finetune)
    again = run(shapes, tmp_path / "run", *finetune, "trainer.resume=auto")
    assert again["test"] == full["test"] and again["test_shuffled_images"] == full["test_shuffled_images"]


def test_a_frozen_run_resumed_can_start_fine_tuning(shapes, tmp_path):
    """neuraltalk2's way: train on the cache, then continue the same run with the CNN learning too (the optimizer
    always holds the CNN's group, so the frozen run's checkpoint fits)."""
    run(shapes, tmp_path / "run", "trainer.max_epochs=1")
    before = weights(tmp_path / "run" / "checkpoints" / "last.pt")
    resumed = run(shapes, tmp_path / "run", "trainer.max_epochs=2", "encoder.finetune_from_epoch=2",
                  "trainer.resume=auto")  # optim.* comes from the checkpoint: the CNN learns at the decoder's lr
    assert "encoder_lr" not in resumed["epochs"][0] and resumed["epochs"][1]["encoder_lr"] == resumed["epochs"][1]["lr"]
    after = weights(tmp_path / "run" / "checkpoints" / "last.pt")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))


def test_a_checkpoint_whose_optimizer_does_not_fit_is_one_clear_error(shapes, tmp_path):
    run(shapes, tmp_path / "run", "trainer.max_epochs=1")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    optimizer = ckpt["train_state"]["optimizer"]
    optimizer["param_groups"] = optimizer["param_groups"][:1]  # as written before the CNN had its own group
    torch.save(ckpt, last)
    with pytest.raises(InputError, match=r"cannot resume .*last.pt: its optimizer state does not fit this run's .*"
                                         r"trainer.init_from="):
        run(shapes, tmp_path / "run", "trainer.max_epochs=2", "trainer.resume=auto")


def test_features_of_a_fine_tuned_cnn_are_cached_apart(shapes, tmp_path):
    """trainer.init_from a run that trained its CNN (SCST after fine-tuning, say): the frozen run's cache would
    hold the pretrained CNN's features, so this run extracts and keys its own."""
    cache = shapes / "cache"
    run(shapes, tmp_path / "frozen", "trainer.max_epochs=1")
    pretrained = set(cache.glob("*.pt"))
    run(shapes, tmp_path / "tuned", "trainer.max_epochs=2", "encoder.finetune_from_epoch=2", "optim.encoder_lr=1e-2")
    assert set(cache.glob("*.pt")) == pretrained  # epoch 1 of the fine-tuning run read the frozen run's features
    run(shapes, tmp_path / "next", "trainer.max_epochs=1", f"trainer.init_from={tmp_path / 'tuned/checkpoints/last.pt'}")
    new = set(cache.glob("*.pt")) - pretrained
    assert len(new) == 3 and all('"trained in a run"' in torch.load(p, weights_only=True)["encoder"] for p in new)


def test_a_run_started_from_a_fine_tuned_cnn_resumes_on_that_cnns_features(shapes, tmp_path):
    """Resumed (with or without trainer.init_from on the command line), the run reads the cache of the CNN it
    started from, and rebuilds exactly those features when the cache is gone, never the pretrained CNN's."""
    cache = shapes / "cache"
    run(shapes, tmp_path / "tuned", "trainer.max_epochs=2", "encoder.finetune_from_epoch=2", "optim.encoder_lr=1e-2")
    init = f"trainer.init_from={tmp_path / 'tuned/checkpoints/last.pt'}"
    before = set(cache.glob("*.pt"))
    run(shapes, tmp_path / "next", "trainer.max_epochs=1", init)
    tuned = set(cache.glob("*.pt")) - before
    saved = {p: torch.load(p, weights_only=True) for p in tuned}
    run(shapes, tmp_path / "next", "trainer.max_epochs=2", init, "trainer.resume=auto")
    assert set(cache.glob("*.pt")) - before == tuned
    for p in tuned:
        p.unlink()
    resumed = run(shapes, tmp_path / "moved", "trainer.max_epochs=3",
                  f"trainer.resume={tmp_path / 'next/checkpoints/last.pt'}")  # init_from taken from the checkpoint
    assert set(cache.glob("*.pt")) - before == tuned
    assert all(torch.equal(torch.load(p, weights_only=True)["features"], saved[p]["features"]) for p in tuned)
    assert load_checkpoint(tmp_path / "moved/checkpoints/last.pt")["run_config"]["trainer"]["init_from"] == \
        init.split("=", 1)[1] and [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2, 3]


def test_sigterm_during_the_test_scoring_names_the_finished_run(shapes, tmp_path, monkeypatch):
    """Not "before training started: nothing to resume": training is over and a resume scores the tests again."""
    real = REAL_SCORE_SPLIT

    def score_split(model, split, cfg, device, desc):
        if desc == "test":
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model, split, cfg, device, desc)
    monkeypatch.setattr(captioning.engine, "score_split", score_split)
    with pytest.raises(interrupt.Interrupted) as stopped:
        run(shapes, tmp_path / "run", "trainer.max_epochs=1")
    assert stopped.value.checkpoint == tmp_path / "run" / "checkpoints" / "last.pt"
    assert stopped.value.where == "the test scoring (training had finished)"
    monkeypatch.undo()
    again = run(shapes, tmp_path / "run", "trainer.max_epochs=1", "trainer.resume=auto")
    assert len(again["epochs"]) == 1 and "test" in again
