"""Retrieval baselines: nearest neighbours by cosine, 1-NN copies, consensus re-ranking, and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from captioning.baselines import NearestNeighbourCaptioner, nearest
from captioning.data.shapes import SHIFTED, Drawing, make_shapes_dataset, render, sample_scene

BIN = Path(sys.executable).parent


def test_nearest_is_cosine_and_chunks_agree():
    torch.manual_seed(0)
    gallery, queries = torch.randn(50, 8), torch.randn(23, 8)
    expected = (torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T)
    top = nearest(queries, gallery, k=4)
    assert torch.equal(top, expected.topk(4, dim=1).indices)
    assert torch.equal(nearest(queries, gallery * 5.0, k=4, chunk=7), top)  # scale-free, chunking changes nothing
    assert torch.equal(nearest(gallery[:3] * 2.0, gallery, k=1)[:, 0], torch.arange(3))  # an image finds itself


def test_one_nn_copies_and_consensus_picks_what_the_neighbours_agree_on():
    features = torch.eye(4)  # four training "images" along the axes
    captions = [["a red circle", "one red circle"], ["a red ball", "a red circle on the left"],
                ["a red circle", "the red circle"], ["a blue square", "two blue squares"]]
    knn = NearestNeighbourCaptioner(features, captions)
    queries = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.1, 1.0]])
    assert knn.caption(queries, k=1) == ["a red circle", "a blue square"]
    consensus = knn.caption(queries[:1], k=3)[0]  # neighbours 0, 1, 2: their six captions
    assert consensus == "a red circle"  # the caption most like the other five
    assert knn.caption(queries, k=3)[0] == consensus  # batched == one at a time
    with pytest.raises(ValueError, match="3 feature rows for 4"):
        NearestNeighbourCaptioner(features[:3], captions)


def test_shifted_shapes_set(tmp_path):
    paths = make_shapes_dataset(tmp_path, n_train=6, n_val=2, n_test=4, seed=0,
                                drawing=Drawing(shifted_style="outline", distractors=2))  # fewer test images than demo images (8)
    assert set(paths) == {"train", "val", "test", SHIFTED}
    demo = sorted(p.name for p in (tmp_path / "demo_images").iterdir())
    assert demo == sorted(p.name for p in (tmp_path / "images" / "test").iterdir())  # test images only
    shifted = json.loads(paths[SHIFTED].read_text())
    test = json.loads(paths["test"].read_text())
    assert len(shifted["images"]) == 4 and len(shifted["annotations"]) == 20
    assert {im["style"] for im in shifted["images"]} == {"outline"} and {im["style"] for im in test["images"]} == {"filled"}
    assert all(0 <= im["attributes"]["distractors"] <= 2 for im in test["images"] + shifted["images"])
    ids = [im["id"] for split in ("train", "val", "test", SHIFTED)
           for im in json.loads(paths[split].read_text())["images"]]
    assert len(ids) == len(set(ids)) == 16

    rng = lambda: np.random.default_rng(7)  # noqa: E731 - the same scene, drawn in both styles
    attributes, centres, extras = sample_scene(rng(), 128, distractors=2)
    filled, outline = (np.asarray(render(attributes, centres, 128, rng(), style, extras), dtype=int)
                       for style in ("filled", "outline"))
    coloured = lambda rgb: ((rgb.max(-1) - rgb.min(-1)) > 60).sum()  # noqa: E731 - clearly non-grey pixels
    assert 0 < coloured(outline) < 0.8 * coloured(filled)


def test_fallback_keeps_the_models_caption_for_familiar_images_and_asks_the_neighbours_for_the_rest():
    features = torch.eye(4)
    captions = [["a red circle", "one red circle"], ["a red ball", "a red circle on the left"],
                ["a red circle", "the red circle"], ["a blue square", "two blue squares"]]
    knn = NearestNeighbourCaptioner(features, captions)
    familiar, strange = [0.99, 0.1, 0.0, 0.0], [0.5, 0.45, 0.45, 0.0]  # cosine 0.99 and about 0.65 to the nearest
    queries = torch.tensor([familiar, strange, strange])
    assert knn.familiarity(queries)[0] == pytest.approx(0.99 / torch.tensor(familiar).norm().item())
    model = [["a green triangle"], ["a green triangle"], ["a green triangle", "a red circle in the middle"]]
    captions_out, fell_back = knn.fallback(queries, model, threshold=0.9, k=3)
    assert fell_back.tolist() == [False, True, True]
    assert captions_out[0] == "a green triangle"  # familiar: the model's, however unlike its neighbours
    assert captions_out[1] == "a red circle"  # strange: the neighbours' consensus beats the model's lone caption
    assert captions_out[2] == "a red circle"  # "a red circle" twice among the neighbours' captions: hard to beat
    assert not knn.fallback(queries, model, threshold=0.5, k=3)[1].any()  # every image familiar enough
    # A model's beam wins where it is what the neighbours share: here their common middle
    left_right = NearestNeighbourCaptioner(torch.eye(3), [["a red circle on the left", "a small red circle at the left"],
                                                          ["a red circle on the right", "a large red circle at the right"],
                                                          ["a blue square", "two blue squares"]])
    between = torch.tensor([[0.5, 0.5, 0.0]])
    beams = [["a green triangle", "a red circle at the"]]
    assert left_right.fallback(between, beams, threshold=0.9, k=2)[0] == ["a red circle at the"]
    assert left_right.fallback(between, [beams[0][:1]], threshold=0.9, k=2)[0] == ["a red circle on the left"]


@pytest.mark.slow
def test_baseline_cli_scores_and_writes_captions(tmp_path):
    make_shapes_dataset(tmp_path / "shapes", n_train=24, n_val=4, n_test=6, seed=0, image_size=32, demo_images=0,
                        drawing=Drawing(shifted_style="outline"))
    proc = subprocess.run([str(BIN / "captioning-baseline"), "dataset=shapes_shifted", f"dataset.root={tmp_path / 'shapes'}",
                           "encoder=small_cnn", "encoder.image_size=32", "encoder.num_workers=0", "split=test_shifted",
                           "k=[1,3]", f"cache_dir={tmp_path / 'cache'}", f"output={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "consensus of the 3 nearest images" in proc.stdout
    scores = json.loads((tmp_path / "out" / "knn_scores.json").read_text())
    assert set(scores) == {"knn1", "knn3"} and all(0 <= s["cider"] for s in scores.values())
    captions = json.loads((tmp_path / "out" / "test_shifted_knn1_captions.json").read_text())
    assert len(captions) == 6
    bad = subprocess.run([str(BIN / "captioning-baseline"), f"dataset.root={tmp_path / 'shapes'}", "split=train"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "split=train is not one of val, test" in bad.stderr
    no_model = subprocess.run([str(BIN / "captioning-baseline"), f"dataset.root={tmp_path / 'shapes'}", "fallback=0.05"],
                              capture_output=True, text=True, timeout=120)
    assert no_model.returncode == 1 and "fallback=0.05 needs a checkpoint=" in no_model.stderr
