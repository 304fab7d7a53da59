"""captioning-eval: BLEU-1..4 (official COCO scorer parity), optionally METEOR/ROUGE-L/CIDEr.

    captioning-eval annotations=REFS.json results=RESULTS.json [output=SCORES.json]
    captioning-eval ... metrics=[bleu,meteor,rouge_l,cider] allow_subset=true bleu.flavour=nltk

Nothing is written to the working directory except `output` (conf/eval.yaml turns off Hydra's run
directory and logs).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from captioning.cli._conf import CONF_DIR
from captioning.io import InputError, atomic_write_json
from captioning.metrics.evaluate import evaluate_files, format_report
from captioning.metrics.official import MissingDependency


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def run(cfg: DictConfig) -> float:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        print(f"error: set {' and '.join(f'{k}=...' for k in missing)}, e.g. "
              "captioning-eval annotations=REFS.json results=RESULTS.json", file=sys.stderr)
        sys.exit(1)
    metrics = cfg.metrics if OmegaConf.is_list(cfg.metrics) else [cfg.metrics]  # metrics=bleu works too
    try:
        report = evaluate_files(cfg.annotations, cfg.results, metrics=[str(m) for m in metrics],
                                flavour=cfg.bleu.flavour, allow_subset=cfg.allow_subset)
    except (InputError, MissingDependency) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(format_report(report))
    if cfg.output is not None:
        atomic_write_json(cfg.output, report)
        print(f"\nscores written to {cfg.output}")
    return report.get("bleu4", 0.0)


def main() -> None:
    run()


if __name__ == "__main__":
    main()
