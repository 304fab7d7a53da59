"""A training run's whole configuration as one typed object, `RunConfig`, built and checked once before any work.

One dataclass per group of conf/train.yaml: `dataset` (DatasetOptions), `encoder` (EncoderOptions), `decoder`,
`optim` (OptimOptions), `trainer`, `decode`, `scst`, `vocab` (VocabOptions), `baseline` (BaselineOptions), and
the run's `seed`, `cache_dir` and `control`. The groups conf/encoder/ and conf/optim/ extend EncoderOptions and
OptimOptions as structured-config schemas (captioning/cli/_conf.py), as the other groups extend the classes of
captioning/config.py, so every default has one source. `RunConfig.of(plain_dict)` refuses a key no group has,
`problems()` lists every value that cannot work (the cross-group rules included), `as_dict()` is what a
checkpoint records. Plain Python, no torch, like captioning/config.py.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Dict, List, Mapping, Optional

from captioning.config import (AugmentOptions, DecodeOptions, DecoderOptions, SCSTOptions, TrainerOptions,
                               not_an_option, options_from)
from captioning.io import InputError

SCHEDULES = ("cosine", "constant", "step", "plateau")
SCST_NEEDS_INIT = ("scst.enabled: SCST starts from a trained captioner; set trainer.init_from=CHECKPOINT "
                   "(e.g. runs/xe/checkpoints/best.pt)")


@dataclass
class EncoderOptions:
    """The CNN (`captioning.models.build_encoder`) and whether and when the run trains it (captioning/finetune.py)."""

    name: str = "efficientnet_lite0"            # efficientnet_lite0 | small_cnn | any torchvision classifier
    pretrained: bool = True                     # ImageNet weights (false: random init)
    weights: Optional[str] = None               # a local state dict instead of the packaged or downloaded weights
    trainable: bool = False                     # true: train the CNN end to end from the first epoch
    finetune_from_epoch: Optional[int] = None   # N: cached features until epoch N, then train the CNN
    finetune_blocks: Optional[int] = None       # while the CNN trains, only its last K blocks; null: all of them
    image_size: int = 224                       # images are resized to image_size x image_size (no crop)
    batch_size: Optional[int] = None            # feature extraction batch; null: 4 images on CPU, 64 on CUDA
    num_workers: int = 2                        # workers decoding images (on CPU they run the CNN too)

    @property
    def trains(self) -> bool:
        """Whether the run trains the CNN at some epoch."""
        return self.trainable or self.finetune_from_epoch is not None

    def problems(self) -> list[str]:
        start, blocks, problems = self.finetune_from_epoch, self.finetune_blocks, []
        if start is not None and not (isinstance(start, int) and start >= 1):
            problems.append(f"encoder.finetune_from_epoch must be an epoch number (1 or more) or null, got {start}")
        if start is not None and self.trainable:
            problems.append("encoder.trainable=true already trains the CNN from the first epoch: drop it to start "
                            f"at encoder.finetune_from_epoch={start}")
        if blocks is not None and not self.trains:
            problems.append(f"encoder.finetune_blocks={blocks} needs a trained CNN: set encoder.finetune_from_epoch=N "
                            "or encoder.trainable=true")
        problems += [f"encoder.{name} must be at least {low}, got {getattr(self, name)}"
                     for name, low in (("image_size", 1), ("num_workers", 0)) if getattr(self, name) < low]
        return problems


@dataclass
class OptimOptions:
    """The optimizer (`optimizer`: a Hydra partial, instantiated by the entry point) and the learning-rate
    schedule of captioning/optim.py (`Schedule`)."""

    optimizer: Dict[str, Any] = field(default_factory=lambda: {  # a Hydra partial, instantiated by the entry point
        "_target_": "torch.optim.Adam",  # the optimizer class (optim=adamw: torch.optim.AdamW)
        "_partial_": True,               # the parameters are passed at run time
        "lr": 2.0e-3,                    # the decoder's learning rate (the schedule's peak)
        "weight_decay": 0.0,             # L2 penalty (Adam) or decoupled weight decay (AdamW)
        "fused": None})                  # null: torch's fused update where the class has one (optim.with_fused_update)
    encoder_lr: Optional[float] = None  # the CNN's lr while it trains; null: optimizer.lr
    scheduler: str = "cosine"           # cosine (to lr * min_lr_ratio over the run) | constant | step | plateau
    min_lr_ratio: float = 0.05          # cosine: the last step's lr, as a fraction of lr
    warmup_steps: int = 50              # every schedule: a linear warm-up over this many optimizer steps
    decay_every: int = 3                # step: lr * decay_rate every decay_every epochs
    decay_rate: float = 0.8             # step and plateau: the factor of each decay
    plateau_patience: int = 2           # plateau: decay after this many epochs without a better validation score

    def schedule_problems(self) -> list[str]:
        """The schedule's options that cannot work (what `optim.build_optimizer` needs; it is given the optimizer)."""
        problems = []
        if self.scheduler not in SCHEDULES:
            problems.append(f"optim.scheduler must be one of {', '.join(SCHEDULES)}, got {self.scheduler!r}")
        if not 0 < self.decay_rate <= 1:
            problems.append(f"optim.decay_rate must be in (0, 1], got {self.decay_rate}")
        problems += [f"optim.{name} must be at least 1, got {getattr(self, name)}"
                     for name in ("decay_every", "plateau_patience") if getattr(self, name) < 1]
        return problems

    def problems(self) -> list[str]:
        def positive(x) -> bool:
            return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

        problems = self.schedule_problems()
        lr = self.optimizer.get("lr")
        if not positive(lr):
            problems.append(f"optim.optimizer.lr must be a positive number, got {lr}")
        if not (self.encoder_lr is None or positive(self.encoder_lr)):
            problems.append(f"optim.encoder_lr must be a positive number or null, got {self.encoder_lr}")
        return problems


