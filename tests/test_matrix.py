"""The combinations users make, generated pairwise: every pair of values of any two factors meets in at least one
tiny run (not the full product: 17 runs instead of 1,152).

Each cell either is refused in one line before any work (SCST with a CNN to train: its captions are sampled from
features without gradient), or finishes with metrics.json equal to captioning-eval on its test_captions.json;
a cell that resumes ends with the weights and test scores of the same run left uninterrupted. Decoding by
ensemble captions the test images with the run's best.pt and the cross-entropy checkpoint of its decoder, which
is refused in one line where the run trained its CNN (an ensemble's members share one encoder). One process runs
in this process (`captioning.training.train`); two run under torchrun (gloo on CPU). The README's "What combines"
lists the factors and the refused combinations.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from captioning import interrupt
from captioning.checkpoint import load_checkpoint
from captioning.cli._conf import CONF_DIR
from captioning.cli.caption import caption_folder
from captioning.data.shapes import make_shapes_dataset
from captioning.io import InputError, read_json
from captioning.metrics.evaluate import evaluate_files
from captioning.training import train

FACTORS = {"decoder": ["rnn", "gru", "lstm", "attention"], "objective": ["cross-entropy", "scst"],
           "encoder": ["cached", "finetune_from_epoch", "trainable"],
           "start": ["fresh", "init_from", "resume mid-epoch", "resume into a new directory"],
           "processes": [1, 2], "precision": ["fp32", "bf16"], "decoding": ["greedy", "beam", "ensemble"]}
REFUSED = {(("objective", "scst"), ("encoder", "finetune_from_epoch")),  # SCST trains the decoder alone
           (("objective", "scst"), ("encoder", "trainable"))}
BIN, DRIVER = Path(sys.executable).parent, Path(__file__).with_name("chaos_driver.py")


def pairwise(factors: dict[str, list], refused: set) -> list[dict]:
    """Rows that cover every allowed pair of values (greedily: each row starts from the first pair not yet
    covered and takes, factor by factor, the value that covers most new pairs), then one row per refused pair."""
    names = list(factors)
    uncovered = {((a, va), (b, vb)) for a, b in itertools.combinations(names, 2)
                 for va in factors[a] for vb in factors[b]} - refused

    def gain(row: dict, name: str, value) -> int:
        if any({(name, value), (m, row[m])} == set(p) for p in refused for m in row):
            return -1
        return sum(((m, row[m]), (name, value)) in uncovered or ((name, value), (m, row[m])) in uncovered for m in row)

    rows = []
    while uncovered:
        (a, va), (b, vb) = min(uncovered, key=lambda p: (names.index(p[0][0]), names.index(p[1][0]), str(p)))
        row = {a: va, b: vb}
        for name in names:
            if name not in row:
                row[name] = max(factors[name], key=lambda v: gain(row, name, v))
        row = {n: row[n] for n in names}
        uncovered -= {((x, row[x]), (y, row[y])) for x, y in itertools.combinations(names, 2)}
        rows.append(row)
    first = {n: v[0] for n, v in factors.items()}
    return rows + [{**first, **dict(pair), "start": "fresh", "processes": 1} for pair in sorted(refused)]


CELLS = pairwise(FACTORS, REFUSED)


def test_every_pair_of_values_meets_in_a_run():
    runs = [c for c in CELLS if not any(set(p) <= set(c.items()) for p in REFUSED)]
    for a, b in itertools.combinations(FACTORS, 2):
        for va, vb in itertools.product(FACTORS[a], FACTORS[b]):
            if (((a, va), (b, vb))) not in REFUSED:
                assert any(c[a] == va and c[b] == vb for c in runs), (a, va, b, vb)
    assert len(runs) < 20


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, n_train=16, n_val=4, n_test=4, seed=0, image_size=32, demo_images=0)
    return root


def overrides(cell: dict, root: Path) -> list[str]:
    decoder = ["decoder=attention", "decoder.attention_dim=8"] if cell["decoder"] == "attention" else \
        [f"decoder.cell={cell['decoder']}"]
    encoder = {"cached": [], "finetune_from_epoch": ["encoder.finetune_from_epoch=2", "optim.encoder_lr=1e-3"],
               "trainable": ["encoder.trainable=true", "optim.encoder_lr=1e-3"]}[cell["encoder"]]
    decode = {"greedy": ["decode=greedy"], "beam": ["decode.beam_size=2"], "ensemble": []}[cell["decoding"]]
    return [f"dataset.root={root}", f"cache_dir={root / 'cache'}", "encoder=small_cnn", "encoder.image_size=32",
            "encoder.num_workers=0", *decoder, "decoder.hidden_dim=16", "decoder.embed_dim=8", *encoder,
            f"trainer.precision={cell['precision']}", "trainer.batch_size=8", "trainer.patience=99",
            "trainer.tensorboard=false", "trainer.progress=false", "optim.scheduler=constant",
            "optim.warmup_steps=0", "decode.max_len=8", *decode]


@pytest.fixture(scope="module")
def xe_checkpoints(shapes, tmp_path_factory) -> dict[str, Path]:
    """One cross-entropy run per decoder: what init_from and SCST start from."""
    out = {}
    for decoder in FACTORS["decoder"]:
        cell = {"decoder": decoder, "encoder": "cached", "precision": "fp32", "decoding": "greedy"}
        run_dir = tmp_path_factory.mktemp(f"xe_{decoder}")
        launch(run_dir, {**cell, "processes": 1}, [*overrides(cell, shapes), "trainer.max_epochs=1"])
        out[decoder] = run_dir / "checkpoints" / "best.pt"
    return out


def launch(run_dir: Path, cell: dict, args: list[str], sigterm_at: int | None = None) -> None:
    """One run of the cell: in this process, or under torchrun; with `sigterm_at`, SIGTERM at that optimizer
    step (the run saves last.pt where it is and stops)."""
    if cell["processes"] == 1:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose("train", overrides=args)
        real = torch.nn.utils.get_total_norm
        if sigterm_at is not None:
            calls = []

            def norm(*a, **k):  # each optimizer step measures the gradient norm once: SIGTERM in step `sigterm_at`
                calls.append(1)
                if len(calls) == sigterm_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                return real(*a, **k)
            torch.nn.utils.get_total_norm = norm
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # resumed runs warn about changed limits; init_from about sizes
                train(OmegaConf.to_container(cfg, resolve=True), run_dir, instantiate(cfg.optim.optimizer))
        except interrupt.Interrupted:
            assert sigterm_at is not None
        finally:
            torch.nn.utils.get_total_norm = real
        return
    point = f"sigterm:{sigterm_at}" if sigterm_at is not None else "never"
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(DRIVER), point, *args,
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(run_dir.parent)})
    if sigterm_at is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        assert "interrupted by SIGTERM at step" in proc.stderr, proc.stdout + proc.stderr


def same_run(a: Path, b: Path) -> None:
    """The weights of last.pt and the test scores of two run directories are identical."""
    wa, wb = (load_checkpoint(d / "checkpoints" / "last.pt")["model"] for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert read_json(a / "metrics.json")["test"] == read_json(b / "metrics.json")["test"]


@pytest.mark.parametrize("cell", CELLS, ids=["-".join(str(v) for v in c.values()).replace(" ", "_") for c in CELLS])
def test_the_combination_runs_or_is_refused_in_one_line(cell, shapes, xe_checkpoints, tmp_path, capsys):
    args = overrides(cell, shapes)
    if cell["objective"] == "scst":
        args += ["+experiment=scst", f"trainer.init_from={xe_checkpoints[cell['decoder']]}", "trainer.batch_size=8"]
    elif cell["start"] == "init_from":
        args += [f"trainer.init_from={xe_checkpoints[cell['decoder']]}"]
    run = tmp_path / "run"
    if any(set(p) <= set(cell.items()) for p in REFUSED):
        with pytest.raises(InputError, match="scst.enabled trains the decoder alone"):
            launch(run, cell, [*args, "trainer.max_epochs=2"])
        assert not (run / "checkpoints").exists()
        return
    if cell["start"] in ("fresh", "init_from"):
        launch(run, cell, [*args, "trainer.max_epochs=2"])
    else:
        whole = tmp_path / "whole"
        launch(whole, cell, [*args, "trainer.max_epochs=2"])
        if cell["start"] == "resume mid-epoch":
            launch(run, cell, [*args, "trainer.max_epochs=2"], sigterm_at=3)
            assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["batch"] > 0  # stopped mid-epoch
            launch(run, cell, [*args, "trainer.max_epochs=2", "trainer.resume=auto"])
        else:
            launch(tmp_path / "first", cell, [*args, "trainer.max_epochs=1"])
            launch(run, cell, [*args, "trainer.max_epochs=2",
                               f"trainer.resume={tmp_path / 'first' / 'checkpoints' / 'last.pt'}"])
        same_run(run, whole)
    metrics = read_json(run / "metrics.json")
    started = cell["objective"] == "scst" or cell["start"] == "init_from"  # its checkpoint scored as epoch 0
    assert [e["epoch"] for e in metrics["epochs"]] == ([0, 1, 2] if started else [1, 2])
    scored = evaluate_files(shapes / "captions_test.json", run / "test_captions.json", metrics=["bleu", "cider"])
    assert all(scored[k] == pytest.approx(metrics["test"][k], abs=1e-12) for k in ("bleu4", "cider"))
    if cell["decoding"] == "ensemble":  # with the cross-entropy run it started from (or beside), on the test images
        members = f"checkpoint=[{run / 'checkpoints/best.pt'},{xe_checkpoints[cell['decoder']]}]"
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose("caption", overrides=[members, f"images={shapes / 'images' / 'test'}",
                                                f"output={tmp_path / 'gallery'}", "progress=false", "num_workers=0",
                                                f"references={shapes / 'captions_test.json'}"])
        if cell["encoder"] != "cached":  # members share one encoder: a CNN trained in one run is not the other's
            with pytest.raises(InputError, match="have different encoders: an ensemble shares one encoder"):
                caption_folder(cfg)
            return
        rows = caption_folder(cfg)
        assert len(rows) == 4 and all("caption" in r and "cider" in r for r in rows)
        assert "4 images have references" in capsys.readouterr().out
