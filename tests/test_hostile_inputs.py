"""Hostile and damaged inputs: each is one clear line that names the file and what to do, never a traceback, and
nothing already written is lost. Each case here once failed in a hostile run of the command lines."""
from __future__ import annotations

import csv
import errno
import json
import resource
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioning.cli.report import main as report_main
from captioning.data.coco import load_coco_captions
from captioning.data.features import cached_features
from captioning.data.shapes import make_shapes_dataset
from captioning import interrupt
from captioning.io import InputError, WriteError, atomic_path
from captioning.models import build_encoder
from test_caption_cli import BIN, caption_inprocess, checkpoint  # noqa: F401 - checkpoint: an untrained captioner
from test_report import fake_run
from test_resume import run, scripted_validation, shapes, signal_at_step  # noqa: F401 - shapes: a fixture


@pytest.mark.parametrize("side", [12000, 14000])  # 144 Mpx: Pillow warns (over 1x its limit); 196 Mpx: it raises
def test_a_decompression_bomb_is_an_error_row_not_a_stopped_run(tmp_path, checkpoint, capsys, side):  # noqa: F811
    root = tmp_path / "bomb"
    root.mkdir()
    Image.new("RGB", (16, 16), "red").save(root / "ok.png")
    Image.new("1", (side, side)).save(root / "bomb.png")
    out = tmp_path / "out"
    caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={root}", f"output={out}")
    rows = {r["file_name"]: r for r in json.loads((out / "captions.json").read_text())}
    assert "decompression-bomb" in rows["bomb.png"]["error"] and "caption" in rows["ok.png"]


def test_captions_csv_never_starts_a_cell_with_a_formula(tmp_path, checkpoint, capsys):  # noqa: F811
    root = tmp_path / "photos"
    root.mkdir()
    names = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM(A1).png", "plain.png"]
    for name in names:
        Image.new("RGB", (16, 16), "red").save(root / name)
    out = tmp_path / "out"
    caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={root}", f"output={out}")
    with open(out / "captions.csv", newline="") as f:
        cells = {r["file_name"] for r in csv.DictReader(f)}
    assert cells == {"'=HYPERLINK(1).png", "'+1.png", "'-2.png", "'@SUM(A1).png", "plain.png"}
    assert {r["file_name"] for r in json.loads((out / "captions.json").read_text())} == set(names)  # as they are


def test_a_new_run_into_a_directory_with_checkpoints_is_refused_unless_told(shapes, tmp_path):  # noqa: F811
    run(shapes, tmp_path, "trainer.max_epochs=1")
    before = (tmp_path / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(InputError, match=r"checkpoints holds another run's checkpoints \(best.pt, last.pt\): continue "
                                         r"that run with trainer.resume=auto, or replace them with trainer.overwrite=true"):
        run(shapes, tmp_path, "trainer.max_epochs=1", "seed=1")
    assert (tmp_path / "checkpoints" / "best.pt").read_bytes() == before  # nothing was touched
    replaced = run(shapes, tmp_path, "trainer.max_epochs=1", "seed=1", "trainer.overwrite=true")
    assert len(replaced["epochs"]) == 1 and (tmp_path / "checkpoints" / "best.pt").read_bytes() != before


@pytest.fixture()
def tiny_coco(tmp_path):
    make_shapes_dataset(tmp_path / "shapes", n_train=6, n_val=1, n_test=1, seed=0, image_size=32, demo_images=0)
    return load_coco_captions(tmp_path / "shapes" / "captions_train.json", tmp_path / "shapes" / "images" / "train")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit in the middle of the file, as a failing disk or a bad copy leaves it
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("damage, why", [(truncate, r"\d+ bytes where \d+ were written"),
                                         (flip_a_bit, "its SHA-256 differs from the one written with it")])
def test_a_damaged_feature_cache_is_named_and_rebuilt(tiny_coco, tmp_path, grid, damage, why):
    encoder = build_encoder("small_cnn", image_size=32, grid=grid)
    cache = tmp_path / "cache"
    options = dict(num_workers=0, progress=False, precision="fp32")
    first = torch.as_tensor(np.asarray(cached_features(encoder, tiny_coco, cache, **options), dtype=np.float32))
    (path,) = [p for p in cache.iterdir() if p.suffix in (".pt", ".npy")]
    assert json.loads((cache / f"{path.name}.sha256").read_text())["size"] == path.stat().st_size
    damage(path)
    with pytest.raises(InputError, match=rf"feature cache {path} is damaged \({why}\); delete it and run again"):
        cached_features(encoder, tiny_coco, cache, build=False, **options)
    with pytest.warns(UserWarning, match=rf"feature cache {path} is damaged \({why}\): rebuilding it"):
        again = cached_features(encoder, tiny_coco, cache, **options)
    assert torch.equal(torch.as_tensor(np.asarray(again, dtype=np.float32)), first)


def test_a_cache_from_before_checksums_is_adopted_if_it_loads(tiny_coco, tmp_path):
    encoder, cache = build_encoder("small_cnn", image_size=32), tmp_path / "cache"
    first = cached_features(encoder, tiny_coco, cache, num_workers=0, progress=False, precision="fp32")
    (checksum,) = cache.glob("*.sha256")
    checksum.unlink()
    assert torch.equal(cached_features(encoder, tiny_coco, cache, precision="fp32"), first) and checksum.is_file()
    (path,) = cache.glob("*.pt")
    checksum.unlink()
    truncate(path)
    with pytest.warns(UserWarning, match=r"is damaged \(it does not load: \w+\): rebuilding it"):
        cached_features(encoder, tiny_coco, cache, num_workers=0, progress=False, precision="fp32")


@pytest.mark.parametrize("content", ["{}", "[]", '{"select_on": "cider"}'])
def test_captioning_report_names_a_metrics_file_that_is_not_a_runs(tmp_path, capsys, content):
    fake_run(tmp_path / "sweep" / "0", ["decoder.cell=rnn"], 1.0, 2.0)
    (tmp_path / "sweep" / "1").mkdir()
    (tmp_path / "sweep" / "1" / "metrics.json").write_text(content)
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {tmp_path / 'sweep' / '1' / 'metrics.json'} is not the metrics.json of a finished "
                          f"captioning-train run (it has no ")


