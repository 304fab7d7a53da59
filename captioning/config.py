"""The options of the model's parts, as dataclasses: the one source of their defaults.

The Python API takes its defaults from here (`DecoderConfig` extends `DecoderOptions`,
`Captioner.caption` uses `DecodeOptions`), and the Hydra groups `conf/decoder/` and `conf/decode/`
extend the same classes as structured-config schemas (registered in `captioning/cli/_conf.py`), so a
value left out of a YAML file is the API's default and a mistyped key or a value of the wrong type
is refused when the command line is parsed. Plain Python (no torch), so the command-line tools can
read it before their heavy imports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from difflib import get_close_matches
from typing import Any, List, Mapping, Optional, TypeVar

from captioning.io import InputError

CELLS = ("rnn", "lstm", "gru")
IMPLS = ("fused", "explicit")
INJECT_MODES = ("init", "pre", "par", "attention")
FEATURE_NORMS = ("none", "l2", "layernorm")
DECODE_METHODS = ("greedy", "beam", "sample")
LENGTH_PENALTIES = ("none", "avg", "wu")
PRECISIONS = ("fp32", "bf16")
PRECISION_SETTINGS = ("auto", *PRECISIONS)  # auto: bf16 where the device has native bf16, else fp32
NONFINITE_POLICIES = ("stop", "skip")
SELECTION_METRICS = ("cider", "bleu4")
SCST_BASELINES = ("greedy", "mean")


Options = TypeVar("Options")


def unknown_options(schema: type, values: Mapping[str, Any], group: str) -> list[str]:
    """One message per key of `values` that `schema` has no field for, naming the likely one. Hydra refuses
    `trainer.max_epoch=1` itself, but `+trainer.max_epoch=1` (what its own message suggests) adds the key."""
    names = [f"{group}.{f.name}" for f in fields(schema)]
    return [not_an_option(f"{group}.{key}", names, group) for key in values if f"{group}.{key}" not in names]


def not_an_option(key: str, names: list[str], of: str) -> str:
    """"KEY is not an option of OF", with the closest of `names` if one is close."""
    likely = get_close_matches(key, names, 1)
    return f"{key} is not an option of {of}" + (f" (did you mean {likely[0]}?)" if likely else "")


def options_from(schema: type[Options], values: Mapping[str, Any], group: str) -> Options:
    """schema(**values), a key it has no field for refused in one InputError line (`unknown_options`)."""
    unknown = unknown_options(schema, values, group)
    if unknown:
        raise InputError("; ".join(unknown))
    return schema(**values)


def check(*options) -> None:
    """InputError listing every problem of the given options objects (DecoderOptions, DecodeOptions, ...)."""
    problems = [p for o in options for p in o.problems()]
    if problems:
        raise InputError("; ".join(problems))


@dataclass
class DecoderOptions:
    """Hyper-parameters of the caption decoder (`captioning.models.decoder.CaptionDecoder`)."""

    embed_dim: int = 256          # the word embedding's size
    hidden_dim: int = 512         # the recurrent core's state size (h, and c for an LSTM)
    num_layers: int = 1           # stacked recurrent layers
    cell: str = "lstm"      # lstm | gru | rnn
    impl: str = "fused"     # fused (torch's cuDNN/oneDNN kernels) | explicit (the lecture's equations)
    inject: str = "init"    # init: h0 = tanh(W_ih v + b) | pre: image is the first input | par: added at every step
                            # | attention: h0 from the grid's mean, soft attention over the grid at every step
    embed_dropout: float = 0.3    # dropout on the word embeddings
    feature_dropout: float = 0.0  # dropout on the image feature v, before the decoder projects it
    output_dropout: float = 0.3   # dropout on the recurrent core's output (and between stacked layers)
    feature_norm: str = "none"    # v before its projection: none | l2 (unit length, times sqrt(D)) | layernorm
    attention_dim: int = 512      # inject=attention: the size of the attention MLP (W_a a + W_h h)
    attention_gate: bool = True   # inject=attention: gate the context with beta = sigmoid(f_beta(h))
    alpha_c: float = 1.0          # inject=attention: weight of the doubly stochastic penalty (Xu et al.: 1)

    def problems(self) -> list[str]:
        """One message per option whose value cannot work (checked before any long work starts)."""
        problems = [f"decoder.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                    for name, allowed in (("cell", CELLS), ("impl", IMPLS), ("inject", INJECT_MODES),
                                          ("feature_norm", FEATURE_NORMS))
                    if getattr(self, name) not in allowed]
        problems += [f"decoder.{name} must be at least 1, got {getattr(self, name)}"
                     for name in ("embed_dim", "hidden_dim", "num_layers", "attention_dim") if getattr(self, name) < 1]
        if not self.alpha_c >= 0:
            problems.append(f"decoder.alpha_c must be >= 0, got {self.alpha_c}")
        problems += [f"decoder.{name} must be in [0, 1), got {getattr(self, name)}"
                     for name in ("embed_dropout", "feature_dropout", "output_dropout")
                     if not 0 <= getattr(self, name) < 1]
        return problems


@dataclass
class DecodeOptions:
    """How captions are generated (`captioning.decoding.decode`); the defaults are beam search, 3 beams."""

    method: str = "beam"             # greedy | beam | sample
    beam_size: int = 3               # beam
    max_len: int = 20                # tokens at most, <end> included
    min_len: int = 0                 # words at least: <end> is not allowed before this many
    length_penalty: str = "avg"      # beam: how the final beams are ranked: none (raw log p)
                                     # | avg (log p / length ** alpha) | wu (log p / ((5 + length) / 6) ** alpha)
    length_alpha: float = 0.7        # beam: the alpha of avg and wu (avg with 1.0: the mean log p per token)
    beam_groups: int = 1             # beam: diverse beam search with this many groups of beam_size / beam_groups
    diversity_lambda: float = 0.5    # beam_groups > 1: the cost of a word the earlier groups chose at this step
    num_return: int = 1              # beam: the best this many captions per image (captions.json: a list)
    temperature: float = 1.0         # sample: softmax(logits / temperature)
    top_k: Optional[int] = None      # sample: only from the k most likely words (None: all)
    top_p: Optional[float] = None    # sample: only from the fewest most likely words reaching probability p
    block_ngram_repeat: int = 0      # never repeat an n-gram within a caption (3: trigram blocking; 0: off)
    suppress_unk: bool = False       # never emit <unk>
    length_norm: Optional[float] = None  # replaced by length_penalty/length_alpha: a value is refused, naming them

    def problems(self) -> list[str]:
        """One message per option whose value cannot work (checked before any long work starts)."""
        problems = []
        if self.length_norm is not None:
            new = ("decode.length_penalty=none" if self.length_norm == 0 else
                   f"decode.length_penalty=avg decode.length_alpha={self.length_norm}")
            problems.append(f"decode.length_norm was replaced: for decode.length_norm={self.length_norm} use {new} "
                            "(length_norm=0 is length_penalty=none; wu is new)")
        if self.method not in DECODE_METHODS:
            problems.append(f"decode.method must be one of {', '.join(DECODE_METHODS)}, got {self.method!r}")
        if self.length_penalty not in LENGTH_PENALTIES:
            problems.append(f"decode.length_penalty must be one of {', '.join(LENGTH_PENALTIES)}, "
                            f"got {self.length_penalty!r}")
        problems += [f"decode.{name} must be at least 1, got {getattr(self, name)}"
                     for name in ("beam_size", "max_len") if getattr(self, name) < 1]
        problems += [f"decode.{name} must be at least 0, got {getattr(self, name)}"
                     for name in ("min_len", "block_ngram_repeat") if getattr(self, name) < 0]
        if self.min_len >= self.max_len:
            problems.append(f"decode.min_len ({self.min_len}) must be below decode.max_len ({self.max_len})")
        if not self.temperature > 0:  # also catches nan
            problems.append(f"decode.temperature must be > 0 (decode.method=greedy for argmax), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"decode.top_k must be at least 1 or null, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            problems.append(f"decode.top_p must be in (0, 1] or null, got {self.top_p}")
        if self.beam_groups < 1 or self.beam_size % self.beam_groups:
            problems.append(f"decode.beam_groups must be at least 1 and divide decode.beam_size ({self.beam_size}), "
                            f"got {self.beam_groups}")
        if self.num_return > 1 and self.method != "beam":
            problems.append(f"decode.num_return={self.num_return} ranks the beams of decode.method=beam, "
                            f"got decode.method={self.method}")
        if not 1 <= self.num_return <= self.beam_size:
            problems.append(f"decode.num_return must be between 1 and decode.beam_size ({self.beam_size}), "
                            f"got {self.num_return}")
        if not self.diversity_lambda >= 0:
            problems.append(f"decode.diversity_lambda must be >= 0, got {self.diversity_lambda}")
        if self.length_alpha != self.length_alpha:
            problems.append("decode.length_alpha must be a number, got nan")
        return problems


@dataclass
class ScheduledSamplingOptions:
    """Scheduled sampling (Bengio et al. 2015): from epoch `start_epoch` on, each input word of teacher forcing is
    replaced, with probability p, by the model's own sample of the step before; p grows by `increase_prob` every
    `increase_every` epochs up to `max_prob` (self-critical.pytorch's scheduled_sampling_* options)."""

    start_epoch: Optional[int] = None   # the first epoch (1-based) with p = increase_prob; null: off
    increase_every: int = 5             # epochs between increases of p
    increase_prob: float = 0.05         # p's step
    max_prob: float = 0.25              # p's ceiling

    def prob(self, epoch: int) -> float:
        """p in `epoch`: 0 before start_epoch, then increase_prob * (1 + (epoch - start_epoch) // increase_every)."""
        if self.start_epoch is None or epoch < self.start_epoch:
            return 0.0
        return min(self.max_prob, self.increase_prob * (1 + (epoch - self.start_epoch) // self.increase_every))

    def problems(self) -> list[str]:
        problems = []
        if self.start_epoch is not None and self.start_epoch < 1:
            problems.append("trainer.scheduled_sampling.start_epoch must be at least 1 or null, "
                            f"got {self.start_epoch}")
        if self.increase_every < 1:
            problems.append(f"trainer.scheduled_sampling.increase_every must be at least 1, got {self.increase_every}")
        problems += [f"trainer.scheduled_sampling.{name} must be in [0, 1], got {getattr(self, name)}"
                     for name in ("increase_prob", "max_prob") if not 0 <= getattr(self, name) <= 1]
        return problems


@dataclass
class TrainerOptions:
    """How `captioning-train` trains (`captioning.training.train`): limits, batching, device, numerics, resuming."""

    max_epochs: int = 50                  # a cap: early stopping (patience) ends most runs well before it
    max_steps: Optional[int] = None       # stop after this many optimizer steps
    max_minutes: Optional[float] = None   # stop after this much wall-clock training time
    batch_size: int = 128                 # the global batch: under torchrun each of W processes takes batch_size / W
    accumulate: int = 1                   # batches per optimizer step: the step of one batch this many times larger
    num_workers: int = 0                  # DataLoader workers for training batches (0: cached features are in memory)
    device: str = "auto"                  # auto (cuda if available) | cpu | cuda | cuda:1
    precision: str = "auto"               # auto (bf16 where the device has native bf16, else fp32) | fp32 | bf16
    threads: Optional[int] = None         # CPU threads; null: the CPUs this process may use (affinity, cgroup quota)
    grad_clip: Optional[float] = 5.0      # clip the global gradient norm to this; null: no clipping
    label_smoothing: float = 0.1          # target (1 - eps) on the reference word, eps / V on every word: chosen
                                          # on the icons and shapes_shifted sets, 3 seeds each (higher mean test
                                          # CIDEr-D on every split of both: docs/experiments/label-smoothing.md;
                                          # 0: plain)
    patience: int = 5                     # early stopping: epochs without a better validation score
    select_on: str = "cider"              # the validation score that picks best.pt and stops early: cider | bleu4
    nonfinite: str = "stop"               # a NaN/inf loss or gradient: stop the run (non-zero exit) | skip the step
    resume: Optional[str] = None          # a checkpoint to continue from (runs/X/checkpoints/last.pt), or auto:
                                          # this run directory's last.pt if there is one
    init_from: Optional[str] = None       # start from this checkpoint's weights, vocabulary and decoder (a new run:
                                          # fresh optimizer and history), e.g. SCST after cross-entropy training
    overwrite: bool = False               # a new run into a directory that holds another run's checkpoints replaces
                                          # them (false: refused, naming trainer.resume=auto and this option)
    scheduled_sampling: ScheduledSamplingOptions = field(default_factory=ScheduledSamplingOptions)  # off by default
    tensorboard: bool = True              # also write TensorBoard event files (runs/X/tensorboard)
    progress: Any = "auto"                # auto: a bar on a terminal, a line every 30 s in a log file; true | false

    def __post_init__(self):
        if isinstance(self.scheduled_sampling, dict):  # from a plain config dict
            self.scheduled_sampling = options_from(ScheduledSamplingOptions, self.scheduled_sampling,
                                                   "trainer.scheduled_sampling")

    def problems(self) -> list[str]:
        """One message per option whose value cannot work (checked before any long work starts)."""
        problems = [f"trainer.{name} must be at least {low}, got {getattr(self, name)}"
                    for name, low in (("max_epochs", 1), ("batch_size", 1), ("accumulate", 1), ("num_workers", 0),
                                      ("patience", 1))
                    if getattr(self, name) < low]
        problems += [f"trainer.{name} must be a positive number or null, got {getattr(self, name)}"
                     for name in ("max_steps", "max_minutes", "grad_clip")
                     if getattr(self, name) is not None and not (getattr(self, name) > 0 and math.isfinite(getattr(self, name)))]
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"trainer.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.precision not in PRECISION_SETTINGS:
            problems.append(f"trainer.precision must be one of {', '.join(PRECISION_SETTINGS)}, got {self.precision!r}")
        if self.threads is not None and self.threads < 1:
            problems.append(f"trainer.threads must be at least 1 or null, got {self.threads}")
        if self.select_on not in SELECTION_METRICS:
            problems.append(f"trainer.select_on must be one of {', '.join(SELECTION_METRICS)}, got {self.select_on!r}")
        if self.nonfinite not in NONFINITE_POLICIES:
            problems.append(f"trainer.nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {self.nonfinite!r}")
        if self.progress not in (True, False, "auto"):
            problems.append(f"trainer.progress must be auto, true or false, got {self.progress!r}")
        return problems + self.scheduled_sampling.problems()


@dataclass
class AugmentOptions:
    """Training-time augmentation of raw images (`dataset.augment`, captioning/data/augment.py). It applies only
    while the CNN is trained (encoder.trainable, or from encoder.finetune_from_epoch on): cached features are
    computed once, from the whole image, and never augmented."""

    crop_scale: Optional[List[float]] = field(default_factory=lambda: [0.8, 1.0])  # random resized crop: the
                                          # crop's share of the image's area, drawn from [low, high]; null: no crop
    crop_ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333])  # the crop's width / height range
    hflip: bool = False                   # mirror half the images; off: captions say "left" and "right"

    def problems(self) -> list[str]:
        problems = []
        scale, ratio = self.crop_scale, self.crop_ratio
        if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            problems.append(f"dataset.augment.crop_scale must be [low, high] with 0 < low <= high <= 1, or null, "
                            f"got {scale}")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            problems.append(f"dataset.augment.crop_ratio must be [low, high] with 0 < low <= high, got {ratio}")
        return problems


@dataclass
class SCSTOptions:
    """Self-critical sequence training (captioning/scst.py), the `scst` group: `enabled` turns it on."""

    enabled: bool = False       # train with SCST's reward instead of cross-entropy (scst=enabled)
    samples: int = 5               # captions drawn per image
    baseline: str = "mean"         # mean: the other samples' mean reward (leave-one-out) | greedy: the greedy
                                   # caption's reward, which stalls where samples are far worse than argmax
    temperature: float = 1.0       # sampling: softmax(logits / temperature)
    top_k: Optional[int] = None    # sampling: from the k most likely words only
    max_len: int = 20              # tokens per sampled caption, <end> included
    xe_weight: float = 0.0         # the mixed objective: SCST's loss + xe_weight * the references' cross-entropy
    holdout: float = 0.0           # the share of training images set aside for SCST: cross-entropy (scst disabled)
                                   # trains on the others, SCST on these; give both stages the same value

    def holdout_problems(self) -> list[str]:
        """The holdout is read by both stages: checked whether SCST is enabled or not."""
        if not (0 <= self.holdout < 1 and math.isfinite(self.holdout)):
            return [f"scst.holdout must be at least 0 and below 1, got {self.holdout}"]
        return []

    def problems(self) -> list[str]:
        problems = []
        if self.baseline not in SCST_BASELINES:
            problems.append(f"scst.baseline must be one of {', '.join(SCST_BASELINES)}, got {self.baseline!r}")
        if self.samples < (2 if self.baseline == "mean" else 1):
            problems.append(f"scst.samples must be at least {2 if self.baseline == 'mean' else 1} with "
                            f"scst.baseline={self.baseline}, got {self.samples}")
        if not self.temperature > 0:
            problems.append(f"scst.temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"scst.top_k must be at least 1 or null, got {self.top_k}")
        if self.max_len < 1:
            problems.append(f"scst.max_len must be at least 1, got {self.max_len}")
        if not (self.xe_weight >= 0 and math.isfinite(self.xe_weight)):
            problems.append(f"scst.xe_weight must be a finite number >= 0, got {self.xe_weight}")
        return problems
