"""captioning-train: the Hydra entry point for training runs and sweeps.

    captioning-train                                   # shapes demo defaults
    captioning-train dataset=flickr8k dataset.root=data/flickr8k encoder=resnet101
    captioning-train -m decoder.cell=rnn,lstm          # one run directory per value

The value returned to Hydra (what a sweeper optimises) is the best validation score (CIDEr-D or
BLEU-4, `trainer.select_on`): sweeps must never tune on the test split.
"""
from __future__ import annotations

import os
import shlex
from functools import lru_cache
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from captioning.cli._conf import CONF_DIR
from captioning.cli.common import copy_output_to, fail, require, run_entry_point, stop, user_errors
from captioning.config import not_an_option

EXAMPLE = ("captioning-train dataset=coco dataset.train.annotations=data/coco/captions_train.json "
           "dataset.train.images=data/coco/images (and the same for val and test)")


def _rows(metrics: dict, split: str) -> list[tuple[str, dict]]:
    """The split's rows of the summary: the model, the retrieval baselines ({split}_knn{k}), the model with the
    retrieval fallback ({split}_fallback), the control."""
    from captioning.report import baselines

    return [("the model", metrics[split]),
            *(("nearest training image's caption (k=1)" if k == 1 else
               f"consensus of the {k} nearest images' captions", metrics[f"{split}_knn{k}"])
              for k in baselines(metrics, split)),
            *([(f"the model, retrieval for the {m['fell_back']} of {m['images']} images unlike training", m)
               for m in [metrics[f"{split}_fallback"]]] if f"{split}_fallback" in metrics else []),
            *([("control: the model's captions on shuffled images", metrics[f"{split}_shuffled_images"])]
              if f"{split}_shuffled_images" in metrics else [])]


def _summary(metrics: dict, run_dir: str) -> str:
    lines = ["", "| split | captions | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D |", "|---|---|---|---|---|---|---|"]
    for split in [k for k in metrics if isinstance(metrics[k], dict) and "loss" in metrics[k]]:
        lines += [f"| {split} | {what} | " + " | ".join(f"{m[f'bleu{n}']:.4f}" for n in range(1, 5))
                  + f" | {m['cider']:.4f} |" for what, m in _rows(metrics, split)]
    name = {"cider": "CIDEr-D", "bleu4": "BLEU-4"}[metrics["select_on"]]
    lines += ["", f"best validation {name} {metrics['best_val_score']:.4f} (epoch {metrics['best_epoch']}); "
                  f"run directory: {run_dir}  (metrics.json, test_captions.json, curves.png, checkpoints/best.pt)"]
    return "\n".join(lines)


@lru_cache(maxsize=1)
def _train_yaml() -> tuple[list[str], dict]:
    """conf/train.yaml's groups and its other keys (read once: a sweep checks every job with them)."""
    base = OmegaConf.load(Path(CONF_DIR) / "train.yaml")
    groups = [next(iter(entry)) for entry in base.defaults if not isinstance(entry, str)]
    return groups, {key: base[key] for key in base if key not in ("defaults", "hydra")}


def added_keys(cfg: DictConfig) -> list[str]:
    """One message per key that no config of captioning-train has, outside the groups with schemas (which
    `config.unknown_options` checks): `+seeds=3` or `+vocab.min_cout=5` would otherwise be ignored in silence."""
    groups, known = _train_yaml()
    problems = []
    for key in cfg:
        if key in groups or key == "hydra":
            continue
        if key not in known:
            problems.append(not_an_option(key, [*known, *groups], "captioning-train"))
        elif isinstance(known[key], DictConfig) and isinstance(cfg[key], DictConfig):
            problems += [not_an_option(f"{key}.{sub}", [f"{key}.{k}" for k in known[key]], "captioning-train")
                         for sub in cfg[key] if sub not in known[key]]
    return problems


def _resume_command(checkpoint: str, run_dir: str) -> str:
    """This run's command line (a sweep job's own values included) with trainer.resume and its run directory."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("trainer.resume=", "hydra.run.dir="))]
    command = shlex.join(["captioning-train", *overrides, f"trainer.resume={checkpoint}", f"hydra.run.dir={run_dir}"])
    return command + (" (with the same launcher, e.g. torchrun)" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def run(cfg: DictConfig) -> float:
    require(cfg, EXAMPLE)
    if problems := added_keys(cfg):
        fail("; ".join(problems))
    from captioning.training import train  # heavy imports after Hydra has parsed the command line

    from captioning.engine import Diverged
    from captioning.interrupt import Interrupted

    run_dir = HydraConfig.get().runtime.output_dir
    plain = OmegaConf.to_container(cfg, resolve=True)
    make_optimizer = instantiate(cfg.optim.optimizer)  # a partial: parameters come at run time
    with copy_output_to(Path(run_dir) / "train.log"):
        try:
            with user_errors():
                metrics = train(plain, run_dir, make_optimizer)
        except Diverged as e:
            fail(str(e))
        except Interrupted as e:
            if e.checkpoint is None:
                stop(f"interrupted by {e} before training started: nothing to resume", 128 + e.signum)
            stop(f"interrupted by {e} at {e.where}: saved {e.checkpoint}; continue with: "
                 f"{_resume_command(e.checkpoint, run_dir)}", 128 + e.signum)
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process returns the same metrics
            print(_summary(metrics, run_dir))
    return metrics["best_val_score"]  # the sweep objective: validation (trainer.select_on), never test


def main() -> None:
    run_entry_point(run)


if __name__ == "__main__":
    main()
