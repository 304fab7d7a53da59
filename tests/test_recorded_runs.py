"""Recorded runs: a set of tiny fixed-seed runs, one per decoder, objective, start mode and decoding method, whose
captions and scores were written to tests/data/recorded_runs.json.gz by the code before a redesign; a change meant
to keep behaviour must reproduce them (captions exactly, scores to 1e-6, losses to 2e-4 relative: fp32 on one
thread, but matrix and convolution kernels differ a little between CPUs: recorded on one with AVX512, the runs
reproduced every caption and score on an AVX2-only CPU, with losses within 8e-5 relative, the largest those of
the run whose CNN is fine-tuned in its last epochs). That run is the one exception: on an AMD EPYC of the Zen 4 class
(oneDNN off or Adam's per-tensor update: the same) its validation loss differs from the recording CPU's by 5e-6
relative after the first fine-tuning epoch, 2e-4 after the second and 1e-3 after the third, where a caption flips;
so after its first fine-tuning epoch only its losses are compared, to 5e-3 relative.

To record them again after a change that means to alter behaviour: `python tests/test_recorded_runs.py`.
"""
from __future__ import annotations

import gzip
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from captioning.cli._conf import CONF_DIR
from captioning.data.shapes import make_shapes_dataset
from captioning.io import read_json
from captioning.training import train

RECORD = Path(__file__).parent / "data" / "recorded_runs.json.gz"
TINY = ["encoder=small_cnn", "encoder.image_size=32", "encoder.num_workers=0", "decoder.hidden_dim=32",
        "decoder.embed_dim=16", "trainer.precision=fp32", "trainer.threads=1", "trainer.batch_size=16",
        "trainer.patience=99", "trainer.tensorboard=false", "trainer.progress=false", "trainer.max_epochs=8",
        "optim.scheduler=constant", "optim.warmup_steps=0", "optim.optimizer.lr=0.01", "decode.max_len=8"]
XE = "xe_lstm"  # the run the others start from
FINETUNE_FROM = 6  # finetune_from_epoch's switch: the epochs after this one amplify the CPU's kernel differences
# name -> (the run it starts from, or None; its overrides). In this order: a start names an earlier run.
RUNS: dict[str, tuple[str | None, list[str]]] = {
    "xe_lstm": (None, ["decode=greedy"]),
    "xe_rnn_beam": (None, ["decoder.cell=rnn", "decode.beam_size=2"]),
    "xe_gru_sampled": (None, ["decoder.cell=gru", "decode=sample", "decode.top_k=3",
                              "trainer.scheduled_sampling.start_epoch=1", "trainer.label_smoothing=0.1"]),
    "xe_attention_beam": (None, ["decoder=attention", "decoder.attention_dim=8", "decode.beam_size=2",
                                 "decode.length_penalty=wu", "decode.block_ngram_repeat=2"]),
    "xe_lstm_accumulate": (None, ["decode=greedy", "trainer.batch_size=8", "trainer.accumulate=2",
                                  "trainer.grad_clip=0.5", "optim.scheduler=cosine", "optim.warmup_steps=4"]),
    "xe_lstm_feature_dropout": (None, ["decode=greedy", "decoder.feature_dropout=0.2"]),
    "finetune_from_epoch": (None, ["decode=greedy", f"encoder.finetune_from_epoch={FINETUNE_FROM}",
                                   "optim.encoder_lr=1e-3"]),
    "trainable_cnn": (None, ["decode=greedy", "encoder.trainable=true", "optim.encoder_lr=1e-3",
                              "dataset.augment.hflip=true"]),
    "init_from": (XE, ["decode=greedy", "trainer.max_epochs=1"]),
    "resume": (XE, ["decode=greedy", "trainer.max_epochs=10"]),
    "scst_greedy": (XE, ["+experiment=scst", "scst.xe_weight=0", "trainer.max_epochs=2", "optim.optimizer.lr=1e-3", "scst.baseline=greedy", "decode=greedy"]),
    "scst_mean_top_k": (XE, ["+experiment=scst", "scst.xe_weight=0", "trainer.max_epochs=2", "optim.optimizer.lr=1e-3", "scst.baseline=mean", "scst.top_k=3",
                                "decode.beam_size=2"]),
    "scst_attention": ("xe_attention_beam", ["decoder=attention", "+experiment=scst", "scst.xe_weight=0", "trainer.max_epochs=2", "optim.optimizer.lr=1e-3",
                                                   "decode=greedy"]),
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, n_train=64, n_val=8, n_test=8, seed=0, image_size=32, demo_images=0)
    return root


