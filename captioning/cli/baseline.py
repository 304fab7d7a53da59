"""captioning-baseline: k-nearest-neighbour captioning of a split on an encoder's features, scored.

    captioning-baseline                                    # shapes, test split, k = 1 and 10
    captioning-baseline dataset=flickr8k split=val 'k=[1,5,25]'
    captioning-baseline checkpoint=runs/demo/checkpoints/best.pt output=runs/demo/knn
    captioning-baseline dataset=icons split=test_shifted checkpoint=runs/icons/checkpoints/best.pt fallback=0.05

Neighbours come from the training split; features from the feature cache that captioning-train fills.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from captioning.cli._conf import CONF_DIR
from captioning.cli.common import require, run_entry_point, user_errors


def knn_scores(cfg: DictConfig) -> dict:
    from captioning.baselines import NearestNeighbourCaptioner
    from captioning.data.features import cache_path, cached_features
    from captioning.data.splits import check_images, load_splits
    from captioning.engine import caption_scores
    from captioning.io import InputError, atomic_write_json
    from captioning.models import build_encoder, load_captioner
    from captioning.precision import resolve_device, resolve_precision
    from captioning.config import check
    from captioning.run_config import BaselineOptions, group_options

    dataset = group_options("dataset", OmegaConf.to_container(cfg.dataset, resolve=True))
    check(dataset)  # an extra test split may not be called train, val or test
    if cfg.split == "train" or cfg.split not in dataset.splits:
        raise InputError(f"split={cfg.split} is not one of {', '.join(list(dataset.splits)[1:])} "
                         f"(the neighbours come from train)")
    ks = list(cfg.k) if OmegaConf.is_list(cfg.k) else [cfg.k]
    if not ks or BaselineOptions(k=ks).problems():
        raise InputError(f"k must be positive integers, got {ks}")
    if cfg.fallback is not None and (not cfg.checkpoint or not 0 < cfg.fallback < 1):
        raise InputError(f"fallback={cfg.fallback} needs a checkpoint= to fall back from and a fraction of the "
                         f"validation images in (0, 1), such as 0.05")
    device = resolve_device(cfg.device)
    precision, why = resolve_precision(cfg.precision, device)
    print(f"features in {precision} ({why})", flush=True)
    cocos = load_splits(dataset)
    if cfg.checkpoint:
        encoder = load_captioner(cfg.checkpoint, device="cpu").encoder
    else:
        e = cfg.encoder
        encoder = build_encoder(e.name, pretrained=e.pretrained, weights=e.weights, image_size=e.image_size)
    features = {}
    for name in dict.fromkeys(("train", cfg.split) + (("val",) if cfg.fallback is not None else ())):
        if not cache_path(encoder.spec, cocos[name], cfg.cache_dir, precision).is_file():
            check_images(cocos[name])
        features[name] = cached_features(encoder, cocos[name], cfg.cache_dir, batch_size=cfg.encoder.batch_size,
                                         num_workers=cfg.encoder.num_workers, device=device,
                                         precision=precision, progress=cfg.progress)
    target = cocos[cfg.split]
    knn = NearestNeighbourCaptioner.of_split(cocos["train"], features["train"])  # an attention grid: its mean
    report = {}
    for k in ks:
        captions = knn.caption_split(target, features[cfg.split], k)
        report[f"knn{k}"] = caption_scores(captions, target.references())
        write_captions(cfg, f"knn{k}", captions)
    if cfg.fallback is not None:
        report |= fallback_scores(cfg, knn, features, target, max(ks))
    if cfg.output:
        atomic_write_json(Path(cfg.output) / "knn_scores.json", report)
    return report


def write_captions(cfg: DictConfig, name: str, captions: dict[int, str]) -> None:
    """<output>/<split>_<name>_captions.json in the COCO results format, where `output` is set."""
    from captioning.io import atomic_write_json

    if cfg.output:
        atomic_write_json(Path(cfg.output) / f"{cfg.split}_{name}_captions.json",
                          [{"image_id": i, "caption": c} for i, c in sorted(captions.items())])


def fallback_scores(cfg: DictConfig, knn, features: dict, target, k: int) -> dict:
    """The checkpoint's own captions (beam search as captioning-train's tests decode) and the fallback hybrid's
    (captioning/baselines.py), with its threshold: the `fallback` quantile of the validation images'
    similarity to their nearest training image."""
    from captioning.config import DecodeOptions
    from captioning.engine import caption_scores
    from captioning.models import load_captioner
    from captioning.precision import resolve_device

    captioner = load_captioner(cfg.checkpoint, device=resolve_device(cfg.device))
    decode = {"method": "beam", "beam_size": DecodeOptions().beam_size}
    hybrid = knn.caption_with_fallback(captioner, features[cfg.split], knn.threshold(features["val"], cfg.fallback), k,
                                       decode)
    results = {"model": hybrid.model, "fallback": hybrid.captions}
    report = {}
    for name, captions in results.items():
        by_id = dict(zip(target.image_ids, captions))
        report[name] = caption_scores(by_id, target.references())
        write_captions(cfg, name, by_id)
    report["fallback"] |= hybrid.summary()
    return report


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="baseline")
def run(cfg: DictConfig) -> None:
    require(cfg, "captioning-baseline dataset=coco dataset.train.annotations=... split=test")
    with user_errors():
        report = knn_scores(cfg)
    print(f"| {cfg.split}: nearest-neighbour captions | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D |\n"
          f"|---|---|---|---|---|---|")
    for name, m in report.items():
        if name == "model":
            label = "the checkpoint's captions"
        elif name == "fallback":
            label = (f"the checkpoint's, retrieval for the {m['fell_back']} of {m['images']} images less like training "
                     f"than {cfg.fallback:.0%} of val (cosine < {m['threshold']:.3f})")
        else:
            k = int(name[3:])
            label = "nearest training image's caption (k=1)" if k == 1 else f"consensus of the {k} nearest images"
        print(f"| {label} | " + " | ".join(f"{m[f'bleu{n}']:.4f}" for n in range(1, 5)) + f" | {m['cider']:.4f} |")


def main() -> None:
    run_entry_point(run)


if __name__ == "__main__":
    main()
