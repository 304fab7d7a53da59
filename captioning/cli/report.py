"""captioning-report: one markdown table and one plot from the runs of one or more Hydra sweeps.

    captioning-report multirun/2026-11-27_12-00-00
    captioning-report multirun/feature_norm multirun/no_dropout --output study.md --plot study.png

Runs that differ only in their seed are pooled (mean ± sample standard deviation); see captioning/report.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioning.cli.common import fail
from captioning.io import InputError, atomic_write_text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="captioning-report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (multirun/<date>), searched recursively")
    parser.add_argument("--scores", default="bleu4,cider", help="scores to show for validation and each test split: any of bleu1,bleu2,bleu3,bleu4,cider")
    parser.add_argument("--output", type=Path, help="also write the table to this markdown file")
    parser.add_argument("--plot", type=Path, help="the plot's PNG (default: next to --output, else report.png in the "
                                                  "first sweep folder)")
    args = parser.parse_args(argv)
    from captioning.report import NAMES, finished, plot, read_runs, table  # matplotlib after the arguments

    try:
        runs = read_runs(args.sweeps)
    except InputError as e:
        fail(str(e))
    scores = tuple(args.scores.split(","))
    unknown = [s for s in scores if s not in NAMES]
    if unknown:
        fail(f"--scores: unknown {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    text, rows = table(runs, scores)
    print(text)
    if args.output:
        atomic_write_text(args.output, text + "\n")
    where = args.plot or (args.output.with_suffix(".png") if args.output else args.sweeps[0] / "report.png")
    done = finished(runs)
    print(f"\n{len(done)} runs, {len(rows)} settings; plot: {plot(rows, runs, where)}", file=sys.stderr)
    if len(done) < len(runs):
        print(f"left out {len(runs) - len(done)} runs without metrics.json (failed, or still running): "
              + ", ".join(str(r["dir"]) for r in runs if r["metrics"] is None), file=sys.stderr)


if __name__ == "__main__":
    main()
