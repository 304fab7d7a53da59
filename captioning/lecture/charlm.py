"""A character-level language model on the captioner's recurrent cores, trained with TBPTT.

    x_t = E[c_t];   h_t, state = core(x_t, state);   p(c_{t+1} | c_<=t) = softmax(W_hy h_t + b_y)

Loss: mean cross-entropy per character; perplexity = exp(loss). Sampling draws
c_{t+1} ~ softmax(logits / temperature) (variety; low temperature -> conservative, high -> wild),
argmax takes the most likely character every step (stable, but it falls into loops).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioning.data.coco import load_coco_captions
from captioning.io import InputError, atomic_path, existing_file, read_text
from captioning.lecture.tbptt import batchify, carry_forward, chunks
from captioning.models.cells import State, build_recurrent

CHECKPOINT_FORMAT = "captioning-charlm/1"


class CharVocab:
    """The sorted set of characters in the training text; ids are positions."""

    def __init__(self, chars: list[str]):
        self.itos = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def build(cls, text: str) -> "CharVocab":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> Tensor:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:10]!r}")
        return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)  # (N,)

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"chars": self.itos}

    @classmethod
    def from_dict(cls, d: dict) -> "CharVocab":
        return cls(list(d["chars"]))


@dataclass
class LMConfig:
    vocab_size: int
    embed_dim: int = 32
    hidden_dim: int = 256   # the captioner's name (DecoderOptions.hidden_dim)
    num_layers: int = 1
    cell: str = "lstm"    # lstm | gru | rnn
    impl: str = "fused"   # fused | explicit
    dropout: float = 0.0


class CharLM(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.rnn = build_recurrent(c.cell, c.impl, c.embed_dim, c.hidden_dim, c.num_layers, c.dropout)
        self.out = nn.Linear(c.hidden_dim, c.vocab_size)

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) -> logits (B, T, V) and the state after the last step."""
        h, state = self.rnn(self.embed(ids), state)  # (B, T, H)
        return self.out(h), state


def _loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def train_epoch(model: CharLM, stream: Tensor, steps: int, optimizer: torch.optim.Optimizer,
                clip: float | None) -> float:
    """One pass of truncated BPTT over `stream` (B, N): one update per chunk of `steps` steps.
    Returns the mean loss per character."""
    model.train()
    pairs = list(chunks(stream, steps))
    total, count = 0.0, 0
    for (logits, _), (_, y) in zip(carry_forward(model, (x for x, _ in pairs)), pairs):
        loss = _loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # stops at this chunk's (detached) initial state
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        total += loss.item() * y.numel()
        count += y.numel()
    return total / count


@torch.no_grad()
def evaluate(model: CharLM, stream: Tensor, steps: int) -> float:
    """Mean loss per character, the state carried across chunks as in training."""
    model.eval()
    pairs = list(chunks(stream, steps))
    total = sum(_loss(logits, y).item() * y.numel()
                for (logits, _), (_, y) in zip(carry_forward(model, (x for x, _ in pairs)), pairs))
    return total / sum(y.numel() for _, y in pairs)


@torch.no_grad()
def sample(model: CharLM, vocab: CharVocab, prime: str, length: int, temperature: float = 1.0,
           argmax: bool = False, generator: torch.Generator | None = None) -> str:
    """Continue `prime` by `length` characters, one at a time, feeding each choice back in."""
    model.eval()
    device = next(model.parameters()).device
    logits, state = model(vocab.encode(prime).to(device)[None], None)  # warm the state on the prime
    logits = logits[0, -1]  # (V,)
    out = []
    for _ in range(length):
        if argmax:
            nxt = int(logits.argmax())
        else:
            probs = F.softmax(logits / temperature, dim=-1)
            nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]], device=device), state)
        logits = logits[0, -1]
    return prime + vocab.decode(out)


def fit(model: CharLM, train_ids: Tensor, val_ids: Tensor, *, steps: int, batch_size: int, epochs: int,
        optimizer: torch.optim.Optimizer, clip: float | None, on_epoch=None) -> list[dict]:
    """Train for `epochs`; after each, report train/val loss and perplexity and the (wall and CPU)
    seconds its training pass took.
    `on_epoch(row)` is called after every epoch (the CLI saves checkpoints there)."""
    device = next(model.parameters()).device
    train_stream = batchify(train_ids, batch_size).to(device)
    val_stream = batchify(val_ids, min(batch_size, max(1, val_ids.numel() // (steps + 1)))).to(device)
    history = []
    for epoch in range(1, epochs + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        train_loss = train_epoch(model, train_stream, steps, optimizer, clip)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        val_loss = evaluate(model, val_stream, steps)
        row = {"epoch": epoch, "train_loss": train_loss, "train_ppl": math.exp(train_loss),
               "val_loss": val_loss, "val_ppl": math.exp(val_loss), "seconds": seconds,
               "cpu_seconds": cpu_seconds}  # CPU time of all threads: steadier than wall time on a shared machine
        history.append(row)
        if on_epoch:
            on_epoch(row)
    return history


def load_text(text_file: str | None = None, annotations: str | None = None, max_chars: int | None = None) -> str:
    """The training text: a UTF-8 text file, or the captions of a COCO annotations file joined by
    newlines (`text_file` wins when both are given); cut to the first `max_chars` characters."""
    if text_file:
        text = read_text(text_file, "text file")
    elif annotations:
        if not Path(annotations).is_file():
            raise InputError(f"captions file not found: {annotations} (the shapes demo writes it: "
                             "`python datasets/make_shapes.py --out data/shapes`; or pass text_file=... "
                             "or annotations=...)")
        coco = load_coco_captions(annotations)
        text = "\n".join(c for i in coco.image_ids for c in coco.captions[i]) + "\n"
    else:
        raise InputError("no training text: set text_file=... or annotations=...")
    text = text[:max_chars] if max_chars else text
    if len(text) < 2:
        raise InputError(f"training text {text_file or annotations} has {len(text)} characters; need at least 2")
    return text


def save_lm(path: str | Path, model: CharLM, vocab: CharVocab, history: list[dict]) -> None:
    """Atomic checkpoint of plain data + tensors (loadable with weights_only=True)."""
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(model.config), "vocab": vocab.to_dict(),
               "model_state": model.state_dict(), "history": history}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_lm(path: str | Path, map_location: str = "cpu") -> tuple[CharLM, CharVocab, list[dict]]:
    path = existing_file(path, "LM checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise InputError(f"{path} is not a readable checkpoint: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a character-LM checkpoint (format {CHECKPOINT_FORMAT!r})")
    config = dict(payload["config"])
    if "hidden_size" in config:  # written before the option took the captioner's name
        config["hidden_dim"] = config.pop("hidden_size")
    model = CharLM(LMConfig(**config))
    model.load_state_dict(payload["model_state"])
    return model, CharVocab.from_dict(payload["vocab"]), payload["history"]
