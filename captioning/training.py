"""The training run: data -> vocabulary -> (cached) features -> model -> epochs -> test.

`train(cfg, run_dir, make_optimizer)` takes the run's configuration as plain nested dicts
(the Hydra entry point converts its DictConfig), so it can be driven from Python too.
Everything a run produces lands in `run_dir`: vocab.json, checkpoints/{best,last}.pt,
metrics.csv, metrics.json, test_captions.json, curves.png and TensorBoard event files.
Under torchrun every process runs `train`; rank 0 alone writes (see `captioning.distributed`).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from captioning import distributed
from captioning.checkpoint import load_checkpoint, save_checkpoint
from captioning.config import DecodeOptions, DecoderOptions
from captioning.data.coco import CocoCaptions, load_coco_captions
from captioning.data.collate import collate_captions
from captioning.data.datasets import CaptionDataset
from captioning.data.features import cached_features
from captioning.engine import bleu_scores, evaluate_loss, generate_captions, train_one_epoch
from captioning.io import atomic_write_json
from captioning.models import Captioner, CaptionDecoder, DecoderConfig, build_encoder
from captioning.precision import check_precision, warn_if_slow
from captioning.runlog import RunLog
from captioning.text import Vocabulary, tokenize

SPLITS = ("train", "val", "test")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  min_lr_ratio: float, kind: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay from lr to lr * min_lr_ratio (or constant)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class SplitData:
    """One split's annotations with its datasets: all captions (loss) and one item per image (BLEU)."""

    def __init__(self, coco: CocoCaptions, vocab: Vocabulary, features: torch.Tensor | None, transform,
                 max_len: int):
        self.coco = coco
        kw = dict(features=features, transform=None if features is not None else transform, max_len=max_len)
        self.captions = CaptionDataset(coco, vocab, **kw)
        self.images = CaptionDataset(coco, vocab, per_image=True, **kw)

    def loader(self, per_image: bool, batch_size: int, num_workers: int, pad_id: int,
               sampler=None) -> DataLoader:
        return DataLoader(self.images if per_image else self.captions, batch_size=batch_size,
                          sampler=sampler, num_workers=num_workers,
                          collate_fn=lambda b: collate_captions(b, pad_id=pad_id))


def score_split(model: Captioner, split: SplitData, cfg: dict, device: torch.device, pad_id: int,
                desc: str) -> tuple[dict, dict[int, str]]:
    """Teacher-forced loss and BLEU-1..4 of generated captions on one split.

    Each rank evaluates its round-robin shard; the captions of all ranks are gathered, so every
    rank scores exactly the single-process set of images.
    """
    t, cached = cfg["trainer"], not cfg["encoder"]["trainable"]
    encoder = None if cached else model.encoder

    def loader(per_image: bool) -> DataLoader:
        n = len(split.images if per_image else split.captions)
        return split.loader(per_image, t["batch_size"] // distributed.world_size(), t["num_workers"], pad_id,
                            sampler=distributed.shard(n))

    loss = evaluate_loss(model.decoder, encoder, loader(False), device=device, pad_id=pad_id,
                         precision=t["precision"])
    decode = asdict(DecodeOptions(**cfg["decode"]))
    model.eval()

    def caption_fn(images: torch.Tensor) -> list[str]:
        images = images.to(device)
        with torch.no_grad():
            features = images if cached else model.encoder(images)
        return model.caption_features(features, **decode)

    results = generate_captions(caption_fn, loader(True), progress=t["progress"] if distributed.is_main() else False, desc=desc)
    results = distributed.gather_dict(results)
    return {"loss": loss, **bleu_scores(results, split.coco.references())}, results


def shuffled_control(results: dict[int, str], references: dict[int, list[str]], seed: int) -> dict:
    """BLEU when each image gets the caption generated for another image.

    Equivalent to shuffling image features across the split: if the decoder ignored the
    image, this would score as well as the real captions.
    """
    ids = sorted(results)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = {ids[i]: results[ids[j]] for i, j in enumerate(perm)}
    return bleu_scores(shuffled, references)


