"""The options of the model's parts, as dataclasses: the one source of their defaults.

The Python API takes its defaults from here (`DecoderConfig` extends `DecoderOptions`,
`Captioner.caption` uses `DecodeOptions`), and the Hydra groups `conf/decoder/` and `conf/decode/`
extend the same classes as structured-config schemas (registered in `captioning/cli/_conf.py`), so a
value left out of a YAML file is the API's default and a mistyped key or a value of the wrong type
is refused when the command line is parsed. Plain Python (no torch), so the command-line tools can
read it before their heavy imports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from captioning.io import InputError

CELLS = ("rnn", "lstm", "gru")
IMPLS = ("fused", "explicit")
INJECT_MODES = ("init", "pre", "par")
DECODE_METHODS = ("greedy", "beam", "sample")


@dataclass
class DecoderOptions:
    """Hyper-parameters of the caption decoder (`captioning.models.decoder.CaptionDecoder`)."""

    embed_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 1
    cell: str = "lstm"      # lstm | gru | rnn
    impl: str = "fused"     # fused (torch's cuDNN/oneDNN kernels) | explicit (the lecture's equations)
    inject: str = "init"    # init: h0 = tanh(W_ih v + b) | pre: image is the first input | par: added at every step
    dropout: float = 0.3    # on the word embeddings, between layers and before the output layer

    def check(self) -> None:
        """InputError naming the option when a value cannot work; called before any long work starts."""
        problems = [f"decoder.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                    for name, allowed in (("cell", CELLS), ("impl", IMPLS), ("inject", INJECT_MODES))
                    if getattr(self, name) not in allowed]
        problems += [f"decoder.{name} must be at least 1, got {getattr(self, name)}"
                     for name in ("embed_dim", "hidden_dim", "num_layers") if getattr(self, name) < 1]
        if not 0 <= self.dropout < 1:
            problems.append(f"decoder.dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise InputError("; ".join(problems))


@dataclass
class DecodeOptions:
    """How captions are generated (`captioning.decoding.decode`); the defaults are beam search, 3 beams."""

    method: str = "beam"         # greedy | beam | sample
    beam_size: int = 3           # beam
    max_len: int = 20            # words at most, <end> excluded
    length_norm: float = 0.7     # beam: the winner maximises log p / length ** length_norm (0: raw log p)
    temperature: float = 1.0     # sample: softmax(logits / temperature)
    top_k: Optional[int] = None  # sample: only from the k most likely words (None: all)

    def check(self) -> None:
        """InputError naming the option when a value cannot work; called before any long work starts."""
        problems = []
        if self.method not in DECODE_METHODS:
            problems.append(f"decode.method must be one of {', '.join(DECODE_METHODS)}, got {self.method!r}")
        if self.beam_size < 1:
            problems.append(f"decode.beam_size must be at least 1, got {self.beam_size}")
        if self.max_len < 1:
            problems.append(f"decode.max_len must be at least 1, got {self.max_len}")
        if not self.temperature > 0:  # also catches nan
            problems.append(f"decode.temperature must be > 0 (decode.method=greedy for argmax), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"decode.top_k must be at least 1 or null, got {self.top_k}")
        if self.length_norm != self.length_norm:
            problems.append("decode.length_norm must be a number, got nan")
        if problems:
            raise InputError("; ".join(problems))
