"""The training run: data -> vocabulary -> model -> (cached) features -> epochs -> test.

`train(cfg, run_dir, make_optimizer)` takes the run's configuration as plain nested dicts
(the Hydra entry point converts its DictConfig), so it can be driven from Python too.
Everything a run produces lands in `run_dir`: vocab.json, checkpoints/{best,last}.pt,
metrics.csv, metrics.json, test_captions.json, curves.png and TensorBoard event files.
Under torchrun every process runs `train`; rank 0 alone writes (see `captioning.distributed`).

Everything that can be checked is checked before the feature pass: options, the splits (none empty),
every image that will be read (headers), the checkpoint to resume from. A SIGTERM or Ctrl-C saves
last.pt exactly where the run is (`captioning.interrupt`); a NaN stops the run before any checkpoint
is overwritten (`engine.Diverged`); see `captioning.run_state` for what each checkpoint holds.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from captioning import distributed, interrupt
from captioning.checkpoint import load_checkpoint
from captioning.config import DecodeOptions, DecoderOptions, TrainerOptions
from captioning.data.features import cache_path, cached_features
from captioning.baselines import NearestNeighbourCaptioner
from captioning.data.splits import SplitData, check_images, load_splits, split_names, test_names
from captioning.engine import Diverged, caption_scores, evaluate_loss, generate_captions, train_one_epoch
from captioning.io import InputError, atomic_write_json, remove_stale_temp_files
from captioning.models import Captioner, CaptionDecoder, DecoderConfig, build_encoder
from captioning.optim import build_optimizer
from captioning.precision import resolve_device, warn_if_slow
from captioning.run_state import TrainState, check_resumable, restore, resume_path, save_run_checkpoint
from captioning.runlog import RunLog
from captioning.text import Vocabulary, tokenize


def build_model(cfg: dict, vocab: Vocabulary) -> tuple[Captioner, dict]:
    """The captioner a run's config describes (a pretrained encoder with its weights), and its model_config."""
    enc = cfg["encoder"]
    encoder = build_encoder(enc["name"], pretrained=enc["pretrained"], weights=enc["weights"],
                            trainable=enc["trainable"], image_size=enc["image_size"])
    dec_cfg = DecoderConfig(vocab_size=len(vocab), feature_dim=encoder.out_dim, **cfg["decoder"])
    return Captioner(encoder, CaptionDecoder(dec_cfg), vocab), {"encoder": encoder.spec, "decoder": asdict(dec_cfg)}


def score_split(model: Captioner, split: SplitData, cfg: dict, device: torch.device, desc: str
                ) -> tuple[dict, dict[int, str]]:
    """Teacher-forced loss, BLEU-1..4 and CIDEr-D of generated captions on one split.

    Each rank evaluates its round-robin shard; the captions of all ranks are gathered, so every
    rank scores exactly the single-process set of images.
    """
    t, cached, pad_id = cfg["trainer"], not cfg["encoder"]["trainable"], model.vocab.pad_id
    encoder = None if cached else model.encoder

    def loader(per_image: bool):
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

    results = generate_captions(caption_fn, loader(True), desc=desc,
                                progress=t["progress"] if distributed.is_main() else False)
    results = distributed.gather_dict(results)
    return {"loss": loss, **caption_scores(results, split.coco.references())}, results


def shuffled_control(results: dict[int, str], references: dict[int, list[str]], seed: int) -> dict:
    """BLEU when each image gets the caption generated for another image.

    Equivalent to shuffling image features across the split: if the decoder ignored the
    image, this would score as well as the real captions.
    """
    ids = sorted(results)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = {ids[i]: results[ids[j]] for i, j in enumerate(perm)}
    return caption_scores(shuffled, references)


def check_config(cfg: dict) -> TrainerOptions:
    """Every option that cannot work, as one InputError, before anything is read."""
    opts = TrainerOptions(**cfg["trainer"])
    problems = [*opts.problems(), *DecoderOptions(**cfg["decoder"]).problems(),
                *DecodeOptions(**cfg["decode"]).problems()]
    lr = cfg["optim"]["optimizer"].get("lr")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        problems.append(f"optim.optimizer.lr must be a positive number, got {lr}")
    if opts.batch_size > 0 and opts.batch_size % distributed.world_size():
        problems.append(f"trainer.batch_size={opts.batch_size} is the global batch: it must divide evenly over "
                        f"the {distributed.world_size()} processes")
    if problems:
        raise InputError("; ".join(problems))
    return opts


def train(cfg: dict, run_dir: str | Path, make_optimizer: Callable) -> dict:
    """Train, validate every epoch, then score the best checkpoint on the test split.

    Under torchrun (WORLD_SIZE > 1) this joins the process group and trains data-parallel;
    `trainer.batch_size` stays the global batch, so the steps are those of one process.
    """
    opts = check_config(cfg)
    with distributed.process_group(resolve_device(opts.device)) as device, interrupt.catch_signals():
        return _train(cfg, opts, Path(run_dir), make_optimizer, device)


