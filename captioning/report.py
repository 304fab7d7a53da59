"""One table (and one plot) from the runs of Hydra sweeps: what `captioning-report` prints.

Every run directory below the given folders that holds a metrics.json is read with its
.hydra/overrides.yaml (a run without metrics.json, failed or still running, is named and left out). Runs that
differ only in `seed=` form one row: the mean and spread (sample standard deviation, "±") over the seeds of the
scores (BLEU-4 and CIDEr-D unless told) on validation, at the epoch each run kept whatever it selected on, and on
every test split, with the number of trainable parameters and the training time. Runs of a second stage (SCST)
start from their seed's checkpoint: `trainer.init_from` is pooled like the seed, and so is `trainer.resume` (a
finished run resumed into a new directory scores its best checkpoint again, e.g. with other `decode.*` options). The retrieval baselines, which do
not depend on the seed, come last as rows of their own. Rows are sorted by validation CIDEr-D; a setting whose runs
scored the retrieval fallback (baseline.fallback) has a second row, its captions with the fallback.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from captioning.io import InputError, read_json



def baseline_name(k: int) -> str:
    return "k-NN: nearest training image's caption" if k == 1 else "k-NN: consensus caption"


def baselines(metrics: dict, split: str) -> list[int]:
    """The k of every retrieval baseline scored on `split` ({split}_knn{k}), in order."""
    return sorted(m["k"] for key, m in metrics.items()
                  if key.startswith(f"{split}_knn") and key[len(split) + 4:].isdigit())


def read_runs(folders: list[Path]) -> list[dict]:
    """[{"dir", "overrides": {key: value}, "metrics"}] for every run below `folders` (a folder with Hydra's
    .hydra/overrides.yaml or a metrics.json); "metrics" is None for a run that has not finished (it failed, or
    is still running): it takes no row, but its overrides still tell the finished runs apart."""
    runs = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise InputError(f"sweep folder not found: {folder}")
        found = {m.parent for m in Path(folder).rglob("metrics.json")}
        found |= {o.parent.parent for o in Path(folder).rglob("overrides.yaml") if o.parent.name == ".hydra"}
        for run_dir in sorted(found):
            overrides, metrics = run_dir / ".hydra" / "overrides.yaml", run_dir / "metrics.json"
            pairs = _read_overrides(overrides) if overrides.is_file() else []
            runs.append({"dir": run_dir, "overrides": dict(p.split("=", 1) for p in pairs if "=" in p),
                         "metrics": _read_metrics(metrics) if metrics.is_file() else None})
    if not finished(runs):
        raise InputError(f"no finished runs (metrics.json) below {', '.join(map(str, folders))}")
    return runs


REQUIRED = ("select_on", "best_val_score", "best_epoch", "test")  # what every finished captioning-train run writes


def _read_metrics(path: Path) -> dict:
    metrics = read_json(path, what="run metrics")
    missing = [k for k in REQUIRED if k not in metrics] if isinstance(metrics, dict) else list(REQUIRED)
    if missing:
        raise InputError(f"{path} is not the metrics.json of a finished captioning-train run (it has no "
                         f"{', '.join(missing)}): move it out of the sweep folder, or run that run again")
    for key in [k for k in metrics if k.endswith(("_knn", "_knn_consensus"))]:  # an earlier version's names
        scores = metrics.pop(key)
        metrics[f"{key.rsplit('_knn', 1)[0]}_knn{scores['k']}"] = scores
    return metrics


def finished(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r["metrics"] is not None]


def _read_overrides(path: Path) -> list[str]:
    """Hydra's overrides.yaml is a YAML list of strings; read it without a YAML parser for lists of `- k=v`."""
    return [line[2:].strip().strip("'\"") for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("- ")]


def _mean_spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


NAMES = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "cider": "CIDEr-D"}


def val_at_kept_epoch(metrics: dict, score: str = "cider") -> float:
    """Validation `score` of the epoch whose checkpoint the run kept (best.pt), even when it selected on another."""
    for epoch in metrics.get("epochs", []):
        if epoch["epoch"] == metrics["best_epoch"] and f"val_{score}" in epoch:
            return epoch[f"val_{score}"]
    if metrics["select_on"] == score:
        return metrics["best_val_score"]
    raise InputError(f"run metrics have no val_{score} for the kept epoch {metrics['best_epoch']}")


