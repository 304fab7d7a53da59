"""The official METEOR and ROUGE-L, from pycocoevalcap when it (and Java) is installed. (BLEU and CIDEr-D
are ours, in pure Python, with the official scorer's numbers: bleu.py and cider.py.)

We give the scorers the input the official pipeline (COCOEvalCap) gives them, PTB-tokenized captions
joined by spaces, so the numbers are the official ones; only our tokenizer (pure Python, same output)
replaces the official Java one.
"""
from __future__ import annotations

import importlib
import shutil
from typing import Hashable, Mapping, Sequence

from captioning.io import InputError

METRICS = ("bleu", "cider", "meteor", "rouge_l")
_SCORERS = {"meteor": ("pycocoevalcap.meteor.meteor", "Meteor"),
            "rouge_l": ("pycocoevalcap.rouge.rouge", "Rouge")}


class MissingDependency(InputError):
    """A requested metric needs software that is not installed; the message says what to install."""


def check_metrics(metrics: Sequence[str]) -> None:
    """Fail before any work if a metric is unknown or its scorer cannot run here."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    official = [m for m in metrics if m in _SCORERS]
    if not official:
        return
    try:
        importlib.import_module("pycocoevalcap")
    except ImportError:
        raise MissingDependency(f"{', '.join(official)} need the official COCO caption scorer: "
                                f"pip install pycocoevalcap (METEOR also needs Java), or use metrics=[bleu]") from None
    if "meteor" in official and shutil.which("java") is None:
        raise MissingDependency("meteor needs Java on the PATH (the official METEOR is a Java program): install a "
                                "Java runtime (e.g. apt-get install default-jre-headless) or drop meteor from metrics")


def official_scores(metrics: Sequence[str], hypotheses: Mapping[Hashable, str],
                    references: Mapping[Hashable, Sequence[str]]) -> dict[str, tuple[float, list[float]]]:
    """{metric: (corpus score, per-image scores in `hypotheses` order)} for the official metrics asked for.

    hypotheses/references: tokenized strings (metrics.tokenize_for_scoring).
    """
    res = {i: [h] for i, h in hypotheses.items()}
    gts = {i: list(references[i]) for i in hypotheses}
    scores = {}
    for name in metrics:
        if name not in _SCORERS:
            continue
        module, cls = _SCORERS[name]
        scorer = getattr(importlib.import_module(module), cls)()
        corpus, per_image = scorer.compute_score(gts, res)
        scores[name] = (float(corpus), [float(s) for s in per_image])
    return scores
