"""The training run: data -> vocabulary -> model -> (cached) features -> epochs -> test.

`train(cfg, run_dir, make_optimizer)` takes the run's configuration as a `RunConfig` or as plain nested dicts
(the Hydra entry point converts its DictConfig), typed and checked once (`check_config`) before any work.
Everything a run produces lands in `run_dir`: vocab.json, checkpoints/{best,last}.pt,
metrics.csv, metrics.json, test_captions.json, curves.png and TensorBoard event files.
Under torchrun every process runs `train`; rank 0 alone writes (see `captioning.distributed`).

Everything that can be checked is checked before the feature pass: options, the splits (none empty),
every image that will be read (headers), the checkpoint to resume from. A SIGTERM or Ctrl-C saves
last.pt exactly where the run is (`captioning.interrupt`); a NaN stops the run before any checkpoint
is overwritten (`engine.Diverged`); see `captioning.run_state` for what each checkpoint holds.
"""
from __future__ import annotations

import random
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from captioning import distributed, interrupt
from captioning.checkpoint import load_checkpoint
from captioning.config import TrainerOptions
from captioning.cpus import keep_freed_memory, set_threads
from captioning.data.coco import CocoCaptions
from captioning.data.features import cache_path, cached_features
from captioning.data.splits import SplitData, check_images, load_splits, stage_images
from captioning.engine import score_tests
from captioning.finetune import cache_spec, image_splits, prepare_encoder
from captioning.io import InputError, atomic_write_json, remove_stale_temp_files
from captioning.models import Captioner, DecoderConfig, build_decoder, build_encoder
from captioning.precision import resolve_device, resolve_precision, warn_if_slow
from captioning.run_config import RunConfig
from captioning.run_state import check_resumable, check_same_model, decoder_from, resume_path, starting_point
from captioning.trainer import Trainer
from captioning.text import Vocabulary, tokenize


def build_model(config: RunConfig, vocab: Vocabulary) -> tuple[Captioner, dict]:
    """The captioner a run's config describes (a pretrained encoder with its weights), and its model_config."""
    enc, options = config.encoder, config.decoder
    encoder = build_encoder(enc.name, pretrained=enc.pretrained, weights=enc.weights, trainable=enc.trains,
                            image_size=enc.image_size, grid=options.inject == "attention")  # attention reads the grid
    prepare_encoder(encoder, enc)  # the blocks to train, or frozen until encoder.finetune_from_epoch
    dec_cfg = DecoderConfig.from_dict({**asdict(options), "vocab_size": len(vocab), "feature_dim": encoder.out_dim})
    return Captioner(encoder, build_decoder(dec_cfg), vocab), {"encoder": encoder.spec, "decoder": asdict(dec_cfg)}


def check_config(cfg: dict | RunConfig) -> RunConfig:
    """The typed config, every option that cannot work refused as one InputError before anything is read."""
    config = cfg if isinstance(cfg, RunConfig) else RunConfig.of(cfg)
    problems = config.problems()
    batch = config.trainer.batch_size
    if batch > 0 and batch % distributed.world_size():
        problems.append(f"trainer.batch_size={batch} is the global batch: it must divide evenly over "
                        f"the {distributed.world_size()} processes")
    if problems:
        raise InputError("; ".join(problems))
    return config


@dataclass
class RunInputs:
    """What a run starts from, read and checked before any work: its config as the checkpoints will record it
    (precision resolved, the checkpoint it started from, the decoder's sizes of that checkpoint), directory,
    splits, vocabulary, the checkpoint it resumes and the one it starts from."""
    config: RunConfig
    run_dir: Path
    cocos: dict[str, CocoCaptions]
    vocab: Vocabulary
    resume: Path | None = None
    ckpt: dict | None = None
    init: dict | None = None
    threads: int = 1  # CPU threads the run uses
    train_images: set[int] | None = None  # the training images this stage trains on (None: all; `scst.holdout`)

    @property
    def opts(self) -> TrainerOptions:
        return self.config.trainer

    @property
    def init_from(self) -> str | None:
        return self.config.trainer.init_from

    @property
    def names(self) -> list[str]:
        return list(self.config.dataset.splits)

    @property
    def cached(self) -> bool:
        """Whether the decoder trains on cached features (all run, or until encoder.finetune_from_epoch)."""
        return not self.config.encoder.trainable

    def images_of(self, split: str) -> set[int] | None:
        """The images of `split` this stage trains or scores on (None: all)."""
        return self.train_images if split == "train" else None


