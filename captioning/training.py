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
import warnings
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from captioning import distributed, engine, interrupt
from captioning.checkpoint import load_checkpoint
from captioning.config import (AugmentOptions, DecodeOptions, DecoderOptions, SCSTOptions, TrainerOptions,
                               unknown_options)
from captioning.cpus import keep_freed_memory, set_threads
from captioning.data.coco import CocoCaptions
from captioning.data.features import cache_path, cached_features
from captioning.data.splits import SplitData, check_images, load_splits, split_names
from captioning.engine import Diverged
from captioning.finetune import cache_spec, finetune_problems, image_splits, prepare_encoder, trains_encoder
from captioning.io import InputError, atomic_write_json, remove_stale_temp_files
from captioning.models import Captioner, DecoderConfig, build_decoder, build_encoder
from captioning.optim import (build_optimizer, learning_rate_problems, param_groups, reconfigure, schedule_problems,
                              validated, warmup_warning)
from captioning.precision import resolve_device, resolve_precision, warn_if_slow
from captioning.run_state import (SCST_NEEDS_INIT, TrainState, check_resumable, check_same_model, decoder_from,
                                  restore, resume_path, rng_states, save_run_checkpoint, starting_point)
from captioning.scst import CiderReward, SCSTObjective
from captioning.runlog import RunLog
from captioning.text import Vocabulary, tokenize


def build_model(cfg: dict, vocab: Vocabulary) -> tuple[Captioner, dict]:
    """The captioner a run's config describes (a pretrained encoder with its weights), and its model_config."""
    enc, options = cfg["encoder"], cfg["decoder"]
    encoder = build_encoder(enc["name"], pretrained=enc["pretrained"], weights=enc["weights"],
                            trainable=trains_encoder(enc), image_size=enc["image_size"],
                            grid=options.get("inject") == "attention")  # attention reads the grid
    prepare_encoder(encoder, enc)  # the blocks to train, or frozen until encoder.finetune_from_epoch
    dec_cfg = DecoderConfig.from_dict({**options, "vocab_size": len(vocab), "feature_dim": encoder.out_dim})
    return Captioner(encoder, build_decoder(dec_cfg), vocab), {"encoder": encoder.spec, "decoder": asdict(dec_cfg)}