def run(name: str, root: Path, runs_dir: Path) -> dict:
    """One recorded run: its test captions, test scores (the model, the control, the retrieval baselines) and
    per-epoch losses and validation scores."""
    start, args = RUNS[name]
    if start is not None:
        how = "trainer.resume" if name == "resume" else "trainer.init_from"
        args = [*args, f"{how}={runs_dir / start / 'checkpoints' / 'last.pt'}"]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"dataset.root={root}", f"cache_dir={root / 'cache'}", *TINY, *args])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = train(OmegaConf.to_container(cfg, resolve=True), runs_dir / name, instantiate(cfg.optim.optimizer))
    captions = read_json(runs_dir / name / "test_captions.json")
    numbers = {k: v for k, v in metrics.items() if k not in ("epochs", "threads", "train_seconds")}
    epochs = [{k: v for k, v in row.items() if k not in ("tokens_per_s", "train_seconds")}
              for row in metrics["epochs"]]
    return {"captions": captions, "metrics": numbers, "epochs": epochs}


def record_all(root: Path, runs_dir: Path) -> dict:
    torch.set_num_threads(1)
    return {name: run(name, root, runs_dir) for name in RUNS}


def assert_same(now, then, where: str = "") -> None:
    """Strings and integers equal; scores (in [0, 10]) to 1e-6; losses and other floats to 2e-4 relative."""
    if isinstance(then, dict):
        assert now.keys() == then.keys(), where
        for k in then:
            assert_same(now[k], then[k], f"{where}.{k}")
    elif isinstance(then, list):
        assert len(now) == len(then), where
        for i, (a, b) in enumerate(zip(now, then)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(then, float):
        scored = any(m in where for m in ("bleu", "cider", "best_val_score"))
        assert now == pytest.approx(then, abs=1e-6 if scored else 1e-9, rel=0 if scored else 2e-4), where
    else:
        assert now == then, where


def assert_close_losses(now: dict, then: dict, where: str) -> None:
    """The fine-tuned run: exactly up to its first fine-tuning epoch, then every epoch's losses and the test loss
    to 5e-3 relative."""
    assert len(now["epochs"]) == len(then["epochs"]), where
    for i, (a, b) in enumerate(zip(now["epochs"], then["epochs"])):
        if a["epoch"] <= FINETUNE_FROM:
            assert_same(a, b, f"{where}.epochs[{i}]")
            continue
        for k in ("train_loss", "val_loss"):
            assert a[k] == pytest.approx(b[k], rel=5e-3), f"{where}.epochs[{i}].{k}"
    assert now["metrics"]["test"]["loss"] == pytest.approx(then["metrics"]["test"]["loss"], rel=5e-3), where
    assert [c["image_id"] for c in now["captions"]] == [c["image_id"] for c in then["captions"]], where


def test_the_recorded_runs_are_reproduced(shapes, tmp_path):
    recorded = json.loads(gzip.decompress(RECORD.read_bytes()))
    assert list(recorded) == list(RUNS)
    now = record_all(shapes, tmp_path)
    for name in RUNS:
        if name == "finetune_from_epoch":
            assert_close_losses(now[name], recorded[name], name)
        else:
            assert_same(now[name], recorded[name], name)


if __name__ == "__main__":  # record them again
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shapes"
        make_shapes_dataset(root, n_train=64, n_val=8, n_test=8, seed=0, image_size=32, demo_images=0)
        runs = record_all(root, Path(tmp) / "runs")
    RECORD.write_bytes(gzip.compress(json.dumps(runs, indent=1, sort_keys=False).encode(), mtime=0))
    print(f"{len(runs)} runs recorded in {RECORD}", file=sys.stderr)
