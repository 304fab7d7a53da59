"""The caption decoder: where the image enters, teacher forcing vs stepping, the padded loss."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from captioning.models import CaptionDecoder, DecoderConfig, caption_loss

V, D, E, H, B, T = 11, 6, 5, 7, 3, 6
CELLS, INJECTS, IMPLS = ("lstm", "gru", "rnn"), ("init", "pre", "par"), ("fused", "explicit")


def make(cell="lstm", inject="init", impl="fused", num_layers=2, dropout=0.0, seed=0, **options) -> CaptionDecoder:
    """A decoder in eval mode; `dropout` for all three dropouts, `options` for any other DecoderOptions."""
    torch.manual_seed(seed)
    rates = {"embed_dropout": dropout, "feature_dropout": dropout, "output_dropout": dropout}
    cfg = DecoderConfig(vocab_size=V, feature_dim=D, embed_dim=E, hidden_dim=H, num_layers=num_layers,
                        cell=cell, impl=impl, inject=inject, **{**rates, **options})
    return CaptionDecoder(cfg).eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randint(0, V, (B, T), generator=g)


@pytest.mark.parametrize("cell,inject,impl", list(itertools.product(CELLS, INJECTS, IMPLS)))
def test_teacher_forcing_equals_stepping(cell, inject, impl):
    """forward() over the whole caption == init_state + one step() per token (what decoding uses)."""
    decoder = make(cell, inject, impl)
    features, captions = batch()
    logits = decoder(features, captions).logits
    assert logits.shape == (B, T - 1, V)
    state, stepped = decoder.init_state(features), []
    for t in range(T - 1):
        out, state, _ = decoder.step(captions[:, t], state, features)
        stepped.append(out)
    assert torch.allclose(logits, torch.stack(stepped, 1), atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_init_injection_sets_every_layers_state(cell):
    """h0 = tanh(W_ih v + b) per layer (and c0 = tanh(W_ic v + b_c) for LSTMs)."""
    decoder = make(cell, "init", num_layers=2)
    features, _ = batch()
    state = decoder.init_state(features)
    h0 = state[0] if cell == "lstm" else state
    assert h0.shape == (2, B, H)
    W, b = decoder.init_state_proj.weight, decoder.init_state_proj.bias  # (2H, D), (2H,)
    for layer in range(2):
        rows = slice(layer * H, (layer + 1) * H)
        assert torch.allclose(h0[layer], torch.tanh(features @ W[rows].T + b[rows]), atol=1e-6)
    if cell == "lstm":
        Wc, bc = decoder.init_cell_proj.weight, decoder.init_cell_proj.bias
        assert torch.allclose(state[1][1], torch.tanh(features @ Wc[H:].T + bc[H:]), atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_pre_and_par_injection_follow_their_equations(cell):
    """pre: the projected image is the first input token; par: it is added to every input."""
    features, captions = batch()
    pre = make(cell, "pre")
    words = pre.embed(captions[:, :-1])  # (B, T-1, E)
    seq = torch.cat([pre.image_proj(features)[:, None], words], 1)  # (B, T, E)
    out, _ = pre.rnn(seq, None)
    assert torch.allclose(pre(features, captions).logits, pre.out(out[:, 1:]), atol=1e-5)

    par = make(cell, "par")
    out, _ = par.rnn(par.embed(captions[:, :-1]) + par.image_proj(features)[:, None], None)
    assert torch.allclose(par(features, captions).logits, par.out(out), atol=1e-5)


@pytest.mark.parametrize("inject", INJECTS)
def test_the_image_changes_every_prediction(inject):
    decoder = make("lstm", inject)
    features, captions = batch()
    a, b = decoder(features, captions).logits, decoder(features.roll(1, 0), captions).logits  # other images
    assert (a - b).abs().amax(-1).gt(1e-4).all()  # every image, every step


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="inject"):
        make(inject="post")
    with pytest.raises(ValueError, match="cell"):
        make(cell="transformer")
    with pytest.raises(ValueError, match="impl"):
        make(impl="cuda")


def test_reorder_state_selects_batch_rows():
    decoder = make("lstm")
    features, _ = batch()
    h, c = decoder.init_state(features)
    index = torch.tensor([2, 2, 0])
    h2, c2 = decoder.reorder_state((h, c), index)
    assert torch.equal(h2, h[:, index]) and torch.equal(c2, c[:, index])
    gru = make("gru")
    assert torch.allclose(gru.reorder_state(gru.init_state(features), index), gru.init_state(features[index]))


def test_loss_ignores_padding_and_matches_manual_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, V, requires_grad=True)
    targets = torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0]])  # 0 = <pad>
    loss = caption_loss(logits, targets, pad_id=0)
    real = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    manual = torch.stack([-logits[i, t].log_softmax(-1)[targets[i, t]] for i, t in real]).mean()
    assert torch.allclose(loss, manual)
    loss.backward()
    assert logits.grad[0, 3].abs().sum() == 0 and logits.grad[1, 2:].abs().sum() == 0  # no signal from padding
    # Changing the logits at padded positions does not change the loss.
    shifted = logits.detach().clone()
    shifted[1, 2:] += 100 * torch.randn(2, V)
    assert torch.allclose(caption_loss(shifted, targets, pad_id=0), manual)


def test_label_smoothing_matches_its_definition():
    torch.manual_seed(0)
    logits, targets, eps = torch.randn(3, V), torch.tensor([4, 0, 9]), 0.1
    loss = caption_loss(logits[None], targets[None], pad_id=0, label_smoothing=eps)
    logp = logits[[0, 2]].log_softmax(-1)
    # (1 - eps) * NLL of the target + eps * mean NLL over all V words, averaged over non-pad tokens.
    manual = ((1 - eps) * -logp[[0, 1], [4, 9]] + eps * -logp.mean(-1)).mean()
    assert torch.allclose(loss, manual, atol=1e-6)


def test_decoder_learns_to_caption_two_images():
    """End to end: with the image in h0 the decoder can tell two images' captions apart."""
    decoder = make("lstm", "init", num_layers=1).train()
    features = torch.eye(2, D)
    captions = torch.tensor([[1, 4, 5, 6, 2], [1, 7, 8, 9, 2]])  # <start> ... <end>
    opt = torch.optim.Adam(decoder.parameters(), lr=0.05)
    for _ in range(60):
        loss = caption_loss(decoder(features, captions).logits, captions[:, 1:], pad_id=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert torch.equal(decoder.eval()(features, captions).logits.argmax(-1), captions[:, 1:])


def test_dropout_is_active_in_training_only():
    decoder = make("gru", dropout=0.5)
    features, captions = batch()
    assert torch.equal(decoder(features, captions).logits, decoder(features, captions).logits)
    decoder.train()
    assert not torch.equal(decoder(features, captions).logits, decoder(features, captions).logits)
    assert F.mse_loss(decoder.eval()(features, captions).logits, decoder(features, captions).logits) == 0


@pytest.mark.parametrize("which", ["embed_dropout", "feature_dropout", "output_dropout"])
def test_each_dropout_acts_where_it_says(which):
    """Each rate alone changes the training-mode output; a feature dropout of 1 - eps hides the image."""
    features, captions = batch()
    decoder = make("lstm", **{which: 0.5}).train()
    torch.manual_seed(1)
    a = decoder(features, captions).logits
    torch.manual_seed(2)
    assert not torch.equal(a, decoder(features, captions).logits)
    masks = []
    hook = {"embed_dropout": decoder.embed_dropout, "feature_dropout": decoder.feature_dropout,
            "output_dropout": decoder.output_dropout}[which].register_forward_hook(lambda m, i, o: masks.append(o))
    decoder(features, captions).logits
    hook.remove()
    assert masks and any((m == 0).any() for m in masks)  # this dropout module zeroed something


@pytest.mark.parametrize("norm", ["l2", "layernorm"])
@pytest.mark.parametrize("inject", ["init", "pre", "par"])
def test_feature_norm_makes_the_decoder_scale_free_and_decodes_as_it_trains(norm, inject):
    decoder = make("lstm", inject=inject, feature_norm=norm)
    features, captions = batch()
    with torch.no_grad():
        logits = decoder(features, captions).logits
        assert torch.allclose(logits, decoder(features * 37.0, captions).logits, atol=1e-4)  # v and 37 v read alike
        state, stepped = decoder.init_state(features), []
        for t in range(captions.shape[1] - 1):
            out, state, _ = decoder.step(captions[:, t], state, features)
            stepped.append(out)
    assert torch.allclose(torch.stack(stepped, 1), logits, atol=1e-5)