def train(cfg: dict | RunConfig, run_dir: str | Path, make_optimizer: Callable) -> dict:
    """Train, validate every epoch, then score the best checkpoint on the test split.

    Under torchrun (WORLD_SIZE > 1) this joins the process group and trains data-parallel;
    `trainer.batch_size` stays the global batch, so the steps are those of one process.
    """
    config = check_config(cfg)
    with distributed.process_group(resolve_device(config.trainer.device)) as device, interrupt.catch_signals():
        run = read_inputs(config, Path(run_dir), device)
        model, model_config, spec = load_model(run)
        splits, features = load_data(run, model, spec, device)
        trainer = Trainer(run, model, model_config, splits, make_optimizer, device)
        trainer.fit()
        metrics = test_best(run, trainer, features, device)
        if distributed.is_main():
            atomic_write_json(run.run_dir / "metrics.json", metrics)
        trainer.close()
        return metrics


def read_inputs(config: RunConfig, run_dir: Path, device: torch.device) -> RunInputs:
    """Precision and threads, the seeds, the splits, the checkpoints to resume or start from, the vocabulary."""
    main, opts = distributed.is_main(), config.trainer
    precision, why = resolve_precision(opts.precision, device)  # what trainer.precision=auto means here
    threads, threads_why = set_threads(opts.threads)
    keep_freed_memory()
    config = config.with_trainer(precision=precision)
    if main:
        print(f"precision {precision} ({why}); {threads} CPU threads ({threads_why})", flush=True)
        warn_if_slow(device, opts.precision)
        for folder in (run_dir, run_dir / "checkpoints", config.cache_dir):
            remove_stale_temp_files(folder)  # left by a run killed while saving
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    cocos = load_splits(config.dataset)
    resume = resume_path(opts.resume, run_dir)
    ckpt = load_checkpoint(resume) if resume is not None else None
    init_from = starting_point(opts, config.scst.enabled, run_dir / "checkpoints", resume, ckpt)
    init = load_checkpoint(init_from) if init_from else None  # its weights, vocabulary and decoder
    config = config.with_trainer(init_from=init_from)  # as the run was started, in its checkpoints
    check_holdout(config.scst.holdout, {resume: ckpt, init_from: init})
    train_images = stage_images(cocos["train"], config.scst.holdout, config.scst.enabled)  # before any feature
    if ckpt is not None or init is not None:
        vocab = Vocabulary.from_dict((ckpt or init)["vocab"])
    else:
        vocab = Vocabulary.build((tokenize(c) for cs in cocos["train"].captions.values() for c in cs),
                                 min_count=config.vocab.min_count, max_size=config.vocab.max_size)
    if init is not None:  # its sizes, this command line's dropout: the run's config says what the model is
        decoder, overridden = decoder_from(init["model_config"]["decoder"], config.decoder)
        config = replace(config, decoder=decoder)
        if main and ckpt is None:  # said when the run starts, not at every resume
            if overridden:
                warnings.warn(f"trainer.init_from={init_from}: the decoder is the checkpoint's: {', '.join(overridden)}")
            if message := unknown_words(vocab, cocos["train"], init_from):
                warnings.warn(message)
    return RunInputs(config, run_dir, cocos, vocab, resume, ckpt, init, threads, train_images)


