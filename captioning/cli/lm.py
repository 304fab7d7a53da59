"""captioning-lm: train a character-level LM with truncated BPTT, report perplexity, sample text.

    captioning-lm                                         # conf/lm.yaml defaults (shapes captions)
    captioning-lm text_file=book.txt tbptt.steps=128 trainer.max_epochs=5

Writes metrics.json (per epoch: train/val loss and perplexity, seconds), samples.json and
checkpoints/{last,best}.pt to the run directory.
"""
from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from captioning.cli._conf import CONF_DIR
from captioning.cli.common import run_entry_point, take_renamed, user_errors


def _train_and_sample(cfg: DictConfig, out: str) -> dict:
    import torch

    from captioning.io import InputError, atomic_write_json
    from captioning.lecture.charlm import CharLM, CharVocab, LMConfig, fit, load_lm, load_text, sample, save_lm

    take_renamed(cfg, {"model.hidden_size": "model.hidden_dim", "optim.lr": "optim.optimizer.lr",
                       "optim.epochs": "trainer.max_epochs", "optim.clip": "trainer.grad_clip"})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    text = load_text(cfg.text_file, cfg.annotations, cfg.max_chars)
    if cfg.init_from:
        model, vocab, _ = load_lm(cfg.init_from)
        kept = "".join(c for c in text if c in vocab.stoi)  # the checkpoint's alphabet is fixed
        if len(kept) < len(text):
            print(f"dropped {len(text) - len(kept)} characters that {cfg.init_from} has never seen")
        text = kept
    else:
        vocab = CharVocab.build(text)
        model = CharLM(LMConfig(vocab_size=len(vocab), **cfg.model))
    prime = cfg.sample.prime
    if any(c not in vocab.stoi for c in prime):
        raise InputError(f"sample.prime {prime!r} has characters that are not in the training text")
    model.to(cfg.device)
    ids = vocab.encode(text)
    n_val = max(int(len(ids) * cfg.val_fraction), cfg.tbptt.steps + 1)
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    if len(train_ids) < 2 * cfg.tbptt.batch_size:
        raise InputError(f"training text {cfg.text_file or cfg.annotations} is too short: {len(text)} characters "
                         f"for {cfg.tbptt.batch_size} streams and a validation slice of {n_val}")
    print(f"text: {len(text):,} characters, {len(vocab)} distinct; train {len(train_ids):,} / val {len(val_ids):,}; "
          f"{model.config.cell} ({model.config.impl}), tbptt.steps={cfg.tbptt.steps}")

    history: list[dict] = []
    ckpt_dir = os.path.join(out, "checkpoints")

    def on_epoch(row: dict) -> None:
        best = min((r["val_loss"] for r in history), default=float("inf"))
        history.append(row)
        print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} (ppl {row['train_ppl']:.3f})  "
              f"val loss {row['val_loss']:.4f} (ppl {row['val_ppl']:.3f})  {row['seconds']:.1f} s "
              f"(CPU {row['cpu_seconds']:.1f} s)")
        save_lm(os.path.join(ckpt_dir, "last.pt"), model, vocab, history)
        if row["val_loss"] < best:
            save_lm(os.path.join(ckpt_dir, "best.pt"), model, vocab, history)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.optimizer.lr)
    fit(model, train_ids, val_ids, steps=cfg.tbptt.steps, batch_size=cfg.tbptt.batch_size,
        epochs=cfg.trainer.max_epochs, optimizer=optimizer, clip=cfg.trainer.grad_clip, on_epoch=on_epoch)
    atomic_write_json(os.path.join(out, "metrics.json"),
                      {"epochs": history, "tbptt_steps": cfg.tbptt.steps, "chars": len(text),
                       "vocab_size": len(vocab)})

    gen = torch.Generator().manual_seed(cfg.seed)
    samples = {f"temperature={t:g}": [sample(model, vocab, prime, cfg.sample.length, temperature=t, generator=gen)
                                      for _ in range(cfg.sample.num_samples)]
               for t in cfg.sample.temperatures}
    if cfg.sample.argmax:
        samples["argmax"] = [sample(model, vocab, prime, cfg.sample.length, argmax=True)]
    atomic_write_json(os.path.join(out, "samples.json"), samples)
    for name, texts in samples.items():
        print(f"--- {name}")
        for t in texts:
            print(t.strip())
    return {"history": history}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="lm")
def run(cfg: DictConfig) -> float | None:
    with user_errors():
        result = _train_and_sample(cfg, cfg.out_dir)
    print(f"run directory: {cfg.out_dir}  (metrics.json, samples.json, checkpoints/)")
    return result["history"][-1]["val_loss"] if result["history"] else None


def main() -> None:
    run_entry_point(run)


if __name__ == "__main__":
    main()
