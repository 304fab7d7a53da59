"""Gradient flow through time: the measurement is right, and the lecture's claim holds."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from captioning.cli._conf import CONF_DIR
from captioning.cli.gradflow import run
from captioning.io import read_json

from captioning.lecture.gradflow import FlowConfig, _inputs, build_cell, clipping_demo, gradient_norms


pytestmark = pytest.mark.usefixtures("one_thread")


def test_rnn_norms_match_the_backward_recursion_by_hand():
    """dL/dh_{t-1} = W_hh^T (dL/dh_t * (1 - h_t^2)), starting from dL/dh_{T-1} = readout / B."""
    cfg = FlowConfig(seq_len=12, hidden_size=8, input_size=3, batch_size=4)
    measured = gradient_norms("rnn", cfg, seed=0)

    m = build_cell("rnn", cfg, seed=0)
    x, readout = _inputs(cfg, seed=0)
    with torch.no_grad():
        m(x)
        hs = m.hidden_states
        W = m.cells[0].weight_hh  # (H, H)
        delta = readout.expand(cfg.batch_size, -1) / cfg.batch_size  # (B, H)
        expected = [delta.norm()]
        for t in range(cfg.seq_len - 1, 0, -1):
            delta = (delta * (1 - hs[t] ** 2)) @ W  # row-vector form of W^T (delta * tanh')
            expected.append(delta.norm())
    torch.testing.assert_close(measured, torch.stack(expected[::-1]))


def test_larger_forget_bias_keeps_more_gradient():
    """The LSTM's highway is the forget gate: remembering more means more gradient reaches t=0."""
    ratios = []
    for fb in (-2.0, 0.0, 2.0):
        n = gradient_norms("lstm", FlowConfig(seq_len=30, hidden_size=16, batch_size=2, forget_bias=fb), seed=0)
        ratios.append(float(n[0] / n[-1]))
    assert ratios[0] < ratios[1] < ratios[2]


def test_clipping_rescales_an_exploding_gradient_and_keeps_its_direction():
    cfg = FlowConfig(seq_len=50, init="orthogonal", recurrent_gain=2.0)
    r = clipping_demo(cfg, seed=0, max_norm=1.0, lr=0.1)
    assert r["dh_norms"][0] > 100 * r["dh_norms"][-1]  # it explodes going back in time
    assert r["grad_norm_before"] > 100
    assert abs(r["grad_norm_after"] - 1.0) < 1e-6
    assert abs(r["cosine_before_after"] - 1.0) < 1e-9
    assert abs(r["sgd_step_after"] - 0.1) < 1e-6


def test_cli_default_settings_show_the_vanishing_gradient(tmp_path: Path, capsys):
    """The lecture's claim on the default config: over 100 steps the vanilla RNN's dL/dh_0,
    relative to dL/dh_T, is at least 100x smaller than the LSTM's. (The entry point runs
    in-process on the composed config: same code path, no second interpreter to start.)"""
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("gradflow", overrides=[f"out_dir={tmp_path}"])
    run(cfg)
    result = read_json(tmp_path / "gradflow.json")
    assert result["config"]["seq_len"] == 100
    cells = result["cells"]
    assert set(cells) == {"rnn", "lstm", "gru"}
    for r in cells.values():
        assert len(r["norms"]) == 100 and len(r["per_seed"]) == 3
        assert abs(r["first_over_last"] - r["norms"][0] / r["norms"][-1]) <= 1e-9 * r["first_over_last"]
    assert cells["rnn"]["first_over_last"] * 100 <= cells["lstm"]["first_over_last"]
    clip = result["clipping"]
    assert clip["grad_norm_before"] > clip["max_norm"]
    assert abs(clip["grad_norm_after"] - clip["max_norm"]) < 1e-6
    png = (tmp_path / "gradflow.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    out = capsys.readouterr().out
    assert "rnn" in out and "clip_grad_norm_" in out
