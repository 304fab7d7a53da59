"""Where a training run is, its two checkpoints, and continuing a run from them.

* `checkpoints/last.pt` holds everything needed to continue exactly: the model, optimizer and scheduler,
  and the `TrainState` (epoch, batches already trained in it, optimizer step, the epoch's partial loss
  sums, the history, and mid-epoch every process's random-number state, which drives its dropout).
* `checkpoints/best.pt` holds the weights with the best validation score, with that score and its epoch.

At the end of an epoch best.pt is written before last.pt: a kill between the two leaves last.pt at the
previous epoch, so the resumed run trains that epoch again (identically: data order and dropout are
seeded by (seed, epoch)) and rewrites both. When resuming, the best score comes from best.pt itself,
never from last.pt, so the two files cannot disagree about which weights are best; a run resumed into
a new run directory takes a copy of best.pt along, so its test split is scored on the right weights.
"""
from __future__ import annotations

import math
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from captioning.checkpoint import load_checkpoint, save_checkpoint
from captioning.config import DecoderOptions, TrainerOptions
from captioning.io import InputError, atomic_path
from captioning.models.decoder import DecoderConfig
from captioning.run_config import SCST_NEEDS_INIT

# Decoder fields that change the shapes or names of the weights; the rest are hyper-parameters.
ARCHITECTURE = ("embed_dim", "hidden_dim", "num_layers", "cell", "impl", "inject", "feature_norm", "attention_dim",
                "attention_gate", "vocab_size", "feature_dim")


def from_checkpoint(key: str) -> bool:
    """Whether a resumed run takes this setting from the checkpoint: the optimizer's state holds its
    hyper-parameters (learning rates, the CNN's too) and moments, the vocabulary fixes the output layer. Every
    other setting comes from the command line: the optimizer's class and the schedule among them."""
    if key == "optim.encoder_lr":
        return True
    return key.startswith(("optim.optimizer.", "vocab.")) and not key.endswith(("._target_", "._partial_"))


def decoder_from(init_decoder: dict, options: DecoderOptions) -> tuple[DecoderOptions, list[str]]:
    """The decoder options of a run started from a checkpoint (trainer.init_from): its sizes and kinds
    (ARCHITECTURE), this run's hyper-parameters (dropout, alpha_c); and each option the checkpoint overrode."""
    saved = asdict(DecoderConfig.from_dict(init_decoder))
    taken = {k: saved[k] for k in ARCHITECTURE if hasattr(options, k)}
    changed = [f"decoder.{k}={v} (not {getattr(options, k)})" for k, v in taken.items() if v != getattr(options, k)]
    return replace(options, **taken), changed


@dataclass
class TrainState:
    epoch: int = 1               # the epoch in progress, or the next one to run
    batch: int = 0               # batches of `epoch` already trained
    step: int = 0                # optimizer steps taken (a skipped non-finite step is not one)
    loss_sum: float = 0.0        # this epoch so far: summed token losses, target tokens, skipped steps
    tokens: int = 0
    skipped: int = 0
    extras: dict[str, float] = field(default_factory=dict)  # this epoch's summed per-item values to log
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    best_score: float = -math.inf  # from best.pt, not saved in last.pt
    best_epoch: int | None = None

    @property
    def stale(self) -> int:
        """Finished epochs since the best one (early stopping counts these)."""
        return sum(1 for row in self.history if self.best_epoch is None or row["epoch"] > self.best_epoch)

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.loss_sum, self.tokens, self.skipped = self.epoch + 1, 0, 0.0, 0, 0
        self.extras = {}

    def saved(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("best_score", "best_epoch")}


