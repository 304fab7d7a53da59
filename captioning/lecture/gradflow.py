"""Gradient flow through time: how much of dL/dh_T reaches dL/dh_t, for RNN vs LSTM vs GRU.

The loss sits at the last step T-1 (a fixed random readout of h_{T-1}). Backprop multiplies the
gradient by the step Jacobian once per step back:

    vanilla RNN:  dh_t/dh_{t-1} = diag(1 - h_t^2) W_hh      -> a product of T matrices: vanishes
                                                              (or explodes) geometrically;
    LSTM:         dc_t/dc_{t-1} = diag(f_t)                  -> the cell state is a "gradient
                                                              highway", no matrix, no tanh'.

`gradient_norms` measures ||dL/dh_t|| for every t on the explicit cells (the same modules the
captioner can use), in float64 so that a 1e-40 gradient is still a number and not an underflow.
`clipping_demo` shows what `clip_grad_norm_` does when a vanilla RNN with a large recurrent init
explodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from captioning.models.cells import ExplicitRecurrent, build_recurrent

INITS = ("default", "orthogonal")


@dataclass
class FlowConfig:
    seq_len: int = 100
    input_size: int = 16
    hidden_size: int = 64
    batch_size: int = 8
    init: str = "default"         # default: torch's U(-1/sqrt(H), 1/sqrt(H)); orthogonal: W_hh = gain * Q
    recurrent_gain: float = 1.0   # multiplies W_hh after init (> 1 makes a vanilla RNN explode)
    forget_bias: float = 1.0      # LSTM forget-gate bias (b_ih + b_hh), the usual "remember by default"


def build_cell(cell: str, cfg: FlowConfig, seed: int) -> ExplicitRecurrent:
    """One explicit single-layer core in float64, initialised as `cfg` says."""
    torch.manual_seed(seed)
    m = build_recurrent(cell, "explicit", cfg.input_size, cfg.hidden_size).double()
    core = m.cells[0]
    H = cfg.hidden_size
    with torch.no_grad():
        if cfg.init == "orthogonal":
            for block in core.weight_hh.split(H):  # one orthogonal matrix per gate block
                nn.init.orthogonal_(block)
        elif cfg.init != "default":
            raise ValueError(f"init must be one of {INITS}, got {cfg.init!r}")
        core.weight_hh.mul_(cfg.recurrent_gain)
        if cell == "lstm":  # gate blocks i, f, g, o: the forget gate is the second
            core.bias_ih[H:2 * H].fill_(cfg.forget_bias)
            core.bias_hh[H:2 * H].zero_()
    return m


def _inputs(cfg: FlowConfig, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(cfg.batch_size, cfg.seq_len, cfg.input_size, generator=g, dtype=torch.float64)
    readout = torch.randn(cfg.hidden_size, generator=g, dtype=torch.float64)  # L = mean_b readout . h_{T-1}
    return x, readout


def gradient_norms(cell: str, cfg: FlowConfig, seed: int) -> Tensor:
    """||dL/dh_t|| for t = 0 .. T-1 (norm over batch and hidden units), loss at the last step: (T,)"""
    m = build_cell(cell, cfg, seed)
    x, readout = _inputs(cfg, seed)
    out, _ = m(x)  # (B, T, H)
    hs = m.hidden_states
    for h in hs:
        h.retain_grad()
    loss = (out[:, -1] @ readout).mean()
    loss.backward()
    return torch.stack([h.grad.norm() for h in hs]).detach()  # (T,)


def gradient_flow(cells: list[str], cfg: FlowConfig, seeds: list[int]) -> dict:
    """Per cell: the per-step norms averaged over seeds, and t=0 relative to t=T-1."""
    results = {}
    for cell in cells:
        runs = torch.stack([gradient_norms(cell, cfg, s) for s in seeds])  # (S, T)
        mean = runs.mean(0)
        results[cell] = {"norms": mean.tolist(), "per_seed": runs.tolist(),
                         "first_over_last": float(mean[0] / mean[-1])}
    return results


def clipping_demo(cfg: FlowConfig, seed: int, max_norm: float, lr: float) -> dict:
    """An exploding vanilla RNN: the parameter-gradient norm before and after clipping, and the
    size of the SGD step each would take. Clipping rescales the whole gradient vector to
    `max_norm` (direction kept), so one bad batch cannot throw the weights far away."""
    m = build_cell("rnn", cfg, seed)
    x, readout = _inputs(cfg, seed)
    out, _ = m(x)
    hs = m.hidden_states
    for h in hs:
        h.retain_grad()
    (out[:, -1] @ readout).mean().backward()
    params = list(m.parameters())
    before = torch.cat([p.grad.flatten() for p in params])
    total = float(nn.utils.clip_grad_norm_(params, max_norm))  # returns the norm before clipping
    after = torch.cat([p.grad.flatten() for p in params])
    return {
        "recurrent_gain": cfg.recurrent_gain, "init": cfg.init, "max_norm": max_norm, "lr": lr,
        "dh_norms": [float(h.grad.norm()) for h in hs],
        "grad_norm_before": total, "grad_norm_after": float(after.norm()),
        "cosine_before_after": float(torch.nn.functional.cosine_similarity(before, after, dim=0)),
        "sgd_step_before": lr * total, "sgd_step_after": lr * float(after.norm()),
        "weight_norm": float(torch.cat([p.detach().flatten() for p in params]).norm()),
    }


def plot(flow: dict, clip: dict | None = None):
    """||dL/dh_t|| / ||dL/dh_{T-1}|| per cell (log scale); beside it the exploding RNN. -> Figure"""
    import matplotlib.pyplot as plt

    ncols = 2 if clip else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    ax = axes[0, 0]
    for cell, r in flow.items():
        norms = torch.tensor(r["norms"])
        ax.semilogy(range(len(norms)), (norms / norms[-1]).numpy(), label=cell)
    ax.set(xlabel="time step t (loss at the last step)", ylabel="||dL/dh_t|| / ||dL/dh_T||",
           title="Gradient flow back through time")
    ax.legend()
    ax.grid(True, which="major", alpha=0.3)
    if clip:
        ax = axes[0, 1]
        ax.semilogy(clip["dh_norms"], color="C3")
        ax.set(xlabel="time step t", ylabel="||dL/dh_t||",
               title=f"Exploding RNN (W_hh gain {clip['recurrent_gain']:g})")
        ax.text(0.05, 0.05, f"param grad norm {clip['grad_norm_before']:.3g}\n"
                            f"after clip_grad_norm_({clip['max_norm']:g}): {clip['grad_norm_after']:.3g}",
                transform=ax.transAxes)
        ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return fig
