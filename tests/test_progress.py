"""Progress fit for log files: plain lines when stderr is not a terminal, bars when asked for."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from captioning.data.shapes import make_shapes_dataset
from captioning.progress import LineProgress, progress

BIN = Path(sys.executable).parent


def test_line_progress_prints_a_line_per_interval_and_one_at_the_end(monkeypatch):
    clock = iter(range(0, 1000, 10))  # every call of time.monotonic advances 10 s
    monkeypatch.setattr("captioning.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = LineProgress(range(6), desc="epoch 1", unit="batch", interval=25, file=out)
    for _ in bar:
        bar.set_postfix(loss="1.234")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "%|" not in out.getvalue()
    assert 2 <= len(lines) < 6 and lines[-1].startswith("epoch 1: 6/6 batch (100%)") and "loss=1.234" in lines[-1]


def test_modes():
    assert isinstance(progress(range(3), mode="auto"), LineProgress)  # pytest captures stderr: not a terminal
    assert not isinstance(progress(range(3), mode=True), LineProgress)  # forced bar
    assert list(progress(range(3), mode=False)) == [0, 1, 2]
    with pytest.raises(ValueError, match="progress must be"):
        progress(range(3), mode="sometimes")


@pytest.mark.parametrize("mode, bar_expected", [("auto", False), ("true", True)])
def test_training_log_in_a_file_has_lines_not_bars(tmp_path, mode, bar_expected):
    make_shapes_dataset(tmp_path / "shapes", n_train=24, n_val=6, n_test=6, image_size=32, demo_images=0)
    log = tmp_path / "train.log"
    with log.open("w") as f:  # stderr is a file, as under SLURM or `2> train.log`
        proc = subprocess.run([str(BIN / "captioning-train"), f"dataset.root={tmp_path / 'shapes'}", "encoder=small_cnn",
                               "encoder.image_size=32", "encoder.num_workers=0", "decoder.hidden_dim=16",
                               "decoder.embed_dim=8", "trainer.batch_size=8", "trainer.max_epochs=1",
                               "trainer.tensorboard=false", f"trainer.progress={mode}", f"cache_dir={tmp_path / 'c'}",
                               f"hydra.run.dir={tmp_path / 'run'}"], stdout=subprocess.PIPE, stderr=f, text=True,
                              timeout=300)
    assert proc.returncode == 0
    text = log.read_text()
    assert ("%|" in text) == bar_expected  # tqdm's bar
    if not bar_expected:
        assert "epoch 1: 15/15 batch (100%)" in text and "features captions_train.json: 24/24 img (100%)" in text


def test_the_run_log_keeps_lines_and_each_bar_as_last_drawn(tmp_path):
    """copy_output_to (train.log): every printed line, a bar's final state once, nothing of an erased bar."""
    import sys

    from tqdm import tqdm

    from captioning.cli.common import copy_output_to

    with copy_output_to(tmp_path / "train.log"):
        print("precision fp32")
        for _ in tqdm(range(3), desc="erased", leave=False, mininterval=0, file=sys.stderr):
            pass
        for _ in tqdm(range(3), desc="kept", mininterval=0, file=sys.stderr):
            pass
        print("warning: a", file=sys.stderr)
        sys.stdout.write("epoch 1 ")  # a line written in pieces is one line
        sys.stdout.write("done\nunfinished")
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert lines[0] == "precision fp32" and lines[1].startswith("kept: 100%") and "3/3" in lines[1]
    assert lines[2:] == ["warning: a", "epoch 1 done", "unfinished"]