def build_model(cfg: dict, vocab: Vocabulary) -> tuple[Captioner, dict]:
    """The captioner a run's config describes (a pretrained encoder with its weights), and its model_config."""
    enc = cfg["encoder"]
    encoder = build_encoder(enc["name"], pretrained=enc["pretrained"], weights=enc["weights"],
                            trainable=enc["trainable"], image_size=enc["image_size"])
    dec_cfg = DecoderConfig(vocab_size=len(vocab), feature_dim=encoder.out_dim, **cfg["decoder"])
    return Captioner(encoder, CaptionDecoder(dec_cfg), vocab), {"encoder": encoder.spec, "decoder": asdict(dec_cfg)}


def build_optimizer(cfg: dict, model: Captioner, make_optimizer: Callable, total_steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """`make_optimizer` (Hydra's partial of cfg.optim.optimizer) over the trainable parameters, and the schedule."""
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    o = cfg["optim"]
    return optimizer, warmup_cosine(optimizer, total_steps, o["warmup_steps"], o["min_lr_ratio"], o["scheduler"])


def train(cfg: dict, run_dir: str | Path,
          make_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]) -> dict:
    """Train, validate every epoch, then score the best checkpoint on the test split.

    Under torchrun (WORLD_SIZE > 1) this joins the process group and trains data-parallel;
    `trainer.batch_size` stays the global batch, so the steps are those of one process.
    """
    with distributed.process_group(resolve_device(cfg["trainer"]["device"])) as device:
        return _train(cfg, Path(run_dir), make_optimizer, device)


