"""The explicit cells are the lecture's equations; torch's fused modules are the reference."""
from __future__ import annotations

import pytest
import torch

from captioning.models.cells import CELLS, GRUCell, LSTMCell, RNNCell, build_recurrent, copy_fused_weights

B, T, I, H = 3, 7, 5, 6


def _pair(cell: str, num_layers: int, dtype=torch.float32):
    torch.manual_seed(0)
    fused = build_recurrent(cell, "fused", I, H, num_layers).to(dtype)
    explicit = build_recurrent(cell, "explicit", I, H, num_layers).to(dtype)
    copy_fused_weights(explicit, fused)
    return explicit, fused


def _state(cell: str, num_layers: int, dtype=torch.float32):
    h = torch.randn(num_layers, B, H, dtype=dtype, requires_grad=True)
    if cell == "lstm":
        return h, torch.randn(num_layers, B, H, dtype=dtype, requires_grad=True)
    return h


def _flat(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_explicit_matches_fused_outputs_states_and_gradients(cell, num_layers):
    explicit, fused = _pair(cell, num_layers)
    torch.manual_seed(1)
    x = torch.randn(B, T, I)
    state = _state(cell, num_layers)
    results = []
    for m in (explicit, fused):
        xi = x.clone().requires_grad_(True)
        s0 = tuple(s.detach().clone().requires_grad_(True) for s in _flat(state))
        out, s = m(xi, s0 if cell == "lstm" else s0[0])
        assert out.shape == (B, T, H)
        assert all(t.shape == (num_layers, B, H) for t in _flat(s))
        # a loss touching every output and the final state(s), with non-uniform weights
        w = torch.linspace(-1, 1, out.numel()).view_as(out)
        loss = (out * w).sum() + sum((t ** 2).sum() for t in _flat(s))
        params = dict(m.named_parameters())
        grads = torch.autograd.grad(loss, [xi, *s0, *params.values()])
        results.append((out, _flat(s), grads[: 1 + len(s0)], dict(zip(params, grads[1 + len(s0):]))))
    (out_e, s_e, g_e, pg_e), (out_f, s_f, g_f, pg_f) = results
    torch.testing.assert_close(out_e, out_f, atol=1e-5, rtol=1e-5)
    for a, b in zip(s_e, s_f):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_e, g_f):  # d loss / d input and d loss / d initial state
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # parameter gradients: explicit `cells.k.weight_ih` <-> fused `weight_ih_lk`
    assert len(pg_e) == len(pg_f) == 4 * num_layers
    for name, g in pg_e.items():
        _, k, w = name.split(".")
        torch.testing.assert_close(g, pg_f[f"{w}_l{k}"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_zero_state_default_matches_explicit_zeros(cell):
    explicit, fused = _pair(cell, 2)
    x = torch.randn(B, T, I)
    zeros = torch.zeros(2, B, H)
    for m in (explicit, fused):
        out_none, _ = m(x)
        out_zero, _ = m(x, (zeros, zeros) if cell == "lstm" else zeros)
        torch.testing.assert_close(out_none, out_zero)


@pytest.mark.parametrize("cell_cls", [RNNCell, LSTMCell, GRUCell])
def test_explicit_cell_step_gradcheck(cell_cls):
    """Analytic gradients of one step w.r.t. input, state and every weight match finite differences."""
    torch.manual_seed(0)
    cell = cell_cls(3, 4).double()
    lstm = cell_cls is LSTMCell
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in cell.named_parameters()]
    weights = tuple(p.detach().clone().requires_grad_(True) for p in cell.parameters())

    def step(x, h, c, *ws):
        return torch.func.functional_call(cell, dict(zip(names, ws)), (x, (h, c) if lstm else h))

    assert torch.autograd.gradcheck(step, (x, h, c, *weights))


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_explicit_module_gradcheck(cell, num_layers):
    """The multi-layer module, through time, w.r.t. the input sequence and the initial state."""
    torch.manual_seed(0)
    m = build_recurrent(cell, "explicit", 3, 4, num_layers).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(num_layers, 2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(num_layers, 2, 4, dtype=torch.float64, requires_grad=True)

    def run(x, h0, c0):
        out, final = m(x, (h0, c0) if cell == "lstm" else h0)
        return out, *_flat(final)

    assert torch.autograd.gradcheck(run, (x, h0, c0))


def test_hidden_states_are_per_step_and_in_the_graph():
    """dL/dh_t for every t: the gradient-flow tool relies on this."""
    m = build_recurrent("lstm", "explicit", I, H)
    out, _ = m(torch.randn(B, T, I))
    hs = m.hidden_states
    assert len(hs) == T
    for t, h in enumerate(hs):
        torch.testing.assert_close(h, out[:, t])
        h.retain_grad()
    out[:, -1].sum().backward()
    assert all(h.grad is not None for h in hs)
    assert hs[-1].grad.abs().sum() > 0
    # the loss sits at step T-1; the gradient reaching t=0 passes through W_hh and is not zero either
    assert hs[0].grad.abs().sum() > 0


def test_dropout_between_layers_only_in_training():
    m = build_recurrent("gru", "explicit", I, H, num_layers=2, dropout=0.5)
    x = torch.randn(B, T, I)
    m.eval()
    torch.testing.assert_close(m(x)[0], m(x)[0])
    m.train()
    torch.manual_seed(0)
    a = m(x)[0]
    torch.manual_seed(1)
    assert not torch.allclose(a, m(x)[0])


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="cell must be"):
        build_recurrent("transformer", "fused", I, H)
    with pytest.raises(ValueError, match="impl must be"):
        build_recurrent("lstm", "cuda", I, H)
