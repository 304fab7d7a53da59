"""The icons set (Tabler's icons with their human-given names): captions, splits, the download's checks, and a
training run on the committed 300-icon slice (tests/data/icons), offline."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from captioning.data import icons
from captioning.data.icons import PNGS, fetch, icon_captions, read_tarballs
from captioning.io import InputError

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "tests" / "data" / "icons"
SLICE_ARGS = ["--pngs", str(SLICE / f"icons-png-slice-{icons.VERSION}.tgz"),
              "--metadata", str(SLICE / f"icons-slice-{icons.VERSION}.tgz")]


def make_icons(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "datasets" / "make_icons.py"), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def icon_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("icons")
    proc = make_icons(out, *SLICE_ARGS, "--val", "40", "--test", "40", "--shifted", "30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def split(root: Path, name: str) -> dict:
    return json.loads((root / f"captions_{name}.json").read_text())


def names(data: dict) -> set[str]:
    return {im["file_name"] for im in data["images"]}


def test_captions_are_the_name_and_the_category_with_tags_not_in_the_name():
    assert icon_captions("calendar-cog", "System", ["schedule", "settings", "cog", "appointment", "date"]) == \
        ["calendar cog", "system icon: schedule, settings, appointment"]
    assert icon_captions("a-b-2", "", ["test", 2, "a"]) == ["a b 2", "icon: test"]  # tags may be numbers
    assert icon_captions("blade", "Design", ["blade"]) == ["blade", "blade"]  # no tag beyond the name


def test_splits_hold_novel_icons_in_val_and_test_and_filled_train_icons_in_test_shifted(icon_set):
    data = {s: split(icon_set, s) for s in ("train", "val", "test", "test_shifted")}
    assert [len(d["images"]) for d in data.values()] == [220, 40, 40, 30]
    train, val, test, shifted = (names(d) for d in data.values())
    assert not (train & test) and not (train & val) and not (val & test)  # a novel icon's name must be composed
    assert shifted <= train  # the same names, drawn filled
    assert {im["style"] for im in data["test_shifted"]["images"]} == {"filled"}
    assert {im["style"] for s in ("train", "val", "test") for im in data[s]["images"]} == {"outline"}
    ids = [im["id"] for d in data.values() for im in d["images"]]
    assert len(ids) == len(set(ids))  # unique over the whole set
    for d in data.values():  # two human-given references per image, the name first
        by_image = {}
        for a in d["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a["caption"])
        assert all(len(c) == 2 for c in by_image.values())
        assert all(by_image[im["id"]][0] == im["file_name"][:-4].replace("-", " ") for im in d["images"])
    for s in data:
        assert sorted(p.name for p in (icon_set / "images" / s).iterdir()) == sorted(names(data[s]))
    assert "MIT License" in (icon_set / icons.LICENCE_FILE).read_text()
    assert len(list((icon_set / "demo_images").iterdir())) == 8


def test_same_seed_same_set_another_seed_another_split(icon_set, tmp_path):
    assert make_icons(tmp_path / "again", *SLICE_ARGS, "--val", "40", "--test", "40", "--shifted", "30").returncode == 0
    for s in ("train", "val", "test", "test_shifted"):
        assert (tmp_path / "again" / f"captions_{s}.json").read_bytes() == (icon_set / f"captions_{s}.json").read_bytes()
    assert make_icons(tmp_path / "again", *SLICE_ARGS, "--val", "40", "--test", "40", "--seed", "1").returncode == 0
    assert names(split(tmp_path / "again", "test")) != names(split(icon_set, "test"))
    demo = {p.name for p in (tmp_path / "again" / "demo_images").iterdir()}  # rerun in place: only this seed's icons
    assert len(demo) == 8 and demo <= names(split(tmp_path / "again", "test"))


def test_a_tarball_that_is_not_one_is_one_line(tmp_path):
    bad = tmp_path / "icons-png.tgz"
    bad.write_bytes(b"not a tarball")
    proc = make_icons(tmp_path / "out", "--pngs", str(bad), "--metadata", SLICE_ARGS[3])
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: {bad}: not a readable @tabler/icons-png tarball")
    swapped = make_icons(tmp_path / "out", "--pngs", SLICE_ARGS[3], "--metadata", SLICE_ARGS[3])
    assert "no package/icons/outline/*.png in it" in swapped.stderr and swapped.returncode == 1
    few = make_icons(tmp_path / "out", *SLICE_ARGS, "--val", "200", "--test", "100")
    assert few.returncode == 1 and "leave no training icons of 300" in few.stderr


def test_offline_says_what_to_fetch_and_a_wrong_file_is_refused(tmp_path, monkeypatch):
    def offline(url, dest):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("captioning.data.download.download", offline)
    with pytest.raises(InputError, match=rf"cannot download {PNGS.url} \(no network\): .*npm pack "
                                         rf"@tabler/icons-png@{icons.VERSION}\) and put it in {tmp_path}/"):
        fetch(PNGS, tmp_path)
    (tmp_path / PNGS.filename).write_bytes((SLICE / f"icons-png-slice-{icons.VERSION}.tgz").read_bytes())
    with pytest.raises(InputError, match="its sha512 differs from the registry's"):
        fetch(PNGS, tmp_path)


def test_slice_holds_outline_and_filled_renders_with_the_licence():
    metadata, images, licence = read_tarballs(Path(SLICE_ARGS[1]), Path(SLICE_ARGS[3]))
    assert len(metadata) == 300 and {n for _, n in images} == set(metadata)
    assert sum(s == "filled" for s, _ in images) > 30 and "Paweł Kuna" in licence


def test_training_on_real_names_scores_both_test_splits_beside_retrieval(icon_set, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([str(BIN / "captioning-train"), "dataset=icons", f"dataset.root={icon_set}",
                           "encoder=small_cnn", f"cache_dir={tmp_path / 'cache'}", "decoder.hidden_dim=32",
                           "decoder.embed_dim=16", "trainer.batch_size=32", "trainer.max_epochs=2",
                           "trainer.progress=false", "trainer.tensorboard=false", "optim.warmup_steps=0",
                           f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("test", "test_shifted"):
        assert {name, f"{name}_knn1", f"{name}_knn10", f"{name}_shuffled_images"} <= set(metrics)
        assert metrics[name]["cider"] >= 0 and metrics[f"{name}_knn1"]["cider"] > 0
    scored = subprocess.run([str(BIN / "captioning-eval"), f"annotations={icon_set / 'captions_test_shifted.json'}",
                             f"results={run / 'test_shifted_captions.json'}", f"output={tmp_path / 'scores.json'}"],
                            capture_output=True, text=True, timeout=120)
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "scores.json").read_text())["cider"] == pytest.approx(
        metrics["test_shifted"]["cider"], abs=1e-9)