def _train(cfg: dict, opts: TrainerOptions, run_dir: Path, make_optimizer: Callable, device: torch.device) -> dict:
    main, world = distributed.is_main(), distributed.world_size()
    ckpt_dir = run_dir / "checkpoints"
    if main:
        warn_if_slow(device, opts.precision)
        for folder in (run_dir, ckpt_dir, cfg["cache_dir"]):
            remove_stale_temp_files(folder)  # left by a run killed while saving
    random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    cocos = load_splits(cfg["dataset"])
    names = split_names(cfg["dataset"])
    resume = resume_path(opts.resume, run_dir)
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        vocab = Vocabulary.from_dict(ckpt["vocab"])
    else:
        vocab = Vocabulary.build((tokenize(c) for cs in cocos["train"].captions.values() for c in cs),
                                 min_count=cfg["vocab"]["min_count"], max_size=cfg["vocab"]["max_size"])
    model, model_config = build_model(cfg, vocab)
    if ckpt is not None:
        check_resumable(resume, ckpt, model_config)
    encoder, frozen = model.encoder, not cfg["encoder"]["trainable"]
    for s in names:  # every image that will be read: now, not after an hour of feature extraction
        if not frozen or not cache_path(encoder.spec, cocos[s], cfg["cache_dir"], opts.precision).is_file():
            check_images(cocos[s])
    if main:
        vocab.save(run_dir / "vocab.json")

    model.to(device)
    features = {s: None for s in names}
    if frozen:
        def split_features(build: bool) -> dict:
            return {s: cached_features(encoder, cocos[s], cfg["cache_dir"], batch_size=cfg["encoder"]["batch_size"],
                                       num_workers=cfg["encoder"]["num_workers"], device=device,
                                       precision=opts.precision, progress=opts.progress if main else False,
                                       build=build) for s in names}
        if main:
            features = split_features(build=True)
        distributed.barrier()  # the cache is complete: the other ranks read it
        if not main:
            features = split_features(build=False)
    splits = {s: SplitData(cocos[s], vocab, features[s], encoder.transform, cfg["dataset"]["max_caption_len"])
              for s in names}

    local_batch = opts.batch_size // world
    # The same permutation for any number of ranks (torch.randperm seeded with seed + epoch); rank r
    # takes items r, r+W, ..., so the union of the ranks' k-th batches is the one-process k-th batch.
    sampler = distributed.ResumableSampler(splits["train"].captions, num_replicas=world, rank=distributed.rank(),
                                           shuffle=True, seed=cfg["seed"] * 100_003)
    train_loader = splits["train"].loader(False, local_batch, opts.num_workers, vocab.pad_id, sampler)
    total_steps = opts.max_steps or opts.max_epochs * len(train_loader)
    optimizer, scheduler = build_optimizer(cfg["optim"], model, make_optimizer, total_steps)
    state = TrainState()
    if ckpt is not None:
        state = restore(resume, ckpt, run_dir, model, optimizer, scheduler, cfg, copy_best=main)

    decoder, trained_encoder = model.decoder, None if frozen else model.encoder
    if world > 1:  # DDP all-reduces the gradients during backward; it also broadcasts rank 0's weights now
        ids = [device] if device.type == "cuda" else None
        decoder = DistributedDataParallel(decoder, device_ids=ids)
        if trained_encoder is not None:
            trained_encoder = DistributedDataParallel(trained_encoder, device_ids=ids)
    log = RunLog(run_dir, tensorboard=opts.tensorboard, history=state.history) if main else None

    def save(name: str, score: float | None = None) -> None:
        save_run_checkpoint(ckpt_dir / name, model, vocab, model_config, optimizer, scheduler, state, cfg, score)

    def finished() -> bool:
        if state.batch:  # an interrupted epoch: train what is left of it, then validate
            return False
        return state.epoch > opts.max_epochs or state.step >= total_steps or state.stale >= opts.patience

    if resume is not None and finished() and main:
        print(f"nothing left to train from {resume} (epoch {state.epoch - 1}, step {state.step}); "
              f"scoring best.pt on the test split", flush=True)
    deadline = time.time() + 60 * opts.max_minutes if opts.max_minutes else None
    try:
        while not finished() and not (deadline and distributed.any_rank(time.time() >= deadline, device)):
            sampler.set_epoch(state.epoch)  # the epoch's order, and (below) its dropout masks: the same after a resume
            sampler.skip = state.batch * local_batch
            if state.batch == 0:  # mid-epoch, the restored RNG state goes on instead
                torch.manual_seed((cfg["seed"] * 100_003 + state.epoch) * world + distributed.rank())
            stats = train_one_epoch(decoder, trained_encoder, train_loader, optimizer, scheduler, state, opts,
                                    device=device, pad_id=vocab.pad_id, deadline=deadline,
                                    on_step=(lambda s: log.log_step(state.step, s)) if main else None)
            if state.tokens == 0:
                raise Diverged(f"training diverged: every step of epoch {state.epoch} was non-finite "
                               f"({state.skipped} skipped)")
            val, _ = score_split(model, splits["val"], cfg, device, desc="val")
            improved = val[opts.select_on] > state.best_score  # the same on every rank: all score the same captions
            if improved:
                state.best_score, state.best_epoch = val[opts.select_on], state.epoch
            row = {"epoch": state.epoch, "step": state.step, "train_loss": state.loss_sum / state.tokens,
                   **{f"val_{k}": v for k, v in val.items()}, "tokens_per_s": stats["tokens_per_s"],
                   "train_seconds": stats["seconds"], "lr": optimizer.param_groups[0]["lr"],
                   "skipped_steps": state.skipped}
            state.history.append(row)
            if main:
                log.log_epoch(row)
                skipped = f"  ({state.skipped} non-finite steps skipped)" if state.skipped else ""
                print(f"epoch {state.epoch:3d}  step {state.step:6d}  train loss {row['train_loss']:.3f}  "
                      f"val loss {val['loss']:.3f}  val BLEU-4 {val['bleu4']:.4f}  CIDEr-D {val['cider']:.3f}"
                      f"{'  *' if improved else ''}{skipped}",
                      flush=True)
                if improved:
                    save("best.pt", score=val[opts.select_on])  # before last.pt: see captioning.run_state
            state.next_epoch()
            if main:
                save("last.pt")
    except interrupt.Interrupted as e:
        if main:
            save("last.pt")
        e.checkpoint, e.where = ckpt_dir / "last.pt", f"step {state.step} (epoch {state.epoch}, batch {state.batch})"
        raise
    except Diverged as e:  # nothing was saved since the last finite epoch
        last = ckpt_dir / "last.pt"
        kept = f"{last} keeps the end of epoch {state.epoch - 1}" if last.is_file() else "no checkpoint was written"
        raise Diverged(f"{e}; {kept}. Try a lower optim.optimizer.lr, a smaller trainer.grad_clip, or "
                       f"trainer.nonfinite=skip") from None

    best = ckpt_dir / "best.pt"
    if main:
        if not best.is_file():
            raise InputError(f"no {best} to score: this run trained no epoch to the end")
        model.load_state_dict(load_checkpoint(best)["model"])
    distributed.broadcast_module_(model)  # every rank tests rank 0's best weights
    trained = [p for p in model.parameters() if p.requires_grad]
    metrics = {"select_on": opts.select_on, "best_val_score": state.best_score, "best_epoch": state.best_epoch,
               "parameters": sum(p.numel() for p in trained),
               "train_seconds": sum(row.get("train_seconds", 0.0) for row in state.history),
               **score_tests(model, splits, features, cfg, device, run_dir if main else None), "epochs": state.history}
    if main:
        atomic_write_json(run_dir / "metrics.json", metrics)
        log.plot_curves()
        log.close()
    return metrics