def check_config(cfg: dict) -> TrainerOptions:
    """Every option that cannot work, as one InputError, before anything is read."""
    groups = [(TrainerOptions, cfg["trainer"], "trainer"), (SCSTOptions, cfg["scst"], "scst"),
              (DecoderOptions, cfg["decoder"], "decoder"), (DecodeOptions, cfg["decode"], "decode"),
              (AugmentOptions, cfg["dataset"].get("augment", {}), "dataset.augment")]
    unknown = [problem for group in groups for problem in unknown_options(*group)]
    if unknown:  # `+group.key=...` overrides: the schemas cannot be built with them
        raise InputError("; ".join(unknown))
    opts, scst, decoder, decode, augment = (schema(**values) for schema, values, _ in groups)
    problems = [*opts.problems(), *decoder.problems(), *decode.problems(), *(scst.problems() if scst.enabled else []),
                *finetune_problems(cfg["encoder"]), *augment.problems()]
    if scst.enabled and not (opts.init_from or opts.resume):
        problems.append(SCST_NEEDS_INIT)
    if scst.enabled and trains_encoder(cfg["encoder"]):  # its captions are sampled from features, without gradient
        problems.append("scst.enabled trains the decoder alone: drop encoder.trainable and "
                        "encoder.finetune_from_epoch (to use a fine-tuned CNN, start from its run: "
                        "trainer.init_from=RUN/checkpoints/best.pt caches that CNN's features)")
    problems += schedule_problems(cfg["optim"]) + learning_rate_problems(cfg["optim"])
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
    precision, why = resolve_precision(opts.precision, device)  # what trainer.precision=auto means here
    threads, threads_why = set_threads(opts.threads)
    keep_freed_memory()
    opts, cfg = replace(opts, precision=precision), {**cfg, "trainer": {**cfg["trainer"], "precision": precision}}
    if main:
        print(f"precision {precision} ({why}); {threads} CPU threads ({threads_why})", flush=True)
        warn_if_slow(device, opts.precision)
        for folder in (run_dir, ckpt_dir, cfg["cache_dir"]):
            remove_stale_temp_files(folder)  # left by a run killed while saving
    random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    cocos = load_splits(cfg["dataset"])
    names = split_names(cfg["dataset"])
    resume = resume_path(opts.resume, run_dir)
    ckpt = load_checkpoint(resume) if resume is not None else None
    scst = SCSTOptions(**cfg["scst"])
    init_from = starting_point(opts, scst.enabled, ckpt_dir, resume, ckpt)
    init = load_checkpoint(init_from) if init_from else None  # its weights, vocabulary and decoder
    cfg = {**cfg, "trainer": {**cfg["trainer"], "init_from": init_from}}  # as the run was started, in its checkpoints
    if ckpt is not None or init is not None:
        vocab = Vocabulary.from_dict((ckpt or init)["vocab"])
    else:
        vocab = Vocabulary.build((tokenize(c) for cs in cocos["train"].captions.values() for c in cs),
                                 min_count=cfg["vocab"]["min_count"], max_size=cfg["vocab"]["max_size"])
    if init is not None:  # its sizes, this command line's dropout: the run's config says what the model is
        decoder, overridden = decoder_from(init["model_config"]["decoder"], cfg["decoder"])
        cfg = {**cfg, "decoder": decoder}
        if main and ckpt is None:  # said when the run starts, not at every resume
            if overridden:
                warnings.warn(f"trainer.init_from={init_from}: the decoder is the checkpoint's: {', '.join(overridden)}")
            if message := unknown_words(vocab, cocos["train"], init_from):
                warnings.warn(message)
    model, model_config = build_model(cfg, vocab)
    if init is not None:  # also when resuming: the features below are those of the CNN the run started with
        check_same_model(Path(init_from), init, model_config, action="start from")
        model.load_state_dict(init["model"])
    if ckpt is not None:
        check_resumable(resume, ckpt, model_config, opts.batch_size)
    encoder, enc = model.encoder, cfg["encoder"]
    cached, finetune_from = not enc["trainable"], enc.get("finetune_from_epoch")  # features: all run, or until then
    feature_spec = cache_spec(encoder, init["model_config"]["encoder"] if init is not None else None)
    for s in names:  # every image that will be read: now, not after an hour of feature extraction
        if trains_encoder(enc) or not cache_path(feature_spec, cocos[s], cfg["cache_dir"], opts.precision).is_file():
            check_images(cocos[s])
    if main:
        vocab.save(run_dir / "vocab.json")

    model.to(device)
    features = {s: None for s in names}
    if cached:
        def split_features(build: bool) -> dict:
            return {s: cached_features(encoder, cocos[s], cfg["cache_dir"], spec=feature_spec, build=build,
                                       batch_size=enc["batch_size"], num_workers=enc["num_workers"], device=device,
                                       precision=opts.precision, progress=opts.progress if main else False)
                    for s in names}
        if main:
            features = split_features(build=True)
        distributed.barrier()  # the cache is complete: the other ranks read it
        if not main:
            features = split_features(build=False)
    splits = ({s: SplitData(cocos[s], vocab, features[s], None, cfg["dataset"]["max_caption_len"]) for s in names}
              if cached else image_splits(cocos, vocab, encoder, cfg))

    local_batch = opts.batch_size // world
    objective = None
    if scst.enabled:  # one item per image (its references are the reward's), rewarded with CIDEr-D
        reward = CiderReward({i: cocos["train"].captions[i] for i in cocos["train"].image_ids})
        objective = SCSTObjective(scst, vocab, reward, device)
    # The same permutation for any number of ranks (torch.randperm seeded with seed + epoch); rank r
    # takes items r, r+W, ..., so the union of the ranks' k-th batches is the one-process k-th batch.
    train_set = splits["train"].images if scst.enabled else splits["train"].captions
    sampler = distributed.ResumableSampler(train_set, num_replicas=world, rank=distributed.rank(),
                                           shuffle=True, seed=cfg["seed"] * 100_003)
    train_loader = splits["train"].loader(scst.enabled, local_batch, opts.num_workers, vocab.pad_id, sampler)
    steps_per_epoch = math.ceil(len(train_loader) / opts.accumulate)
    total_steps = opts.max_steps or opts.max_epochs * steps_per_epoch
    if main and (message := warmup_warning(cfg["optim"], total_steps, steps_per_epoch)):
        warnings.warn(message)
    params = param_groups(model, cfg["optim"].get("encoder_lr"))
    optimizer, scheduler = build_optimizer(cfg["optim"], params, make_optimizer, total_steps, steps_per_epoch)
    state = TrainState()
    if ckpt is not None:
        state = restore(resume, ckpt, run_dir, model, optimizer, scheduler, cfg, copy_best=main,
                        rank=distributed.rank(), world_size=world)
        reconfigure(scheduler, cfg["optim"], total_steps, steps_per_epoch)

    decoder = distributed.data_parallel(model.decoder, device)
    trained_encoder = None if cached else distributed.data_parallel(model.encoder, device)
    log = RunLog(run_dir, tensorboard=opts.tensorboard, history=state.history) if main else None

    def save(name: str, score: float | None = None, rng_per_rank: list[dict] | None = None) -> None:
        save_run_checkpoint(ckpt_dir / name, model, vocab, model_config, optimizer, scheduler, state, cfg, score,
                            rng_per_rank)

    def finished() -> bool:
        if state.batch:  # an interrupted epoch: train what is left of it, then validate
            return False
        return state.epoch > opts.max_epochs or state.step >= total_steps or state.stale >= opts.patience

    def finetune_if_due() -> None:
        """From epoch encoder.finetune_from_epoch on, train the CNN on images (also when a resumed run is there)."""
        nonlocal trained_encoder, splits, train_loader
        if finetune_from is None or state.epoch < finetune_from or trained_encoder is not None:
            return
        model.encoder.finetune(enc.get("finetune_blocks"))
        trained_encoder = distributed.data_parallel(model.encoder, device)
        splits = image_splits(cocos, vocab, model.encoder, cfg)
        train_loader = splits["train"].loader(scst.enabled, local_batch, opts.num_workers, vocab.pad_id, sampler)
        if main:
            print(f"epoch {state.epoch}: fine-tuning the CNN from now on ({_what(enc)})", flush=True)

    finetune_if_due()  # a run resumed after the switch trains, and scores its splits, through the trained CNN
    if resume is not None and finished() and main:
        print(f"nothing left to train from {resume} (epoch {state.epoch - 1}, step {state.step}); "
              f"scoring best.pt on the test split", flush=True)
    deadline = time.time() + 60 * opts.max_minutes if opts.max_minutes else None
    try:
        while not finished() and not (deadline and distributed.any_rank(time.time() >= deadline, device)):
            finetune_if_due()
            sampler.set_epoch(state.epoch)  # the epoch's order, and (below) its dropout masks: the same after a resume
            splits["train"].set_epoch(state.epoch)  # and its augmentations
            sampler.skip = state.batch * local_batch
            if state.batch == 0:  # mid-epoch, the restored RNG state goes on instead
                torch.manual_seed((cfg["seed"] * 100_003 + state.epoch) * world + distributed.rank())
            stats = engine.train_one_epoch(decoder, trained_encoder, train_loader, optimizer, scheduler, state, opts,
                                    device=device, pad_id=vocab.pad_id, deadline=deadline,
                                    on_step=(lambda s: log.log_step(state.step, s)) if main else None,
                                    objective=objective)
            if state.tokens == 0:
                raise Diverged(f"training diverged: every step of epoch {state.epoch} was non-finite "
                               f"({state.skipped} skipped)")
            val, _ = engine.score_split(model, splits["val"], cfg, device, desc="val")
            improved = val[opts.select_on] > state.best_score  # the same on every rank: all score the same captions
            if improved:
                state.best_score, state.best_epoch = val[opts.select_on], state.epoch
            validated(scheduler, 0 if improved else state.stale + 1)  # epochs since the best, this one included
            row = {"epoch": state.epoch, "step": state.step, "train_loss": state.loss_sum / state.tokens,
                   **{f"train_{k}": v / state.tokens for k, v in state.extras.items()},
                   **{f"val_{k}": v for k, v in val.items()}, "tokens_per_s": stats["tokens_per_s"],
                   "train_seconds": stats["seconds"], "lr": optimizer.param_groups[0]["lr"],
                   **({"encoder_lr": optimizer.param_groups[1]["lr"]} if trained_encoder is not None else {}),
                   "skipped_steps": state.skipped,
                   **({"sampling_prob": opts.scheduled_sampling.prob(state.epoch)}
                      if opts.scheduled_sampling.start_epoch is not None else {})}
            state.history.append(row)
            if main:
                log.log_epoch(row)
                skipped = f"  ({state.skipped} non-finite steps skipped)" if state.skipped else ""
                if scst.enabled:
                    skipped += (f"  reward {row['train_reward']:.3f} (baseline {row['train_baseline']:.3f}, "
                                f"{100 * row['train_positive']:.0f}% of samples above it)")
                print(f"epoch {state.epoch:3d}  step {state.step:6d}  train loss {row['train_loss']:.3f}  "
                      f"val loss {val['loss']:.3f}  val BLEU-4 {val['bleu4']:.4f}  CIDEr-D {val['cider']:.3f}"
                      f"{'  *' if improved else ''}{skipped}",
                      flush=True)
                if improved:
                    save("best.pt", score=val[opts.select_on])  # before last.pt: see captioning.run_state
            state.next_epoch()
            if main:
                save("last.pt")
    except interrupt.Interrupted as e:  # every rank is here, at the same step: each one's dropout stream is saved
        states = distributed.gather_dict({distributed.rank(): rng_states()})
        if main:
            save("last.pt", rng_per_rank=[states[r] for r in range(world)])
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
    try:
        tests = engine.score_tests(model, splits, features, cfg, device, run_dir if main else None)
    except interrupt.Interrupted as e:  # training is over: last.pt says so, and a resume scores the tests again
        e.checkpoint, e.where = ckpt_dir / "last.pt", "the test scoring (training had finished)"
        raise
    metrics = {"select_on": opts.select_on, "best_val_score": state.best_score, "best_epoch": state.best_epoch,
               "parameters": sum(p.numel() for p in trained), "precision": precision, "threads": threads,
               "train_seconds": sum(row.get("train_seconds", 0.0) for row in state.history), **tests,
               "epochs": state.history}
    if main:
        atomic_write_json(run_dir / "metrics.json", metrics)
        log.plot_curves()
        log.close()
    return metrics


def unknown_words(vocab: Vocabulary, train: CocoCaptions, source: str, at_most: float = 0.01) -> str | None:
    """A warning when more than `at_most` of the training captions' tokens are not in a checkpoint's vocabulary
    (they train as <unk>): new data under an old vocabulary."""
    counts = Counter(w for captions in train.captions.values() for c in captions for w in tokenize(c))
    missing = vocab.missing(counts)
    share = sum(missing.values()) / max(1, sum(counts.values()))
    if share <= at_most:
        return None
    examples = ", ".join(w for w, _ in missing.most_common(5))
    return (f"{100 * share:.1f}% of the training captions' words are not in the vocabulary of {source} and train as "
            f"<unk> ({len(missing)} words, most often: {examples}); a new vocabulary needs a new run")


def _what(enc: dict) -> str:
    blocks = enc.get("finetune_blocks")
    return f"its last {blocks} blocks" if blocks else "the whole CNN"
