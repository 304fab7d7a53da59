"""Score a COCO results file against a COCO captions file: what captioning-eval does, minus the CLI.

    report = evaluate_files("refs.json", "results.json", metrics=["bleu", "cider"])
    print(format_report(report))
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from captioning.io import InputError
from captioning.metrics import bleu_tokenized, cider_d, tokenize_for_scoring
from captioning.metrics.bleu import FLAVOURS
from captioning.metrics.coco_files import check_coverage, load_references, load_results
from captioning.metrics.official import check_metrics, official_scores

_NAMES = {"cider": "CIDEr-D", "meteor": "METEOR", "rouge_l": "ROUGE-L"}


def evaluate_files(annotations: str | Path, results: str | Path, metrics: Sequence[str] = ("bleu", "cider"),
                   flavour: str = "coco", allow_subset: bool = False) -> dict:
    """The report captioning-eval writes: corpus scores at the top level, then one entry per image.

    {"bleu1".."bleu4", "hyp_len", "ref_len", "ratio", "cider", [meteor, rouge_l], "num_images", "flavour",
     "annotations", "results", "per_image": [{"image_id", "bleu1".."bleu4", "cider", ...}, ...]}
    Images are scored in results-file order; allow_subset scores only the images in the results
    (the official scorer's params['image_id']), otherwise they must be exactly the annotated ones.
    """
    if flavour not in FLAVOURS:
        raise InputError(f"unknown BLEU flavour {flavour!r}; choose one of {list(FLAVOURS)}")
    if not metrics:
        raise InputError("no metrics to compute; e.g. metrics=[bleu]")
    check_metrics(metrics)  # before reading anything: a missing Java should not cost a tokenization
    references = load_references(annotations)
    captions = load_results(results)
    check_coverage(captions, references, results, annotations, allow_subset)

    hypotheses, refs = tokenize_for_scoring(captions, references)
    report: dict = {}
    per_image: dict = {i: {"image_id": i} for i in hypotheses}
    if "bleu" in metrics:
        bleu = bleu_tokenized(hypotheses, refs, flavour=flavour)
        report.update(bleu.as_dict())
        for i, scores in bleu.per_image.items():
            per_image[i].update({f"bleu{n}": s for n, s in enumerate(scores, 1)})
    if "cider" in metrics:
        report["cider"], cider_per_image = cider_d(hypotheses, refs)
        for i, s in cider_per_image.items():
            per_image[i]["cider"] = s
    for name, (corpus, scores) in official_scores(metrics, hypotheses, refs).items():
        report[name] = corpus
        for i, s in zip(hypotheses, scores):
            per_image[i][name] = s
    report.update(num_images=len(hypotheses), flavour=flavour, annotations=str(annotations), results=str(results),
                  per_image=list(per_image.values()))
    return report


def format_report(report: dict) -> str:
    """A markdown table of the corpus scores plus the length statistics behind BLEU's brevity penalty."""
    rows = [(f"BLEU-{n}", report[f"bleu{n}"]) for n in range(1, 5) if f"bleu{n}" in report]
    rows += [(label, report[key]) for key, label in _NAMES.items() if key in report]
    lines = [f"{report['num_images']} images, {report['results']} vs {report['annotations']}", "",
             "| metric | score |", "|---|---|"]
    lines += [f"| {label} | {value:.4f} |" for label, value in rows]
    if "hyp_len" in report:
        lines += ["", f"BLEU ({report['flavour']}): hypothesis length {report['hyp_len']}, "
                      f"reference length {report['ref_len']}, ratio {report['ratio']:.4f}"]
    return "\n".join(lines)