def score_tests(model: Captioner, splits: dict[str, SplitData], features: dict, cfg: dict, device: torch.device,
                out_dir: Path | None) -> dict:
    """Every test split (`test` and the dataset's extra ones): the model's captions and, beside them, what
    they would score given to the wrong images (the control) and the retrieval baselines on the same
    features (with a frozen encoder): {name: scores, name_shuffled_images, name_knn, name_knn_consensus}.
    The model's captions go to out_dir/{name}_captions.json."""
    baseline = cfg.get("baseline") or {}
    knn = None
    if baseline.get("knn") and features["train"] is not None:
        coco = splits["train"].coco
        knn = NearestNeighbourCaptioner(features["train"], [coco.captions[i] for i in coco.image_ids])
    metrics = {}
    for name in test_names(cfg["dataset"]):
        scores, results = score_split(model, splits[name], cfg, device, desc=name)
        references = splits[name].coco.references()
        metrics[name] = scores
        if cfg.get("control", True):
            metrics[f"{name}_shuffled_images"] = shuffled_control(results, references, cfg["seed"])
        if knn is not None:
            ids = splits[name].coco.image_ids
            for key, k in (("knn", 1), ("knn_consensus", baseline.get("consensus_k"))):
                if k:
                    captions = dict(zip(ids, knn.caption(features[name], k=k)))
                    metrics[f"{name}_{key}"] = {"k": k, **caption_scores(captions, references)}
        if out_dir is not None:
            atomic_write_json(out_dir / f"{name}_captions.json",
                              [{"image_id": i, "caption": c} for i, c in sorted(results.items())])
    return metrics