def _train(cfg: dict, run_dir: Path, make_optimizer: Callable, device: torch.device) -> dict:
    t, d = cfg["trainer"], cfg["dataset"]
    main, world = distributed.is_main(), distributed.world_size()
    if t["batch_size"] % world:
        raise ValueError(f"trainer.batch_size={t['batch_size']} is the global batch: it must divide "
                         f"evenly over the {world} processes")
    progress = t["progress"] if main else False  # (not `and`: "auto" and True is True)
    DecoderOptions(**cfg["decoder"]).check()  # options that cannot work fail now, not after the feature pass
    DecodeOptions(**cfg["decode"]).check()
    check_precision(t["precision"])
    if main:
        warn_if_slow(device, t["precision"])
    random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    cocos = {s: load_coco_captions(d[s]["annotations"], d[s]["images"],
                                   check_images=cfg["encoder"]["trainable"]) for s in SPLITS}

    resume = load_checkpoint(t["resume"]) if t.get("resume") else None
    if resume is not None:
        vocab = Vocabulary.from_dict(resume["vocab"])
    else:
        vocab = Vocabulary.build((tokenize(c) for cs in cocos["train"].captions.values() for c in cs),
                                 min_count=cfg["vocab"]["min_count"], max_size=cfg["vocab"]["max_size"])
    if main:
        vocab.save(run_dir / "vocab.json")

    model, model_config = build_model(cfg, vocab)
    encoder, enc = model.encoder, cfg["encoder"]
    features = {s: None for s in SPLITS}
    if not enc["trainable"]:
        def split_features(build: bool) -> dict:
            return {s: cached_features(encoder, cocos[s], cfg["cache_dir"], batch_size=enc["batch_size"],
                                       num_workers=enc["num_workers"], device=device, precision=t["precision"],
                                       progress=progress, build=build) for s in SPLITS}
        if main:
            features = split_features(build=True)
        distributed.barrier()  # the cache is complete: the other ranks read it
        if not main:
            features = split_features(build=False)
    splits = {s: SplitData(cocos[s], vocab, features[s], encoder.transform, d["max_caption_len"]) for s in SPLITS}

    model.to(device)

    # The same permutation for any number of ranks (torch.randperm seeded with seed + epoch); rank r
    # takes items r, r+W, ..., so the union of the ranks' k-th batches is the one-process k-th batch.
    sampler = DistributedSampler(splits["train"].captions, num_replicas=world, rank=distributed.rank(),
                                 shuffle=True, seed=cfg["seed"] * 100_003)
    train_loader = splits["train"].loader(False, t["batch_size"] // world, t["num_workers"], vocab.pad_id, sampler)
    total_steps = t["max_steps"] or t["max_epochs"] * len(train_loader)
    optimizer, scheduler = build_optimizer(cfg, model, make_optimizer, total_steps)

    start_epoch, best, stale, history = 1, -1.0, 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        ts = resume["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        start_epoch, best, stale, history = ts["epoch"] + 1, ts["best_bleu4"], ts["stale_epochs"], ts["history"]
    decoder, trained_encoder = model.decoder, model.encoder if enc["trainable"] else None
    if world > 1:  # DDP all-reduces the gradients during backward; it also broadcasts rank 0's weights now
        ids = [device] if device.type == "cuda" else None
        decoder = DistributedDataParallel(decoder, device_ids=ids)
        if trained_encoder is not None:
            trained_encoder = DistributedDataParallel(trained_encoder, device_ids=ids)
    log = RunLog(run_dir, tensorboard=t["tensorboard"], history=history) if main else None
    ckpt_dir = run_dir / "checkpoints"

    def checkpoint(name: str, epoch: int) -> None:
        save_checkpoint(ckpt_dir / name, model_state=model.state_dict(), vocab=vocab, model_config=model_config,
                        train_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                     "epoch": epoch, "best_bleu4": best, "stale_epochs": stale, "history": history},
                        run_config=cfg)

    deadline = time.time() + 60 * t["max_minutes"] if t.get("max_minutes") else None
    for epoch in range(start_epoch, t["max_epochs"] + 1):
        if scheduler.last_epoch >= total_steps or stale >= t["patience"] or \
                (deadline and distributed.any_rank(time.time() >= deadline, device)):
            break
        sampler.set_epoch(epoch)  # the epoch's order, and (below) its dropout masks: the same after a resume
        torch.manual_seed((cfg["seed"] * 100_003 + epoch) * world + distributed.rank())
        stats = train_one_epoch(decoder, trained_encoder, train_loader, optimizer, scheduler, device=device,
                                pad_id=vocab.pad_id, grad_clip=t["grad_clip"], label_smoothing=t["label_smoothing"],
                                precision=t["precision"], max_steps=total_steps, deadline=deadline,
                                progress=progress, desc=f"epoch {epoch}",
                                on_step=(lambda s: log.log_step(scheduler.last_epoch, s)) if main else None)
        val, _ = score_split(model, splits["val"], cfg, device, vocab.pad_id, desc="val")
        improved = val["bleu4"] > best  # the same on every rank: all score the same gathered captions
        best, stale = (val["bleu4"], 0) if improved else (best, stale + 1)
        row = {"epoch": epoch, "step": scheduler.last_epoch, "train_loss": stats["loss"], "val_loss": val["loss"],
               **{f"val_{k}": v for k, v in val.items() if k.startswith("bleu")},
               "tokens_per_s": stats["tokens_per_s"], "lr": optimizer.param_groups[0]["lr"]}
        history.append(row)
        if main:
            log.log_epoch(row)
            print(f"epoch {epoch:3d}  step {row['step']:6d}  train loss {stats['loss']:.3f}  val loss {val['loss']:.3f}"
                  f"  val BLEU-4 {val['bleu4']:.4f}{'  *' if improved else ''}", flush=True)
            checkpoint("last.pt", epoch)
            if improved:
                checkpoint("best.pt", epoch)

    best_ckpt = ckpt_dir / "best.pt"
    if main and best_ckpt.is_file():
        model.load_state_dict(load_checkpoint(best_ckpt)["model"])
    distributed.broadcast_module_(model)  # every rank tests rank 0's best weights
    test, results = score_split(model, splits["test"], cfg, device, vocab.pad_id, desc="test")
    best_epoch = next((r["epoch"] for r in history if r["val_bleu4"] == best), None)
    metrics = {"test": test, "best_val_bleu4": best, "best_epoch": best_epoch, "epochs": history}
    if cfg.get("control", True):
        metrics["test_shuffled_images"] = shuffled_control(results, splits["test"].coco.references(), cfg["seed"])
    if main:
        atomic_write_json(run_dir / "test_captions.json",
                          [{"image_id": i, "caption": c} for i, c in sorted(results.items())])
        atomic_write_json(run_dir / "metrics.json", metrics)
        if history:
            log.plot_curves()
        log.close()
    return metrics
