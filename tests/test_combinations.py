"""Features that each work alone, used together as users combine them: each case here once broke.

Tiny shapes runs through `captioning.training.train` (test_resume's helpers); the pairwise matrix of decoders,
objectives, encoders, starts, processes, precisions and decodings is in test_matrix.py.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from hydra import compose, initialize_config_dir

from captioning.baselines import FallbackIndex
from captioning.checkpoint import load_checkpoint
from captioning.cli.caption import caption_folder
from captioning.cli._conf import CONF_DIR
from captioning.cli.baseline import knn_scores
from captioning.io import InputError
from captioning.metrics import score_captions
from captioning.models import load_captioner
from test_resume import config, run, shapes  # noqa: F401 - shapes: the tiny dataset fixture
from captioning.training import train

ATTENTION = ["decoder=attention", "decoder.hidden_dim=16", "decoder.embed_dim=8", "decoder.attention_dim=8"]


@pytest.fixture(scope="module")
def attention_run(shapes, tmp_path_factory):  # noqa: F811 - the fixture imported above
    run_dir = tmp_path_factory.mktemp("attention")
    run(shapes, run_dir, "trainer.max_epochs=1", *ATTENTION)
    return run_dir


def test_the_knn_baseline_of_an_attention_checkpoint_compares_pooled_grids(shapes, attention_run, tmp_path):  # noqa: F811
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("baseline", overrides=[f"dataset.root={shapes}", f"cache_dir={shapes / 'cache'}",
                                             f"checkpoint={attention_run / 'checkpoints/best.pt'}", "k=[1,10]",
                                             "encoder.num_workers=0", "progress=false", f"output={tmp_path}",
                                             "fallback=0.05"])
    report = knn_scores(cfg)
    assert set(report) == {"knn1", "knn10", "model", "fallback"} and all(s["cider"] >= 0 for s in report.values())
    # The same neighbours as the run's own retrieval rows, which pooled the same grid cache; the same captions and
    # the same fallback as the run's report (its defaults: baseline.fallback=0.05 with the k=10 pool, beam 3)
    metrics = json.loads((attention_run / "metrics.json").read_text())
    assert report["knn1"]["cider"] == pytest.approx(metrics["test_knn1"]["cider"])
    assert report["model"]["cider"] == pytest.approx(metrics["test"]["cider"])
    assert report["fallback"] == pytest.approx(metrics["test_fallback"])
    assert 0 < report["fallback"]["fell_back"] <= report["fallback"]["images"]


def test_a_folder_captioned_with_the_runs_retrieval_index_gets_the_runs_fallback(shapes, attention_run, tmp_path):  # noqa: F811
    """retrieval.pt: captioning-caption applies a training run's fallback to a folder; on the run's test images it
    gives the run's own fallback row (the same features, threshold, pool of beams and neighbours), here for an
    attention run's pooled grids. An index of another encoder, or a file that is no index, is one clear error."""
    def caption(index, *more: str) -> list[dict]:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose("caption", overrides=[f"checkpoint={attention_run / 'checkpoints/best.pt'}",
                                                f"images={shapes / 'images' / 'test'}", f"fallback={index}",
                                                f"references={shapes / 'captions_test.json'}", "progress=false",
                                                "num_workers=0", f"output={tmp_path / 'out'}", *more])
        return caption_folder(cfg)

    rows = caption(attention_run / "retrieval.pt")
    row = json.loads((attention_run / "metrics.json").read_text())["test_fallback"]
    assert sum(r.get("retrieval", False) for r in rows) == row["fell_back"] > 0 and len(rows) == row["images"]
    scores = score_captions({r["file_name"]: r["caption"] for r in rows}, {r["file_name"]: r["references"] for r in rows})
    assert scores["cider"] == pytest.approx(row["cider"]) and scores["bleu4"] == pytest.approx(row["bleu4"])
    assert all("model_caption" in r and "model_score" in r and "score" not in r for r in rows if r.get("retrieval"))
    assert not any("feature" in r for r in rows) and "retrieval" in (tmp_path / "out/captions.csv").read_text()
    assert "by retrieval; the model's: " in (tmp_path / "out/index.html").read_text()  # the gallery says so
    assert not any("captions" in r for r in rows) and all(len(r["captions"]) == 2 for r in caption(
        attention_run / "retrieval.pt", "decode.num_return=2"))  # the beams the user asked for, not the pool's 3
    for change in ({"encoder": {**FallbackIndex.load(attention_run / "retrieval.pt").encoder, "name": "resnet18"}},
                   {"encoder_weights": "0" * 24}):  # another CNN, or the same one with other weights
        other = FallbackIndex.load(attention_run / "retrieval.pt")
        vars(other).update(change)
        other.save(tmp_path / "other.pt")
        with pytest.raises(InputError, match="holds the features of another encoder than .* against small_cnn"):
            caption(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.pt is not a retrieval index .* not a file written by torch.save"):
        caption(tmp_path / "junk.pt")


def test_attention_maps_of_a_pooled_captioner_are_one_clear_error(shapes, tmp_path):  # noqa: F811
    run(shapes, tmp_path, "trainer.max_epochs=1")
    captioner = load_captioner(tmp_path / "checkpoints/best.pt")
    with pytest.raises(InputError, match="reads pooled features and has no attention maps"):
        captioner.describe_features(torch.randn(2, captioner.encoder.out_dim), with_attention=True)


def test_init_from_an_attention_checkpoint_of_another_size_takes_its_sizes(shapes, attention_run, tmp_path):  # noqa: F811
    """attention_dim and attention_gate are sizes of the weights: they come from the checkpoint, said, and the
    run's config records them (before, a raw load_state_dict traceback)."""
    init = f"trainer.init_from={attention_run / 'checkpoints/best.pt'}"
    cfg, make_optimizer = config(shapes, "trainer.max_epochs=1", *ATTENTION, "decoder.attention_dim=12",
                                 "decoder.attention_gate=false", "decoder.output_dropout=0.1", init)
    with pytest.warns(UserWarning, match=r"the decoder is the checkpoint's: decoder.attention_dim=8 \(not 12\), "
                                         r"decoder.attention_gate=True \(not False\)"):
        train(cfg, tmp_path, make_optimizer)
    saved = load_checkpoint(tmp_path / "checkpoints/best.pt")
    assert saved["run_config"]["decoder"]["attention_dim"] == 8 and saved["model_config"]["decoder"]["attention_dim"] == 8
    assert saved["run_config"]["decoder"]["output_dropout"] == 0.1 == saved["model_config"]["decoder"]["output_dropout"]


def test_init_from_says_when_the_new_captions_are_out_of_its_vocabulary(shapes, attention_run, tmp_path):  # noqa: F811
    annotations = json.loads((shapes / "captions_train.json").read_text())
    for a in annotations["annotations"]:
        a["caption"] += " beside a zebra"
    (tmp_path / "captions_train.json").write_text(json.dumps(annotations))
    cfg, make_optimizer = config(shapes, "trainer.max_epochs=1", *ATTENTION,
                                 f"dataset.train.annotations={tmp_path / 'captions_train.json'}",
                                 f"trainer.init_from={attention_run / 'checkpoints/best.pt'}")
    with pytest.warns(UserWarning, match=r"\d+\.\d% of the training captions' words are not in the vocabulary of "
                                         r".*best.pt and train as <unk> \(\d words, most often: beside, .*zebra\)"):
        train(cfg, tmp_path / "run", make_optimizer)


def test_the_resume_warning_says_the_schedule_is_the_command_lines(shapes, tmp_path):  # noqa: F811
    run(shapes, tmp_path / "a", "trainer.max_epochs=1")
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    cfg, make_optimizer = config(shapes, f"trainer.resume={last}", "trainer.max_epochs=2", "optim.optimizer.lr=0.01",
                                 "optim.scheduler=cosine", "optim.warmup_steps=2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, tmp_path / "b", make_optimizer)
    message = next(str(w.message) for w in caught if "resuming from" in str(w.message))
    assert "taken from the checkpoint: optim.optimizer.lr=0.002 (not 0.01)" in message
    assert "taken from this command line: optim.scheduler=cosine (was constant), optim.warmup_steps=2 (was 5)" in message
