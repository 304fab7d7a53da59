"""captioning-report: sweeps' runs pooled over seeds into one table (mean ± spread), baselines last, a plot."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioning.cli.report import main
from captioning.report import read_runs


def scores(b: float, c: float, loss: bool = True) -> dict:  # a model's scores have a loss, a baseline's do not
    return {**({"loss": 1.0} if loss else {}), "bleu1": b + 0.1, "bleu2": b + 0.05, "bleu3": b + 0.02, "bleu4": b,
            "cider": c}


def fake_run(folder: Path, overrides: list[str], val: float, test_cider: float, select_on: str = "cider") -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    epochs = [{"epoch": e, "val_bleu4": 0.9, "val_cider": val if e == 3 else val + 1} for e in (1, 2, 3, 4)]
    metrics = {"select_on": select_on, "best_val_score": 0.9 if select_on == "bleu4" else val, "best_epoch": 3, "parameters": 1234, "train_seconds": 90,
               "test": scores(0.5, test_cider), "test_shifted": scores(0.3, test_cider / 2),
               "test_knn1": {"k": 1, **scores(0.4, 1.0, False)}, "test_shifted_knn1": {"k": 1, **scores(0.2, 0.5, False)},
               "epochs": epochs}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_seeds_are_pooled_and_rows_sorted_by_validation(tmp_path, capsys):
    for n, (norm, seed, val, cider) in enumerate([("none", 0, 1.0, 2.0), ("none", 1, 1.2, 2.2), ("l2", 0, 2.0, 3.0),
                                                   ("l2", 1, 2.0, 3.4)]):
        fake_run(tmp_path / "sweep" / str(n), ["dataset=shapes_shifted", f"decoder.feature_norm={norm}", f"seed={seed}"],
                 val, cider)
    for seed in (0, 1):  # selected on BLEU-4: the column still shows val CIDEr-D of the epoch it kept
        fake_run(tmp_path / "sweep" / f"b{seed}", ["dataset=shapes_shifted", "trainer.select_on=bleu4", f"seed={seed}"],
                 1.5, 2.5, select_on="bleu4")
    for seed in (0, 1):  # a second stage from each seed's checkpoint: one setting, pooled over its two seeds
        fake_run(tmp_path / "scst" / str(seed), ["dataset=shapes_shifted", "+experiment=scst", f"seed={seed}",
                                                  f"trainer.init_from=sweep/{seed}/checkpoints/best.pt"], 3.0, 4.0)
    main([str(tmp_path / "sweep"), str(tmp_path / "scst"), "--output", str(tmp_path / "study.md")])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| setting | seeds | val BLEU-4 | val CIDEr-D | test BLEU-4 | test CIDEr-D | test_shifted BLEU-4")
    assert lines[1].startswith("| +experiment=scst | 2 | 0.900 ± 0.000 | 3.000 ± 0.000 | 0.500 ± 0.000 | 4.000 ± 0.000 |")
    assert lines[2].startswith("| decoder.feature_norm=l2 | 2 | 0.900 ± 0.000 | 2.000 ± 0.000 | 0.500 ± 0.000 | 3.200 ± 0.283 |")
    assert lines[3].startswith("| trainer.select_on=bleu4 | 2 | 0.900 ± 0.000 | 1.500 ± 0.000 |")
    assert lines[4].startswith("| decoder.feature_norm=none | 2 | 0.900 ± 0.000 | 1.100 ± 0.141 |")  # no dataset= column
    assert lines[5].startswith("| k-NN: nearest training image's caption (k=1) |  |  |  | 0.400 | 1.000 | 0.200 | 0.500 |")
    assert (tmp_path / "study.md").read_text().strip() == out.strip()
    assert (tmp_path / "study.png").stat().st_size > 1000


def test_runs_scored_again_from_each_seeds_checkpoint_pool_like_the_seed(tmp_path, capsys):
    for seed in (0, 1):  # a finished run resumed into a new directory: its best.pt scored with other decode options
        for beam in (1, 3):
            fake_run(tmp_path / "decode" / f"b{beam}s{seed}", ["dataset=icons", f"decode.beam_size={beam}", f"seed={seed}",
                                                               f"trainer.resume=runs/s{seed}/checkpoints/last.pt"],
                     1.0, 2.0 + beam + seed)
    main([str(tmp_path / "decode")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[:2] for row in rows[1:3]] == [["| decode.beam_size=1", "2"], ["| decode.beam_size=3", "2"]]


def test_a_setting_scored_with_the_retrieval_fallback_has_a_second_row(tmp_path, capsys):
    for seed, fallback in ((0, 1.5), (1, 2.5)):
        fake_run(tmp_path / "sweep" / str(seed), ["dataset=icons", f"seed={seed}"], 1.0, 2.0)
        path = tmp_path / "sweep" / str(seed) / "metrics.json"
        metrics = json.loads(path.read_text())
        for split, cider in (("test", fallback), ("test_shifted", fallback + 1)):
            metrics[f"{split}_fallback"] = {"threshold": 0.8, "fell_back": 3, "images": 10, **scores(0.45, cider, False)}
        path.write_text(json.dumps(metrics))
    main([str(tmp_path / "sweep")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| defaults | 2 | 0.900 ± 0.000 | 1.000 ± 0.000 | 0.500 ± 0.000 | 2.000 ± 0.000 |")
    assert rows[2].startswith("| defaults, retrieval fallback | 2 |  |  | 0.450 ± 0.000 | 2.000 ± 0.707 | "
                              "0.450 ± 0.000 | 3.000 ± 0.707 |")
    assert rows[3].startswith("| k-NN: nearest training image's caption (k=1) |")


def test_no_runs_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "empty")])
    assert e.value.code == 1 and capsys.readouterr().err.startswith("error: no finished runs")


def test_a_failed_run_is_named_and_still_tells_the_finished_ones_apart(tmp_path, capsys):
    fake_run(tmp_path / "cells" / "0", ["decoder.cell=rnn"], 1.0, 2.0)
    failed = tmp_path / "cells" / "1" / ".hydra"  # a job that stopped on a bad value: Hydra's files, no metrics
    failed.mkdir(parents=True)
    (failed / "overrides.yaml").write_text("- decoder.cell=transfomer\n")
    main([str(tmp_path / "cells")])
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| decoder.cell=rnn | 1 |")  # not "defaults": the sweep varied decoder.cell
    assert not any("transfomer" in row for row in rows)
    assert "1 runs, 1 settings" in err and f"left out 1 runs without metrics.json (failed, or still running): " \
                                             f"{tmp_path / 'cells' / '1'}" in err


def test_an_earlier_versions_baseline_keys_are_read(tmp_path):
    """metrics.json of runs made before baseline.k: test_knn (k=1) and test_knn_consensus (k=10)."""
    fake_run(tmp_path / "old", ["seed=0"], 1.0, 2.0)
    path = tmp_path / "old" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["test_knn"] = metrics.pop("test_knn1")
    metrics["test_knn_consensus"] = {**metrics["test_knn"], "k": 10}
    path.write_text(json.dumps(metrics))
    run = read_runs([tmp_path])[0]["metrics"]
    assert run["test_knn1"]["k"] == 1 and run["test_knn10"]["k"] == 10 and "test_knn" not in run
