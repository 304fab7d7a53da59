"""Decoding's vocabulary projection on oneDNN: the same logits as nn.Linear to rounding, the same captions, the
choice per machine (CPU vendor) with its override, and nn.Linear wherever a gradient or autocast is involved."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from captioning.config import DecodeOptions as D
from captioning.decoding import SpecialIds, beam_search, greedy
from captioning.models import DecoderConfig, build_decoder
from captioning.models import projection
from captioning.models.projection import onednn_gemm, vocab_logits


@pytest.fixture
def gemm(monkeypatch):
    """Set CAPTIONING_GEMM for one test (None: unset), the choice made again."""
    def use(value):
        if value is None:
            monkeypatch.delenv("CAPTIONING_GEMM", raising=False)
        else:
            monkeypatch.setenv("CAPTIONING_GEMM", value)
        onednn_gemm.cache_clear()
    yield use
    onednn_gemm.cache_clear()


def test_onednn_logits_equal_linear_to_rounding(gemm):
    gemm("onednn")
    assert onednn_gemm()
    layer, h = nn.Linear(64, 500), torch.randn(37, 64)
    with torch.no_grad():
        fast, reference = vocab_logits(layer, h), layer(h)
        strided = vocab_logits(layer, torch.randn(37, 2, 64)[:, 0])  # a step's output slice, not contiguous
    assert fast.shape == reference.shape == strided.shape == (37, 500)
    assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-5)


def test_gradient_and_autocast_keep_nn_linear(gemm, monkeypatch):
    gemm("onednn")
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a) or torch.zeros(1))
    layer, h = nn.Linear(8, 10), torch.randn(3, 8)
    out = vocab_logits(layer, h)  # grad enabled: the graph must reach layer's weights
    out.sum().backward()
    assert layer.weight.grad is not None and not calls
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert vocab_logits(layer, h).dtype == torch.bfloat16 and not calls
    with torch.no_grad():
        vocab_logits(layer, h)
    assert len(calls) == 1


def test_choice_by_vendor_and_override(gemm, monkeypatch):
    monkeypatch.setattr(projection.platform, "machine", lambda: "x86_64")
    for vendor, expected in (("GenuineIntel", False), ("AuthenticAMD", True), ("", False)):
        monkeypatch.setattr(projection, "cpu_vendor", lambda v=vendor: v)
        gemm(None)
        assert onednn_gemm() is expected, vendor
        gemm("mkl")
        assert onednn_gemm() is False
    gemm("cublas")
    with pytest.raises(ValueError, match="CAPTIONING_GEMM must be 'mkl' or 'onednn', got 'cublas'"):
        onednn_gemm()
    monkeypatch.setattr(projection.platform, "machine", lambda: "aarch64")
    gemm("onednn")
    assert onednn_gemm() is False  # asked for, but not there: torch's default


@pytest.mark.parametrize("inject", ["init", "attention"])
def test_captions_agree_across_the_two_gemms(gemm, inject):
    torch.manual_seed(0)
    decoder = build_decoder(DecoderConfig(vocab_size=300, feature_dim=16, embed_dim=8, hidden_dim=32,
                                          inject=inject, attention_dim=8)).eval()
    features = torch.randn(24, 16) if inject == "init" else torch.randn(24, 5, 16)
    ids = SpecialIds(1, 2, 0)
    out = {}
    for choice in ("mkl", "onednn"):
        gemm(choice)
        with torch.no_grad():
            out[choice] = (greedy(decoder, features, D(max_len=8), ids).ids,
                           beam_search(decoder, features, D(max_len=8, beam_size=3), ids).ids)
    assert torch.equal(out["mkl"][0], out["onednn"][0]) and torch.equal(out["mkl"][1], out["onednn"][1])