@dataclass
class SplitFiles:
    """One split: a COCO-format annotations file and the folder its `file_name`s are relative to."""
    annotations: str   # a COCO captions file
    images: str        # the folder its file_name values are relative to


@dataclass
class DatasetOptions:
    """The splits a run reads (conf/dataset/): train, val, test and any extra test splits (e.g. test_shifted)."""

    train: SplitFiles
    val: SplitFiles
    test: SplitFiles
    extra_tests: Dict[str, SplitFiles] = field(default_factory=dict)
    root: Optional[str] = None     # the folder the yaml files' split paths are written from (${dataset.root})
    max_caption_len: int = 20      # longer training captions are cut to this many words
    augment: AugmentOptions = field(default_factory=AugmentOptions)  # while the CNN trains (captioning/data/augment.py)

    def __post_init__(self):
        for name in ("train", "val", "test"):
            if isinstance(getattr(self, name), Mapping):
                setattr(self, name, options_from(SplitFiles, getattr(self, name), f"dataset.{name}"))
        self.extra_tests = {k: options_from(SplitFiles, v, f"dataset.extra_tests.{k}") if isinstance(v, Mapping)
                            else v for k, v in (self.extra_tests or {}).items()}
        if isinstance(self.augment, Mapping):
            self.augment = options_from(AugmentOptions, self.augment, "dataset.augment")

    @property
    def splits(self) -> dict[str, SplitFiles]:
        """train, val, test and the extra test splits, in that order."""
        return {"train": self.train, "val": self.val, "test": self.test, **self.extra_tests}

    @property
    def test_names(self) -> list[str]:
        return ["test", *self.extra_tests]

    def problems(self) -> list[str]:
        clash = [name for name in self.extra_tests if name in ("train", "val", "test")]
        problems = [f"dataset.extra_tests may not be called {', '.join(clash)}"] if clash else []
        if self.max_caption_len < 1:
            problems.append(f"dataset.max_caption_len must be at least 1, got {self.max_caption_len}")
        return problems + self.augment.problems()


@dataclass
class VocabOptions:
    """The vocabulary built from the training captions (`captioning.text.Vocabulary.build`)."""
    min_count: int = 1               # words seen fewer times map to <unk>
    max_size: Optional[int] = None   # keep at most this many words (most frequent first)


@dataclass
class BaselineOptions:
    """The retrieval baselines scored beside the model on every test split (captioning/baselines.py), as
    captioning-baseline scores them: k = 1 copies the nearest training image's caption, k > 1 is the consensus
    caption of the k nearest images; metrics.json keys `{split}_knn{k}`."""
    k: List[int] = field(default_factory=lambda: [1, 10])  # []: no baselines
    # The model's captions with retrieval for the test images less like the training images than this fraction
    # of the validation images are (`{split}_fallback`; the pool of the largest k); null: not scored.
    fallback: Optional[float] = 0.05

    def problems(self) -> list[str]:
        bad = [k for k in self.k if not isinstance(k, int) or k < 1]
        out = [f"baseline.k must be positive integers, got {self.k}"] if bad else []
        if self.fallback is not None and not 0 < self.fallback < 1:
            out.append(f"baseline.fallback must be a fraction of the validation images in (0, 1) or null, "
                       f"got {self.fallback}")
        return out