def table(runs: list[dict], scores: tuple[str, ...] = ("bleu4", "cider")) -> tuple[str, list[dict]]:
    """The markdown table and its rows as data: one row per setting (seeds pooled), then the baselines. The
    settings are told apart by the overrides that differ between any of `runs`, finished or not."""
    ignore = {"seed", "trainer.init_from", "trainer.resume", "hydra.sweep.dir", "hydra.run.dir", "trainer.tensorboard",
              "trainer.progress", "trainer.overwrite"}  # how a run shows progress or logs does not change what it computes
    keys = sorted({k for r in runs for k in r["overrides"] if k not in ignore})
    differing = [k for k in keys if len({r["overrides"].get(k, "default") for r in runs}) > 1]
    runs = finished(runs)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r["overrides"].get(k, "default") for k in differing), []).append(r)
    tests = [k for k, v in runs[0]["metrics"].items() if isinstance(v, dict) and "loss" in v]
    rows = []
    for setting, members in groups.items():
        m = [r["metrics"] for r in members]
        row = {"setting": dict(zip(differing, setting)), "seeds": len(m),
               "val": {k: [val_at_kept_epoch(x, k) for x in m] for k in dict.fromkeys([*scores, "cider"])},
               "parameters": m[0].get("parameters"), "minutes": [x.get("train_seconds", 0) / 60 for x in m]}
        for t in tests:
            row[t] = {k: [x[t][k] for x in m] for k in NAMES}
        if all(f"{t}_fallback" in x for t in tests for x in m):
            row["fallback"] = {t: {k: [x[f"{t}_fallback"][k] for x in m] for k in NAMES} for t in tests}
        rows.append(row)
    rows.sort(key=lambda r: -statistics.mean(r["val"]["cider"]))
    splits = ["val", *tests]
    header = ["setting", "seeds", *[f"{t} {NAMES[k]}" for t in splits for k in scores], "parameters", "train min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [label(r), str(r["seeds"])] + [_mean_spread(r[t][k], 3) for t in splits for k in scores]
        cells += [f"{r['parameters']:,}" if r["parameters"] else "", _mean_spread(r["minutes"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
        if "fallback" in r:  # the same runs' captions, with retrieval for the test images unlike training
            cells = [f"{label(r)}, retrieval fallback", str(r["seeds"])] + [""] * len(scores)
            cells += [_mean_spread(r["fallback"][t][k], 3) for t in tests for k in scores] + ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
    first = runs[0]["metrics"]
    for k_nn in baselines(first, tests[0]):
        cells = [f"{baseline_name(k_nn)} (k={k_nn})", ""] + [""] * len(scores)
        cells += [f"{first[f'{t}_knn{k_nn}'][k]:.3f}" for t in tests for k in scores] + ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def label(row: dict) -> str:
    """The overrides that set this row apart (a run that does not set a key has it at its default)."""
    return ", ".join(f"{k}={v}" for k, v in row["setting"].items() if v != "default") or "defaults"


def plot(rows: list[dict], runs: list[dict], path: Path) -> Path:
    """CIDEr-D of every setting (mean, with the seeds' spread) on validation and each test split, the baselines as lines."""
    runs = finished(runs)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from captioning.io import atomic_path

    tests = [k for k in rows[0] if isinstance(rows[0][k], dict) and "cider" in rows[0][k]]
    fig, axes = plt.subplots(1, len(tests), figsize=(6 * len(tests), 0.5 * len(rows) + 2), squeeze=False)
    labels = [label(r) for r in rows]
    for ax, t in zip(axes[0], tests):
        means = [statistics.mean(r[t]["cider"]) for r in rows]
        spreads = [statistics.stdev(r[t]["cider"]) if len(r[t]["cider"]) > 1 else 0 for r in rows]
        ax.barh(range(len(rows)), means, xerr=spreads, color="C0")
        for k_nn, colour in zip(baselines(runs[0]["metrics"], t), ("C1", "C3", "C4", "C5")):
            ax.axvline(runs[0]["metrics"][f"{t}_knn{k_nn}"]["cider"], color=colour, linestyle="--",
                       label=f"{baseline_name(k_nn)} (k={k_nn})")
        ax.set(yticks=range(len(rows)), yticklabels=labels, xlabel="CIDEr-D", title=t)
        ax.invert_yaxis()
        if ax.get_legend_handles_labels()[0]:  # validation has no baseline lines
            ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