def load_model(run: RunInputs) -> tuple[Captioner, dict, dict]:
    """The captioner, with the starting checkpoint's weights loaded before anything reads them (the cached
    features are those of the CNN the run started with, also when it resumes), its model_config and its feature
    cache's spec; every image that will be read checked now, not after an hour of feature extraction."""
    model, model_config = build_model(run.config, run.vocab)
    if run.init is not None:
        check_same_model(Path(run.init_from), run.init, model_config, action="start from")
        model.load_state_dict(run.init["model"])
    if run.ckpt is not None:
        check_resumable(run.resume, run.ckpt, model_config, run.opts.batch_size)
    spec = cache_spec(model.encoder, run.init["model_config"]["encoder"] if run.init is not None else None)
    for s in run.names:
        if run.config.encoder.trains or \
                not cache_path(spec, run.cocos[s], run.config.cache_dir, run.opts.precision).is_file():
            check_images(run.cocos[s])
    if distributed.is_main():
        run.vocab.save(run.run_dir / "vocab.json")
    return model, model_config, spec


def load_data(run: RunInputs, model: Captioner, spec: dict, device: torch.device
              ) -> tuple[dict[str, SplitData], dict]:
    """Every split as the decoder reads it: cached features (built by rank 0, read by the others once complete),
    or images through the CNN that trains; and the features ({split: None} when there are none)."""
    model.to(device)
    features = {s: None for s in run.names}
    if not run.cached:
        return image_splits(run.cocos, run.vocab, model.encoder, run.config, run.images_of), features
    enc, main = run.config.encoder, distributed.is_main()

    def split_features(build: bool) -> dict:
        return {s: cached_features(model.encoder, run.cocos[s], run.config.cache_dir, spec=spec, build=build,
                                   batch_size=enc.batch_size, num_workers=enc.num_workers, device=device,
                                   precision=run.opts.precision, progress=run.opts.progress if main else False)
                for s in run.names}
    if main:
        features = split_features(build=True)
    distributed.barrier()  # the cache is complete: the other ranks read it
    if not main:
        features = split_features(build=False)
    max_len = run.config.dataset.max_caption_len
    return {s: SplitData(run.cocos[s], run.vocab, features[s], None, max_len, image_ids=run.images_of(s))
            for s in run.names}, features


def test_best(run: RunInputs, trainer: Trainer, features: dict, device: torch.device) -> dict:
    """best.pt's scores on every test split (rank 0's weights on every rank), with the run's summary."""
    model, state, best = trainer.model, trainer.state, run.run_dir / "checkpoints" / "best.pt"
    if distributed.is_main():
        if not best.is_file():
            raise InputError(f"no {best} to score: this run trained no epoch to the end")
        model.load_state_dict(load_checkpoint(best)["model"])
    distributed.broadcast_module_(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    try:
        tests = score_tests(model, trainer.splits, features, run.config, device,
                            run.run_dir if distributed.is_main() else None)
    except interrupt.Interrupted as e:  # training is over: last.pt says so, and a resume scores the tests again
        e.checkpoint, e.where = run.run_dir / "checkpoints" / "last.pt", "the test scoring (training had finished)"
        raise
    return {"select_on": run.opts.select_on, "best_val_score": state.best_score, "best_epoch": state.best_epoch,
            "parameters": sum(p.numel() for p in trained), "precision": run.opts.precision, "threads": run.threads,
            "train_seconds": sum(row.get("train_seconds", 0.0) for row in state.history), **tests,
            "epochs": state.history}


def check_holdout(holdout: float, checkpoints: dict) -> None:
    """InputError when a checkpoint this run resumes or starts from was trained with another `scst.holdout`:
    the stages would disagree on which training images cross-entropy has seen."""
    for path, ckpt in checkpoints.items():
        if ckpt is None:  # no run to resume, or none to start from
            continue
        saved = (ckpt.get("run_config") or {}).get("scst", {}).get("holdout", 0.0)
        if saved != holdout:
            raise InputError(f"scst.holdout={holdout}, but {path} was trained with scst.holdout={saved} (the share of "
                             f"training images cross-entropy leaves to SCST): run with scst.holdout={saved}")


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