def _take_renamed(group: str, values: Mapping[str, Any]) -> dict:
    """`values` with an earlier version's spelling turned into today's, with a one-line warning: baseline.knn and
    baseline.consensus_k (now baseline.k, as captioning-baseline spells it), dataset.name (read by nothing)."""
    values = dict(values)
    if group == "baseline":  # conf/train.yaml keeps the old keys as null, so that scripts setting them still run
        knn, consensus = values.pop("knn", None), values.pop("consensus_k", None)
        if knn is not None or consensus is not None:
            k = [] if knn is False else [1, consensus] if consensus else [1]
            warnings.warn(f"baseline.knn={knn} baseline.consensus_k={consensus} is now baseline.k={k}; the old "
                          "names will be removed", stacklevel=3)
            values["k"] = k
    if group == "dataset" and "name" in values:
        values.pop("name")
        warnings.warn("dataset.name is not read (the dataset= choice names the data): drop it", stacklevel=3)
    return values


_GROUPS = {"dataset": DatasetOptions, "encoder": EncoderOptions, "decoder": DecoderOptions, "optim": OptimOptions,
           "trainer": TrainerOptions, "decode": DecodeOptions, "scst": SCSTOptions, "vocab": VocabOptions,
           "baseline": BaselineOptions}


def group_options(group: str, values: Mapping[str, Any]) -> Any:
    """One group's typed options (`dataset` -> DatasetOptions, ...), an earlier version's spelling taken with a
    warning; InputError for a key the group does not have or a required one left out."""
    try:
        return options_from(_GROUPS[group], _take_renamed(group, values), group)
    except TypeError as e:  # a field without a default left out: dataset.train, say
        raise InputError(f"{group}: {e}".replace("__init__() ", "")) from None


@dataclass
class RunConfig:
    """Everything `captioning.training.train` reads, typed (conf/train.yaml composed)."""

    dataset: DatasetOptions
    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    decoder: DecoderOptions = field(default_factory=DecoderOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    trainer: TrainerOptions = field(default_factory=TrainerOptions)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    scst: SCSTOptions = field(default_factory=SCSTOptions)
    vocab: VocabOptions = field(default_factory=VocabOptions)
    baseline: BaselineOptions = field(default_factory=BaselineOptions)
    seed: int = 0                       # data order, dropout and sampling (each epoch from (seed, epoch))
    cache_dir: str = ".cache/features"  # pooled encoder features, keyed by encoder + annotation file content
    control: bool = True                # also score the test splits with the captions shuffled across images

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> RunConfig:
        """The typed config of a plain nested dict (captioning-train's, resolved); InputError naming every key no
        group has (`+trainer.max_epoch=1` adds one that Hydra would not refuse)."""
        names = [f.name for f in fields(cls)]
        problems = [not_an_option(key, names, "captioning-train") for key in cfg if key not in names]
        values = {key: cfg[key] for key in cfg if key in names and key not in _GROUPS}
        for group in _GROUPS:
            if group in cfg:
                try:
                    values[group] = group_options(group, cfg[group])
                except InputError as e:
                    problems.append(str(e))
        if "dataset" not in cfg:
            problems.append("dataset is missing: every run names its splits (conf/dataset/)")
        if problems:
            raise InputError("; ".join(problems))
        return cls(**values)

    def problems(self) -> list[str]:
        """Every value that cannot work, each group's and the rules between groups."""
        problems = [*self.dataset.problems(), *self.encoder.problems(), *self.decoder.problems(),
                    *self.optim.problems(), *self.trainer.problems(), *self.decode.problems(),
                    *self.baseline.problems(), *(self.scst.problems() if self.scst.enabled else []),
                    *self.scst.holdout_problems()]
        if self.scst.enabled and not (self.trainer.init_from or self.trainer.resume):
            problems.append(SCST_NEEDS_INIT)
        if self.scst.enabled and self.encoder.trains:  # its captions are sampled from features, without gradient
            problems.append("scst.enabled trains the decoder alone: drop encoder.trainable and "
                            "encoder.finetune_from_epoch (to use a fine-tuned CNN, start from its run: "
                            "trainer.init_from=RUN/checkpoints/best.pt caches that CNN's features)")
        return problems

    def with_trainer(self, **changes) -> RunConfig:
        """A copy with trainer options changed (precision as resolved, the run's starting checkpoint)."""
        return replace(self, trainer=replace(self.trainer, **changes))

    def as_dict(self) -> dict:
        """Plain nested dicts: what a checkpoint records as its run_config."""
        return asdict(self)
