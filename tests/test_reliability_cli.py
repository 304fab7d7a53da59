"""Hostile and unlucky runs through the console scripts: each ends in one clear line, a non-zero exit and
nothing lost, or in correct output; never a traceback, a silent wrong result or an empty output folder."""
from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioning.data.shapes import make_shapes_dataset

BIN = Path(sys.executable).parent
TINY = ["encoder=small_cnn", "encoder.image_size=32", "encoder.num_workers=0", "decoder.hidden_dim=16",
        "decoder.embed_dim=8", "trainer.batch_size=8", "trainer.tensorboard=false", "trainer.progress=false",
        "optim.scheduler=constant", "optim.warmup_steps=0"]


@pytest.fixture()
def shapes(tmp_path) -> Path:
    root = tmp_path / "shapes"
    make_shapes_dataset(root, n_train=16, n_val=6, n_test=6, seed=0, image_size=32, demo_images=3)
    return root


def train(cwd: Path, shapes: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "captioning-train"), f"dataset.root={shapes}", f"cache_dir={cwd / 'cache'}",
                           *TINY, *overrides], capture_output=True, text=True, cwd=cwd, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_readme_resume_into_a_new_run_dir_scores_the_best_weights(tmp_path, shapes):
    train(tmp_path, shapes, "trainer.max_epochs=3", "hydra.run.dir=full")
    train(tmp_path, shapes, "trainer.max_epochs=1", "hydra.run.dir=part")
    train(tmp_path, shapes, "trainer.max_epochs=3", "trainer.resume=part/checkpoints/last.pt", "hydra.run.dir=resumed")
    full, resumed = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "resumed"))
    assert (tmp_path / "resumed" / "checkpoints" / "best.pt").is_file()
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]


def test_diverging_run_exits_nonzero_naming_the_step(tmp_path, shapes):
    line = one_error_line(train(tmp_path, shapes, "optim.optimizer.lr=1e38", "hydra.run.dir=run", check=False))
    # the first update sends the weights past float32's range, so the second batch's loss is not finite
    assert "training diverged:" in line and "at step 2 (epoch 1, batch 2)" in line and "no checkpoint was written" in line
    assert line in (tmp_path / "run" / "train.log").read_text().splitlines()  # the run's log says why it ended
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.json").exists()


BAD_OPTIONS = {  # override -> the words of its one-line error (all in one run: they are reported together)
    "trainer.max_epochs=0": "trainer.max_epochs must be at least 1, got 0",
    "trainer.batch_size=-4": "trainer.batch_size must be at least 1, got -4",
    "decoder.cell=transformer": "decoder.cell must be one of rnn, lstm, gru, got 'transformer'",
    "trainer.precision=fp16": "trainer.precision must be one of auto, fp32, bf16, got 'fp16'",
    "optim.optimizer.lr=nan": "optim.optimizer.lr must be a positive number, got nan",
    "decode.beam_size=0": "decode.beam_size must be at least 1, got 0",
    "decode.max_len=0": "decode.max_len must be at least 1, got 0",
    "decode.top_k=0": "decode.top_k must be at least 1 or null, got 0",
    "decode.temperature=0": "decode.temperature must be > 0",
    "trainer.select_on=meteor": "trainer.select_on must be one of cider, bleu4, got 'meteor'",
}


def test_options_that_cannot_work_are_one_line_before_any_work(tmp_path, shapes):
    line = one_error_line(train(tmp_path, shapes, *BAD_OPTIONS, "hydra.run.dir=run", check=False))
    assert all(message in line for message in BAD_OPTIONS.values()), line
    assert not (tmp_path / "cache").exists()  # refused before the feature pass
    if not torch.cuda.is_available():  # on a GPU machine this run is legitimate
        line = one_error_line(train(tmp_path, shapes, "trainer.device=cuda", "hydra.run.dir=run", check=False))
        assert "device=cuda but torch sees no CUDA GPU here" in line


