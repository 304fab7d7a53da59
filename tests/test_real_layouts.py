"""The real dataset layouts end to end, through the console scripts, as README documents them.

Flickr8k: the real caption and split files with a stand-in image for each of the 8,091 real file names
(conftest.flickr8k_release) -> datasets/flickr8k_to_coco.py -> captioning-train dataset=flickr8k ->
captioning-eval -> captioning-caption. COCO: a small Karpathy-format file in the real format
(filepath/filename, cocoid, sentid, restval) -> datasets/karpathy_to_coco.py -> dataset=coco_karpathy,
and the same files through dataset=coco with explicit split paths. A few training steps each (small CNN).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_TRAIN = ["encoder=small_cnn", "encoder.image_size=32", "encoder.num_workers=0", "decoder.embed_dim=8",
              "decoder.hidden_dim=16", "trainer.batch_size=16", "trainer.max_epochs=1", "trainer.max_steps=3",
              "trainer.tensorboard=false", "trainer.progress=false"]


def run(args: list, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


def train_eval_caption(cwd: Path, dataset_args: list[str], test_annotations: Path, images: Path) -> dict:
    run([BIN / "captioning-train", *dataset_args, *TINY_TRAIN, f"cache_dir={cwd / 'cache'}", "hydra.run.dir=run"],
        cwd)
    metrics = json.loads((cwd / "run" / "metrics.json").read_text())
    scores = cwd / "scores.json"
    run([BIN / "captioning-eval", f"annotations={test_annotations}", "results=run/test_captions.json",
         f"output={scores}"], cwd)
    report = json.loads(scores.read_text())
    assert report["bleu4"] == pytest.approx(metrics["test"]["bleu4"], abs=1e-12)  # eval agrees with training
    proc = run([BIN / "captioning-caption", "checkpoint=run/checkpoints/best.pt", f"images={images}",
                "output=gallery", "num_workers=0", "thumbnail_size=16", "progress=false"], cwd)
    rows = json.loads((cwd / "gallery" / "captions.json").read_text())
    assert all("caption" in r for r in rows) and f"{len(rows)} images captioned, 0 failed" in proc.stdout
    return {"metrics": metrics, "report": report, "rows": rows}


@pytest.mark.slow
def test_flickr8k_release_to_gallery(flickr8k_release, tmp_path):
    root = tmp_path / "data" / "flickr8k"  # README: the release unpacked into data/flickr8k
    root.mkdir(parents=True)
    for name in ("text", "Flicker8k_Dataset"):
        (root / name).symlink_to(flickr8k_release / name, target_is_directory=True)
    proc = run([sys.executable, REPO / "datasets" / "flickr8k_to_coco.py", "--captions",
                "data/flickr8k/text/Flickr8k.token.txt", "--splits-dir", "data/flickr8k/text",
                "--out", "data/flickr8k"], tmp_path)
    assert "train: 6000 images, 30000 captions" in proc.stdout
    demo = tmp_path / "some_photos"  # the folder tool on a few of the release's images
    demo.mkdir()
    for name in sorted(p.name for p in (root / "Flicker8k_Dataset").iterdir())[:5]:
        (demo / name).symlink_to(root / "Flicker8k_Dataset" / name)
    out = train_eval_caption(tmp_path, ["dataset=flickr8k"], root / "captions_test.json", demo)
    assert out["report"]["num_images"] == 1000 and len(out["rows"]) == 5
    assert out["metrics"]["epochs"][0]["step"] == 3


def karpathy_file(path: Path, captions: list[str]) -> dict[str, int]:
    """A Karpathy-format dataset_coco.json (14 images: train, restval, val, test) and the images it names."""
    splits = ["train"] * 6 + ["restval"] * 2 + ["val"] * 3 + ["test"] * 3
    images = []
    for k, split in enumerate(splits):
        folder = "train2014" if split == "train" else "val2014"
        cocoid = 100_000 + 37 * k
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        image_path = path.parent / "images" / folder / filename
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 20), (20 * k, 255 - 15 * k, 90)).save(image_path)
        sentences = [{"raw": captions[5 * k + j], "tokens": captions[5 * k + j].lower().split(), "imgid": k,
                      "sentid": 5 * k + j} for j in range(5)]
        images.append({"filepath": folder, "filename": filename, "imgid": k, "split": split, "cocoid": cocoid,
                       "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return {s: splits.count(s) for s in set(splits)}


@pytest.mark.slow
def test_coco_karpathy_and_explicit_coco_paths(reference_data, tmp_path):
    lines = (reference_data / "flickr8k" / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    counts = karpathy_file(tmp_path / "data" / "coco" / "dataset_coco.json", [ln.split("\t")[1] for ln in lines[:70]])
    proc = run([sys.executable, REPO / "datasets" / "karpathy_to_coco.py", "data/coco/dataset_coco.json",
                "--out", "data/coco", "--restval-into-train"], tmp_path)
    assert f"train: {counts['train'] + counts['restval']} images" in proc.stdout
    coco = tmp_path / "data" / "coco"
    out = train_eval_caption(tmp_path, ["dataset=coco_karpathy"], coco / "captions_test.json",
                             coco / "images" / "val2014")
    assert out["report"]["num_images"] == 3 and len(out["rows"]) == 8  # val2014 holds restval, val and test

    explicit = tmp_path / "explicit"
    explicit.mkdir()
    paths = [f"dataset.{s}.{k}={coco / f'captions_{s}.json' if k == 'annotations' else coco / 'images'}"
             for s in ("train", "val", "test") for k in ("annotations", "images")]
    again = train_eval_caption(explicit, ["dataset=coco", *paths], coco / "captions_test.json", coco / "images")
    assert len(again["rows"]) == 14
    assert again["metrics"]["test"] == out["metrics"]["test"]  # the same files and seed: the same run
