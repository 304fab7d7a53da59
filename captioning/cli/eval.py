"""captioning-eval: BLEU-1..4 and CIDEr-D (official COCO scorer parity, no Java), optionally METEOR/ROUGE-L.

    captioning-eval annotations=REFS.json results=RESULTS.json [output=SCORES.json]
    captioning-eval ... metrics=[bleu,cider,meteor,rouge_l] allow_subset=true bleu.flavour=nltk

Nothing is written to the working directory except `output` (conf/eval.yaml turns off Hydra's run
directory and logs).
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from captioning.cli._conf import CONF_DIR
from captioning.cli.common import fail, require, run_entry_point, user_errors
from captioning.io import atomic_write_json
from captioning.metrics.evaluate import evaluate_files, format_report


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def run(cfg: DictConfig) -> float:
    require(cfg, "captioning-eval annotations=REFS.json results=RESULTS.json")
    if cfg.output is not None and Path(cfg.output).is_dir():
        fail(f"output={cfg.output} is a directory; give the path of the JSON file to write, e.g. output=scores.json")
    metrics = cfg.metrics if OmegaConf.is_list(cfg.metrics) else [cfg.metrics]  # metrics=bleu works too
    with user_errors():
        report = evaluate_files(cfg.annotations, cfg.results, metrics=[str(m) for m in metrics],
                                flavour=cfg.bleu.flavour, allow_subset=cfg.allow_subset)
    print(format_report(report))
    if cfg.output is not None:
        atomic_write_json(cfg.output, report)
        print(f"\nscores written to {cfg.output}")
    return report.get("bleu4", 0.0)


def main() -> None:
    run_entry_point(run)


if __name__ == "__main__":
    main()