@pytest.mark.parametrize("error, message", [
    (OSError(errno.ENOSPC, "No space left on device"), r"the disk is full \([\d.]+ MB free there; it had written "
                                                       r"0.0 MB and needed more\); {path} keeps its previous version"),
    (OSError(errno.EROFS, "Read-only file system"), r"its folder is not writable \(Read-only file system\); {path} "
                                                    r"keeps its previous version; choose another folder"),
    (RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/0: file "
                  "write failed"), r"\[enforce fail at inline_container.cc:858\] . PytorchStreamWriter failed "
                                   r"writing file data/0: file write failed; {path} keeps its previous version"),
])
def test_a_refused_write_names_the_file_and_keeps_what_was_there(tmp_path, error, message):
    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")
    with pytest.raises(WriteError, match=f"cannot write {path}: " + message.format(path=path)):
        with atomic_path(path):
            raise error
    assert path.read_bytes() == b"the previous checkpoint" and list(tmp_path.iterdir()) == [path]


def test_a_file_size_limit_stops_the_run_with_one_line(tmp_path):
    """A real refusal from the kernel (RLIMIT_FSIZE: EFBIG for Python's writes, a failed write for torch.save's
    zip writer): the run stops at its first checkpoint with one line, no traceback."""
    make_shapes_dataset(tmp_path / "shapes", n_train=16, n_val=4, n_test=4, seed=0, image_size=32, demo_images=0)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of the process being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    proc = subprocess.run([str(BIN / "captioning-train"), f"dataset.root={tmp_path / 'shapes'}",
                           f"cache_dir={tmp_path / 'cache'}", "encoder=small_cnn", "encoder.image_size=32",
                           "encoder.num_workers=0", "decoder.hidden_dim=64", "trainer.batch_size=8",
                           "trainer.max_epochs=1", "trainer.tensorboard=false", "trainer.progress=false",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {best}: ")
    assert f"nothing was written to {best}" in proc.stderr and not best.exists()


def test_a_read_only_run_directory_is_one_line_before_anything_runs(tmp_path):
    target = tmp_path / "readonly"
    target.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(target)],
                      capture_output=True).returncode != 0:
        pytest.skip("this machine does not let the tests mount a read-only file system")
    try:
        proc = subprocess.run([str(BIN / "captioning-train"), "dataset.root=nowhere",
                               f"hydra.run.dir={target / 'run'}"], capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: cannot write {target / 'run' / '.write-check'}: its folder is not writable "
                                   f"(Read-only file system); nothing was written to {target / 'run' / '.write-check'}; "
                                   f"choose another folder")


def test_resuming_from_best_pt_continues_after_its_epoch(shapes, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, {1: 0.5, 2: 0.4})  # epoch 1 is best.pt
    run(shapes, tmp_path / "run", "trainer.max_epochs=2")
    monkeypatch.undo()
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    resumed = run(shapes, tmp_path / "again", "trainer.max_epochs=3", f"trainer.resume={best}")
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]
    assert [e["step"] for e in resumed["epochs"]] == [10, 20, 30]


def test_a_mid_epoch_resume_with_another_batch_size_is_refused(shapes, tmp_path, monkeypatch):
    signal_at_step(monkeypatch, 3)
    with pytest.raises(interrupt.Interrupted):
        run(shapes, tmp_path / "run", "trainer.max_epochs=1")
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(InputError, match=rf"cannot resume {last} in the middle of epoch 1 with trainer.batch_size=16: "
                                         rf"it trained 3 batches of 8; resume with trainer.batch_size=8"):
        run(shapes, tmp_path / "run", "trainer.max_epochs=1", "trainer.batch_size=16", "trainer.resume=auto")
