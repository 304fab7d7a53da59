"""Recurrent cells written from the lecture's equations, and torch's fused equivalents.

Two implementations of every core, selected by `build_recurrent(cell, impl, ...)`:

* ``fused``: torch's nn.RNN / nn.LSTM / nn.GRU (cuDNN / oneDNN kernels; the fast default);
* ``explicit``: one module per cell below, the equations visible in the code.

The explicit cells keep torch's weight layout (gate blocks stacked in torch's order), so
`copy_fused_weights` maps one onto the other 1:1 and tests can check that both give the same
outputs and gradients. Every cell precomputes the input projection ``W_ih x_t + b_ih`` for
all time steps with one matmul; only the recurrent part ``W_hh h_{t-1}`` runs step by step.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

State = Tensor | tuple[Tensor, Tensor]


class _Cell(nn.Module):
    """Shared parameters: W_ih (G*H, I), W_hh (G*H, H), b_ih, b_hh with G gate blocks."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        g = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(g))
        self.bias_hh = nn.Parameter(torch.empty(g))
        bound = 1.0 / math.sqrt(hidden_size)  # torch's default init, U(-1/sqrt(H), 1/sqrt(H))
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project_input(self, x: Tensor) -> Tensor:
        """W_ih x + b_ih for a whole sequence at once: (..., I) -> (..., G*H)."""
        return x @ self.weight_ih.T + self.bias_ih

    def forward(self, x: Tensor, state: State) -> State:
        """One time step from the raw input x (B, I)."""
        return self.step(self.project_input(x), state)

    def step(self, x_proj: Tensor, state: State) -> State:  # pragma: no cover - abstract
        raise NotImplementedError


class RNNCell(_Cell):
    """Vanilla RNN:  h_t = tanh(W_xh x_t + W_hh h_{t-1} + b).

    dh_t/dh_{t-1} = diag(1 - h_t^2) W_hh, so the gradient reaching early steps is a product
    of T such matrices: it vanishes (or explodes) geometrically with the sequence length.
    """

    gates = 1

    def step(self, x_proj: Tensor, h: Tensor) -> Tensor:
        return torch.tanh(x_proj + h @ self.weight_hh.T + self.bias_hh)  # (B, H)


class LSTMCell(_Cell):
    """LSTM with the four gates i, f, o, g (torch's block order i, f, g, o):

        i = sigmoid(W_xi x + W_hi h + b_i)      input gate: how much to write
        f = sigmoid(W_xf x + W_hf h + b_f)      forget gate: how much of c to keep
        g = tanh(W_xg x + W_hg h + b_g)         the candidate to write
        o = sigmoid(W_xo x + W_ho h + b_o)      output gate: how much of c to show
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    The cell state is the "gradient highway": dc_t/dc_{t-1} = f (elementwise, no matrix
    product, no squashing), so with f near 1 the gradient flows back many steps.
    """

    gates = 4

    def step(self, x_proj: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, g, o = (x_proj + h @ self.weight_hh.T + self.bias_hh).chunk(4, dim=-1)  # 4 x (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class GRUCell(_Cell):
    """GRU (torch's formulation, block order r, z, n):

        r = sigmoid(W_xr x + b_xr + W_hr h + b_hr)          reset gate
        z = sigmoid(W_xz x + b_xz + W_hz h + b_hz)          update gate
        n = tanh(W_xn x + b_xn + r * (W_hn h + b_hn))       candidate
        h_t = (1 - z) * n + z * h_{t-1}

    The z * h_{t-1} path plays the role of the LSTM's cell-state highway.
    """

    gates = 3

    def step(self, x_proj: Tensor, h: Tensor) -> Tensor:
        xr, xz, xn = x_proj.chunk(3, dim=-1)
        hr, hz, hn = (h @ self.weight_hh.T + self.bias_hh).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class ExplicitRecurrent(nn.Module):
    """Stack of explicit cells with the calling convention of torch's batch_first RNN modules:
    ``out (B, T, H), state = m(x (B, T, I), state=None)``; state is h (L, B, H) or (h, c).

    After each call, `hidden_states` holds the top layer's per-step h_t tensors (still in the
    autograd graph), so tools can ask for dL/dh_t with `retain_grad()`.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.cells = nn.ModuleList(CELLS[cell](input_size if k == 0 else hidden_size, hidden_size)
                                   for k in range(num_layers))
        self.dropout = nn.Dropout(dropout)  # between layers, as in torch
        self.hidden_states: list[Tensor] = []

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        B, T, _ = x.shape
        lstm = self.cell == "lstm"
        if state is None:
            zeros = x.new_zeros(self.num_layers, B, self.hidden_size)
            state = (zeros, zeros) if lstm else zeros
        finals_h, finals_c = [], []
        layer_in = x  # (B, T, I)
        for k, cell in enumerate(self.cells):
            s = (state[0][k], state[1][k]) if lstm else state[k]
            x_proj = cell.project_input(layer_in)  # (B, T, G*H), one matmul for all steps
            hs = []
            for t in range(T):
                s = cell.step(x_proj[:, t], s)
                hs.append(s[0] if lstm else s)
            finals_h.append(s[0] if lstm else s)
            if lstm:
                finals_c.append(s[1])
            layer_in = torch.stack(hs, dim=1)  # (B, T, H)
            if k < self.num_layers - 1:
                layer_in = self.dropout(layer_in)
        self.hidden_states = hs
        h = torch.stack(finals_h)  # (L, B, H)
        return layer_in, ((h, torch.stack(finals_c)) if lstm else h)


def build_recurrent(cell: str, impl: str, input_size: int, hidden_size: int, num_layers: int = 1,
                    dropout: float = 0.0) -> nn.Module:
    """The decoder's recurrent core: `cell` in rnn|lstm|gru, `impl` in fused|explicit."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    if impl == "fused":
        kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        return FUSED[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0, **kwargs)
    if impl == "explicit":
        return ExplicitRecurrent(cell, input_size, hidden_size, num_layers, dropout)
    raise ValueError(f"impl must be 'fused' or 'explicit', got {impl!r}")


@torch.no_grad()
def copy_fused_weights(explicit: ExplicitRecurrent, fused: nn.Module) -> None:
    """Give `explicit` the same weights as torch's `fused` module (same gate layout)."""
    for k, cell in enumerate(explicit.cells):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(fused, f"{name}_l{k}"))
