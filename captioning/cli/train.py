"""captioning-train: the Hydra entry point for training runs and sweeps.

    captioning-train                                   # shapes demo defaults
    captioning-train dataset=coco dataset.train.annotations=... encoder=resnet101
    captioning-train -m decoder.cell=rnn,lstm          # one run directory per value
"""
from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from captioning.cli._conf import CONF_DIR
from captioning.io import InputError


def _summary(metrics: dict, run_dir: str) -> str:
    test = metrics["test"]
    lines = ["", "| split | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 |", "|---|---|---|---|---|",
             "| test | " + " | ".join(f"{test[f'bleu{n}']:.4f}" for n in range(1, 5)) + " |"]
    if "test_shuffled_images" in metrics:
        c = metrics["test_shuffled_images"]
        lines.append("| test, images shuffled (control) | " + " | ".join(f"{c[f'bleu{n}']:.4f}" for n in range(1, 5)) + " |")
    lines += ["", f"run directory: {run_dir}  (metrics.json, test_captions.json, curves.png, checkpoints/best.pt)"]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def run(cfg: DictConfig) -> float:
    from captioning.training import train  # heavy imports after Hydra has parsed the command line

    run_dir = HydraConfig.get().runtime.output_dir
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    make_optimizer = instantiate(cfg.optim.optimizer)  # a partial: parameters come at run time
    try:
        metrics = train(plain, run_dir, make_optimizer)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process returns the same metrics
        print(_summary(metrics, run_dir))
    return metrics["test"]["bleu4"]  # the value a sweeper would optimise


def main() -> None:
    run()


if __name__ == "__main__":
    main()