def test_a_wrongly_typed_option_names_the_key_without_a_traceback(tmp_path, shapes):
    proc = train(tmp_path, shapes, "trainer.batch_size=abc", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "trainer.batch_size" in proc.stderr and "'abc'" in proc.stderr


def test_an_added_key_that_is_no_option_is_one_line_with_the_likely_one(tmp_path, shapes):
    """Hydra's message for `trainer.max_epoch=1` suggests `+trainer.max_epoch=1`, which it then lets through."""
    line = one_error_line(train(tmp_path, shapes, "+trainer.max_epoch=1", "+decoder.dropout=0.5", "hydra.run.dir=run",
                                check=False))
    assert "trainer.max_epoch is not an option of trainer (did you mean trainer.max_epochs?)" in line, line
    assert "decoder.dropout is not an option of decoder (did you mean decoder.embed_dropout?)" in line, line
    assert not (tmp_path / "cache").exists()  # refused before the feature pass
    line = one_error_line(train(tmp_path, shapes, "+seeds=3", "+vocab.min_cout=5", "hydra.run.dir=run", check=False))
    assert sorted(line.removeprefix("error: ").split("; ")) == [
        "seeds is not an option of captioning-train (did you mean seed?)",
        "vocab.min_cout is not an option of captioning-train (did you mean vocab.min_count?)"]


def empty_split(shapes: Path, split: str) -> None:
    path = shapes / f"captions_{split}.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "annotations": []}))


@pytest.mark.parametrize("split, use", [("train", "train on"), ("val", "score"), ("test", "score")])
def test_an_empty_split_is_refused_at_startup(tmp_path, shapes, split, use):
    empty_split(shapes, split)
    line = one_error_line(train(tmp_path, shapes, "hydra.run.dir=run", check=False))
    assert f"the {split} split" in line and f"has no captioned images: nothing to {use}" in line
    assert not (tmp_path / "run" / "curves.png").exists() and not (tmp_path / "cache").exists()


def test_every_bad_image_is_named_up_front(tmp_path, shapes):
    (shapes / "images" / "train" / "000003.png").unlink()
    (shapes / "images" / "val" / "000017.png").write_bytes(b"")
    (shapes / "images" / "test" / "000025.png").write_text("not an image")
    Image.new("1", (12000, 12000)).save(shapes / "images" / "train" / "000005.png")  # a decompression bomb
    proc = train(tmp_path, shapes, "hydra.run.dir=run", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    assert "000003.png: file not found" in errors and "000005.png: image too large" in errors
    assert not (tmp_path / "cache").exists()  # the first split's problems stop the run before any extraction

    for name in ("000003", "000005"):
        make_shapes_dataset(tmp_path / "again", n_train=16, n_val=6, n_test=6, seed=0, image_size=32, demo_images=0)
        (shapes / "images" / "train" / f"{name}.png").write_bytes(
            (tmp_path / "again" / "images" / "train" / f"{name}.png").read_bytes())
    line = one_error_line(train(tmp_path, shapes, "hydra.run.dir=run", check=False))
    assert "000017.png: not a readable image file" in line  # the val split, checked before any extraction too


def test_a_truncated_image_is_one_line_naming_it(tmp_path, shapes):
    path = shapes / "images" / "train" / "000004.png"
    path.write_bytes(path.read_bytes()[:-40])  # the header is fine; the pixels are cut short
    for trainable in ("false", "true"):
        line = one_error_line(train(tmp_path, shapes, f"encoder.trainable={trainable}", "hydra.run.dir=run",
                                    check=False))
        assert "000004.png" in line and "Caught" not in line and "worker" not in line


def write_16bit_png(path: Path, value: int) -> None:
    """A 16-bit greyscale PNG (Pillow opens it as mode I;16 or I): black left third, `value` elsewhere."""
    values = np.full((24, 24), value, dtype=np.uint16)
    values[:, :8] = 0
    Image.fromarray(values).save(path)


def test_16_bit_pngs_are_scaled_not_clipped_to_white(tmp_path):
    from captioning.data.datasets import load_image
    from captioning.data.images import open_image

    write_16bit_png(tmp_path / "grey.png", 257 * 128)
    assert Image.open(tmp_path / "grey.png").mode.startswith("I")
    image = np.asarray(open_image(tmp_path / "grey.png"))
    assert image.shape == (24, 24, 3) and image[0, 0].tolist() == [0, 0, 0]
    assert image[0, 20].tolist() == [128, 128, 128]  # 32896 / 257, not min(32896, 255) = white
    assert load_image(tmp_path / "grey.png")[:, 0, 20].tolist() == pytest.approx([128 / 255] * 3)
    # the folder tool (and so feature extraction) reads it as its 8-bit twin
    from captioning.data.folder import ImageFolderDataset
    from captioning.models.encoder import ImageTransform

    Image.fromarray(image).save(tmp_path / "eight.png")
    items = ImageFolderDataset([tmp_path / "grey.png", tmp_path / "eight.png"], ImageTransform(16))
    assert torch.equal(items[0][1], items[1][1])


def test_names_that_are_not_utf8_are_written_losslessly(tmp_path, shapes):
    train(tmp_path, shapes, "trainer.max_epochs=1", "hydra.run.dir=run")
    photos = tmp_path / "photos"
    photos.mkdir()
    odd = os.fsdecode(b"caf\xe9 <b>.png")  # Latin-1 bytes: not valid UTF-8
    for name in (odd, "plain.png"):
        (photos / name).write_bytes((shapes / "demo_images" / "000023.png").read_bytes())
    proc = subprocess.run([str(BIN / "captioning-caption"), "checkpoint=run/checkpoints/best.pt", "images=photos",
                           "output=out", "num_workers=0", "progress=false"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "out" / "captions.json").read_text(encoding="utf-8"))
    assert {os.fsencode(r["file_name"]) for r in rows} == {b"caf\xe9 <b>.png", b"plain.png"}
    assert all("caption" in r for r in rows)
    with open(tmp_path / "out" / "captions.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        assert {r["file_name"] for r in csv.DictReader(f)} == {odd, "plain.png"}
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "caf\\xe9 &lt;b&gt;.png" in page  # readable, and escaped


def test_folders_that_cannot_be_searched_are_rows_not_omissions(tmp_path, shapes, monkeypatch, capsys):
    from test_caption_cli import caption_inprocess

    train(tmp_path, shapes, "trainer.max_epochs=1", "hydra.run.dir=run")
    photos = tmp_path / "photos"
    (photos / "trip" / "day1").mkdir(parents=True)
    (photos / "locked").mkdir()
    (photos / "trip" / "a.png").write_bytes((shapes / "demo_images" / "000023.png").read_bytes())
    (photos / "trip" / "day1" / "back").symlink_to(photos / "trip")  # a loop
    (photos / "gone.jpg").symlink_to(photos / "nowhere.jpg")  # dangling
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == photos / "locked":  # as root, chmod 000 would not stop us: refuse it here
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    rows, _ = caption_inprocess(capsys, f"checkpoint={tmp_path / 'run/checkpoints/best.pt'}", f"images={photos}",
                                f"output={tmp_path / 'out'}")
    by_name = {r["file_name"]: r for r in rows}
    assert "caption" in by_name["trip/a.png"]
    assert "does not exist" in by_name["gone.jpg"]["error"]
    assert "cannot list this folder: Permission denied" in by_name["locked"]["error"]
    assert "already searched" in by_name["trip/day1/back"]["error"]
    written = json.loads((tmp_path / "out" / "captions.json").read_text())
    assert {r["file_name"] for r in written} == set(by_name)


def test_outputs_honour_the_umask(tmp_path, shapes):
    train(tmp_path, shapes, "trainer.max_epochs=1", "hydra.run.dir=run")
    proc = subprocess.run(f"umask 027 && {BIN / 'captioning-caption'} checkpoint=run/checkpoints/best.pt "
                          f"images={shapes / 'demo_images'} output=out num_workers=0", shell=True,
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = [tmp_path / "out" / n for n in ("captions.json", "captions.csv", "index.html")]
    files += list((tmp_path / "out" / "thumbs").iterdir())
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}
    assert stat.S_IMODE((tmp_path / "run" / "checkpoints" / "best.pt").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_save_and_say_where(tmp_path, shapes, signum, status):
    args = [str(BIN / "captioning-train"), f"dataset.root={shapes}", f"cache_dir={tmp_path / 'cache'}", *TINY,
            "trainer.batch_size=2", "trainer.max_epochs=500", "hydra.run.dir=run"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "checkpoints" / "last.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)  # wait for the first epoch, so the run is surely training
    time.sleep(0.5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status and "Traceback" not in err, err
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert f"interrupted by {signal.Signals(signum).name} at step" in err and f"saved {last}" in err
    # the command it prints continues the run (with fewer epochs than the 500 asked for, to end the test)
    command = shlex.split(err.split("continue with: ")[1].splitlines()[0])
    assert command[0] == "captioning-train" and f"trainer.resume={last}" in command and "trainer.batch_size=2" in command
    command = [str(BIN / command[0]), *("trainer.max_epochs=2" if a == "trainer.max_epochs=500" else a
                                        for a in command[1:])]
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "BLEU-4" in resumed.stdout, resumed.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()  # in the same run directory


def test_eval_output_that_is_a_folder_is_one_line(tmp_path, shapes):
    results = tmp_path / "r.json"
    results.write_text(json.dumps([{"image_id": i, "caption": "a red circle"} for i in range(23, 29)]))
    proc = subprocess.run([str(BIN / "captioning-eval"), f"annotations={shapes / 'captions_test.json'}",
                           f"results={results}", f"output={tmp_path}"], capture_output=True, text=True, timeout=60)
    assert "is a directory" in one_error_line(proc)