def rng_states() -> dict:
    """This process's random-number states (CPU, and its CUDA device's): what drives its dropout masks."""
    return {"rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}


def save_run_checkpoint(path: Path, model: torch.nn.Module, vocab, model_config: dict, optimizer, scheduler,
                        state: TrainState, run_config: dict, score: float | None = None,
                        rng_per_rank: list[dict] | None = None) -> None:
    """last.pt (with the RNG states when mid-epoch: `rng_per_rank`, every process's `rng_states()` in rank
    order, gathered by the caller; else this process's) or, with `score`, best.pt."""
    train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **state.saved()}
    if state.batch:  # mid-epoch: dropout masks continue from here, on every rank
        train_state["rng_per_rank"] = rng_per_rank or [rng_states()]
    if score is not None:
        train_state.update(best_score=score, best_epoch=state.best_epoch)
    save_checkpoint(path, model_state=model.state_dict(), vocab=vocab, model_config=model_config,
                    train_state=train_state, run_config=run_config)


def resume_path(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: trainer.resume, or with `auto` this run directory's last.pt if any."""
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    return Path(resume) if resume else None


def starting_point(opts: TrainerOptions, scst: bool, ckpt_dir: Path, resume: Path | None, ckpt: dict | None
                   ) -> str | None:
    """The checkpoint whose weights the run starts from (trainer.init_from; resumed, the one its run started
    from, also when the command line omits it: its CNN made the cached features), or None; InputError for a
    start that cannot work: a new run over another run's checkpoints, SCST from nothing, a resume under the
    other objective, a resumed run's starting checkpoint gone."""
    held = [p.name for p in (ckpt_dir / "best.pt", ckpt_dir / "last.pt") if p.is_file()]
    if ckpt is None and held and not opts.overwrite and opts.resume is None:  # resume=auto: this run, restarted
        raise InputError(f"{ckpt_dir} holds another run's checkpoints ({', '.join(held)}): continue that run with "
                         f"trainer.resume=auto, or replace them with trainer.overwrite=true")
    if scst and ckpt is None and not opts.init_from:  # trainer.resume=auto found no last.pt
        raise InputError(f"{SCST_NEEDS_INIT}: trainer.resume={opts.resume} found no checkpoint in {ckpt_dir}")
    saved = (ckpt or {}).get("run_config") or {}
    if ckpt is not None and bool(saved.get("scst", {}).get("enabled")) != scst:
        raise InputError(f"cannot resume {resume} with scst.enabled={scst}: its run trained with "
                         f"{'cross-entropy' if scst else 'SCST'}; start a new stage from its weights with "
                         f"trainer.init_from={resume}")
    started = saved.get("trainer", {}).get("init_from")
    if not opts.init_from and started and not Path(started).is_file():
        raise InputError(f"cannot resume {resume}: its run started from {started} (trainer.init_from), which is "
                         f"not there any more; give its new place as trainer.init_from=...")
    return opts.init_from or started


def check_same_model(path: Path, ckpt: dict, model_config: dict, action: str = "resume from") -> None:
    """InputError naming the checkpoint and every size or kind that differs from this run's model."""
    saved, ours = asdict(DecoderConfig.from_dict(ckpt["model_config"]["decoder"])), model_config["decoder"]
    diffs = [f"decoder.{k}: {saved.get(k)} in the checkpoint, {ours[k]} here" for k in ARCHITECTURE
             if saved.get(k) != ours[k]]
    for k in ("name", "image_size"):
        if ckpt["model_config"]["encoder"].get(k) != model_config["encoder"].get(k):
            diffs.append(f"encoder.{k}: {ckpt['model_config']['encoder'].get(k)} in the checkpoint, "
                         f"{model_config['encoder'].get(k)} here")
    if diffs:
        raise InputError(f"cannot {action} {path}: it is a different model ({'; '.join(diffs)})")


def check_resumable(path: Path, ckpt: dict, model_config: dict, batch_size: int) -> None:
    """check_same_model, that the checkpoint holds a training state of this version to continue from, and that a
    mid-epoch one continues with its batch size (its count of batches trained says where the epoch stands)."""
    check_same_model(path, ckpt, model_config)
    ts = ckpt.get("train_state") or {}
    if "batch" not in ts:
        raise InputError(f"cannot resume from {path}: it holds no training state of this version "
                         f"(load_captioner still reads it)")
    saved = ((ckpt.get("run_config") or {}).get("trainer") or {}).get("batch_size", batch_size)
    if ts["batch"] and not _finished_epoch(ts) and saved != batch_size:
        raise InputError(f"cannot resume {path} in the middle of epoch {ts['epoch']} with trainer.batch_size="
                         f"{batch_size}: it trained {ts['batch']} batches of {saved}; resume with "
                         f"trainer.batch_size={saved} (another batch size can start at the next epoch's checkpoint)")


def _finished_epoch(ts: dict) -> bool:
    """best.pt is written at the end of its epoch, before the next one starts: its epoch is in the history."""
    return bool(ts.get("history")) and ts["history"][-1]["epoch"] == ts["epoch"]


def _flatten(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def changed_settings(path: Path, saved_cfg: dict | None, cfg: dict) -> str | None:
    """A warning listing the settings that differ from the checkpoint's run, and which side each comes from."""
    if not saved_cfg:
        return None
    before, now = _flatten(saved_cfg), _flatten(cfg)
    keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k) and k != "trainer.resume")
    if not keys:
        return None
    kept = [f"{k}={before.get(k)} (not {now.get(k)})" for k in keys if from_checkpoint(k)]
    new = [f"{k}={now.get(k)} (was {before.get(k)})" for k in keys if not from_checkpoint(k)]
    parts = ([f"taken from the checkpoint: {', '.join(kept)}"] if kept else []) + \
            ([f"taken from this command line: {', '.join(new)}"] if new else [])
    return f"resuming from {path} with changed settings; " + "; ".join(parts)


