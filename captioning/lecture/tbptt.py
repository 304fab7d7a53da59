"""Truncated backpropagation through time.

A long sequence is cut into chunks of `steps` time steps. The forward pass carries the hidden
state from one chunk into the next (so the model still *sees* the whole past), but the state is
detached at every chunk boundary, so backprop stops there: the cost of one update is O(steps)
in time and memory instead of O(sequence length), and the gradient sees at most `steps` steps
of dependence. Bigger `steps` = longer dependencies learnt, fewer (and slower) updates per epoch.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from torch import Tensor, nn

from captioning.models.cells import State


def detach_state(state: State | None) -> State | None:
    """Same values, no history: the gradient cannot flow back through this state."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut a 1-D stream (N,) into `batch_size` contiguous parallel streams (B, N // B).

    Row b continues where it left off from one chunk to the next, which is what lets the
    hidden state carry over between chunks.
    """
    n = ids.numel() // batch_size
    if n < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for {batch_size} parallel streams")
    return ids[: n * batch_size].view(batch_size, n)  # (B, N // B)


def chunks(stream: Tensor, steps: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive (inputs, targets) chunks of at most `steps` steps: targets are inputs shifted by one."""
    length = stream.shape[1] - 1  # the last token is only ever a target
    for start in range(0, length, steps):
        end = min(start + steps, length)
        yield stream[:, start:end], stream[:, start + 1:end + 1]  # (B, T), (B, T)


def carry_forward(model: nn.Module, inputs: Iterable[Tensor], state: State | None = None
                  ) -> Iterator[tuple[Tensor, State]]:
    """Run `model(x, state) -> (out, state)` over consecutive chunks, carrying the state forward
    and detaching it at each boundary. Lazy: the caller can backprop and step the optimizer on
    each chunk's output before the next chunk is computed."""
    for x in inputs:
        out, state = model(x, detach_state(state))
        yield out, state
