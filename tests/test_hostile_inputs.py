"""Hostile and damaged inputs: each is one clear line that names the file and what to do, never a traceback, and
nothing already written is lost. Each case here once failed in a hostile run of the command lines."""
from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from test_caption_cli import caption_inprocess, checkpoint  # noqa: F401 - checkpoint: an untrained captioner


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