def restore(path: Path, ckpt: dict, run_dir: Path, model: torch.nn.Module, optimizer, scheduler, cfg: dict,
            copy_best: bool, rank: int = 0, world_size: int = 1) -> TrainState:
    """Load a checked checkpoint (`check_resumable`) into model, optimizer and scheduler, warn about changed
    settings, bring best.pt along into `run_dir` (with `copy_best`: rank 0) and return the run's state."""
    message = changed_settings(path, ckpt.get("run_config"), cfg)
    if message:
        warnings.warn(message, stacklevel=2)
    ts = ckpt["train_state"]
    model.load_state_dict(ckpt["model"])
    try:
        optimizer.load_state_dict(ts["optimizer"])
    except ValueError as e:  # e.g. a checkpoint from before the CNN had its own parameter group
        raise InputError(f"cannot resume {path}: its optimizer state does not fit this run's ({e}); start a new run "
                         f"from its weights with trainer.init_from={path}") from None
    scheduler.load_state_dict(ts["scheduler"])
    if "rng_per_rank" in ts:  # mid-epoch: each rank's own dropout stream (another world size: rank 0's for all)
        saved = ts["rng_per_rank"]
        mine = saved[rank] if len(saved) == world_size else saved[0]
        torch.set_rng_state(mine["rng"])
        if "cuda_rng" in mine and torch.cuda.is_available():
            torch.cuda.set_rng_state(mine["cuda_rng"])
    elif "rng" in ts:  # written by an earlier version: one process's state
        torch.set_rng_state(ts["rng"])
    state = TrainState(**{k: ts[k] for k in ("epoch", "batch", "step", "loss_sum", "tokens", "skipped", "extras",
                                             "history") if k in ts})
    if _finished_epoch(ts):  # trainer.resume=.../best.pt: continue after its epoch
        state.next_epoch()
    best_here, best_there = run_dir / "checkpoints" / "best.pt", path.parent / "best.pt"
    best = best_there if best_there.is_file() else best_here
    if copy_best and best_there.is_file() and best_there.resolve() != best_here.resolve():
        with atomic_path(best_here) as tmp:
            shutil.copyfile(best_there, tmp)
    if best.is_file():
        ts_best = load_checkpoint(best)["train_state"]
        state.best_score, state.best_epoch = ts_best["best_score"], ts_best["best_epoch"]
    return state
