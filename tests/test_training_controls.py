"""Gradient accumulation and the learning-rate schedules (cosine, constant, step, plateau)."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from captioning.config import DecodeOptions, TrainerOptions, check
from captioning.data.collate import collate_captions
from captioning.engine import Stepper
from captioning.io import InputError
from captioning.models import CaptionDecoder, DecoderConfig, caption_loss
from captioning.optim import build_optimizer, reconfigure, validated, warmup_warning
from captioning.run_config import OptimOptions
from captioning.run_state import TrainState
from captioning.text import Vocabulary

CPU = torch.device("cpu")


def items(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """(feature, caption ids, image id) with captions of different lengths, so batches pad differently."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        caption = torch.cat([torch.tensor([1]), torch.randint(3, 20, (length,), generator=g), torch.tensor([2])])
        out.append((torch.randn(6, generator=g), caption, i))
    return out


def trained(batches, accumulate: int, steps_expected: int) -> tuple[dict, TrainState]:
    torch.manual_seed(0)
    decoder = CaptionDecoder(DecoderConfig(vocab_size=20, feature_dim=6, embed_dim=8, hidden_dim=16,
                                           embed_dropout=0.0, output_dropout=0.0))
    optimizer = torch.optim.SGD(decoder.parameters(), lr=0.5)
    state = TrainState()
    opts = TrainerOptions(accumulate=accumulate, grad_clip=None, precision="fp32", progress=False)
    stats = Stepper(decoder, None, optimizer, None, opts, CPU).epoch(batches, state)
    assert state.step == steps_expected and state.batch == len(batches)
    return {k: v.detach().clone() for k, v in decoder.state_dict().items()}, stats


def test_accumulating_four_batches_is_one_batch_four_times_larger():
    data = items(48)
    small = [collate_captions(data[i:i + 4]) for i in range(0, 48, 4)]     # 12 batches of 4
    large = [collate_captions(data[i:i + 16]) for i in range(0, 48, 16)]   # 3 batches of 16
    accumulated, acc_stats = trained(small, accumulate=4, steps_expected=3)
    big, big_stats = trained(large, accumulate=1, steps_expected=3)
    assert all(torch.allclose(accumulated[k], big[k], atol=1e-6) for k in big)
    assert acc_stats["loss"] == pytest.approx(big_stats["loss"], rel=1e-6)
    plain, _ = trained(small, accumulate=1, steps_expected=12)  # the check can fail: 12 small steps differ
    assert not all(torch.allclose(plain[k], big[k], atol=1e-3) for k in big)


def test_a_shorter_last_window_still_steps():
    data = items(20)
    batches = [collate_captions(data[i:i + 4]) for i in range(0, 20, 4)]  # 5 batches: windows of 4 and 1
    trained(batches, accumulate=4, steps_expected=2)


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("clip_fraction", [0.25, None])
def test_a_step_moves_by_the_mean_gradient_clipped_to_grad_clip_and_reports_its_norm(accumulate, clip_fraction):
    """SGD with lr 1 moves the weights by -g, g the mean gradient over the step's target tokens (computed here by
    hand from the whole step's batch), scaled to norm grad_clip where ||g|| exceeds it; on_step gets ||g||."""
    data = items(8)
    torch.manual_seed(0)
    decoder = CaptionDecoder(DecoderConfig(vocab_size=20, feature_dim=6, embed_dim=8, hidden_dim=16,
                                           embed_dropout=0.0, output_dropout=0.0))
    before = [p.detach().clone() for p in decoder.parameters()]
    whole = collate_captions(data)
    loss = caption_loss(decoder(whole.images, whole.captions).logits, whole.captions[:, 1:], Vocabulary.pad_id)
    g = torch.autograd.grad(loss, list(decoder.parameters()))
    norm = float(torch.sqrt(sum((x.double() ** 2).sum() for x in g)))
    clip = None if clip_fraction is None else clip_fraction * norm
    opts = TrainerOptions(accumulate=accumulate, grad_clip=clip, label_smoothing=0.0, precision="fp32", progress=False)
    steps = []
    size = len(data) // accumulate
    batches = [collate_captions(data[i:i + size]) for i in range(0, len(data), size)]
    Stepper(decoder, None, torch.optim.SGD(decoder.parameters(), lr=1.0), None, opts, CPU).epoch(
        batches, TrainState(), on_step=steps.append)
    assert len(steps) == 1 and steps[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    scale = 1.0 if clip_fraction is None else clip_fraction
    for p, p0, gp in zip(decoder.parameters(), before, g):
        assert torch.allclose(p0 - p.detach(), scale * gp, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("target, fused, expected", [("torch.optim.Adam", None, True), ("torch.optim.AdamW", None, True),
                                                     ("torch.optim.Adam", False, False), ("torch.optim.RMSprop", None, None)])
def test_the_fused_update_is_taken_where_the_optimizer_class_has_one(target, fused, expected):
    """optim.optimizer as the entry point instantiates it: fused=null becomes torch's fused update for Adam and AdamW,
    and is left out for a class without one (RMSprop would refuse the keyword); false stays false."""
    spec = {**OptimOptions().optimizer, "_target_": target, "fused": fused}
    params = [torch.zeros(3, requires_grad=True)]
    optimizer, _ = build_optimizer(OptimOptions(), params, instantiate(spec), total_steps=4, steps_per_epoch=2)
    assert type(optimizer).__name__ == target.rsplit(".", 1)[1]
    assert optimizer.defaults.get("fused") is expected


def test_accumulate_is_checked():
    with pytest.raises(InputError, match="trainer.accumulate must be at least 1, got 0"):
        check(TrainerOptions(accumulate=0))


def schedule(kind: str, **options):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cfg = OptimOptions(**{"scheduler": kind, "warmup_steps": 0, "min_lr_ratio": 0.1, "decay_every": 2,
                          "decay_rate": 0.5, "plateau_patience": 2, **options})
    params = optimizer.param_groups[0]["params"]
    return build_optimizer(cfg, params, lambda params: optimizer, total_steps=16, steps_per_epoch=4)[1]


def lrs(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_step_decay_and_warmup():
    assert lrs(schedule("step"), 16) == pytest.approx([1.0] * 8 + [0.5] * 8)  # 4 steps an epoch, every 2 epochs
    assert lrs(schedule("step", warmup_steps=4), 4) == pytest.approx([0.25, 0.5, 0.75, 1.0])
    cosine = lrs(schedule("cosine"), 17)
    assert cosine[0] == 1.0 and cosine[8] == pytest.approx(0.55) and cosine[16] == pytest.approx(0.1)


def test_a_warmup_that_takes_half_the_run_is_said():
    """40 images x 5 captions at the default batch 128 and warm-up 50: 2 steps an epoch, 6 in 3 epochs."""
    message = warmup_warning(OptimOptions(warmup_steps=50), total_steps=6, steps_per_epoch=2)
    assert "warm-up (optim.warmup_steps=50) takes 6 of this run's 6 optimizer steps (2 an epoch)" in message
    assert "trainer.batch_size" in message
    assert warmup_warning(OptimOptions(warmup_steps=50), total_steps=101, steps_per_epoch=2) is None
    assert warmup_warning(OptimOptions(warmup_steps=0), total_steps=6, steps_per_epoch=2) is None


def test_plateau_decays_after_patience_epochs_without_progress_and_resumes():
    scheduler = schedule("plateau")
    plan = schedule("plateau")
    factors = []
    for stale in [0, 0, 1, 2, 0, 1, 2, 3]:  # epochs since the best: decays at 2, and at 2 again after a new best
        validated(scheduler, stale)
        factors.append(scheduler.optimizer.param_groups[0]["lr"])  # in force from the next step on
        scheduler.optimizer.step()
        scheduler.step()
        assert scheduler.get_last_lr()[0] == pytest.approx(factors[-1])
    assert factors == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])
    plan.load_state_dict(scheduler.state_dict())  # what a checkpoint holds: the count goes on after a resume
    plan.optimizer.step()
    plan.step()
    assert plan.get_last_lr()[0] == pytest.approx(0.25) and plan.lr_lambdas[0].decays == 2


def test_a_resumed_schedule_takes_its_settings_from_the_new_run():
    old, new = schedule("cosine"), schedule("cosine")  # total_steps 16
    lrs(old, 4)
    new.load_state_dict(old.state_dict())
    assert new.lr_lambdas[0].total_steps == 16
    reconfigure(new, OptimOptions(warmup_steps=0, min_lr_ratio=0.1, decay_every=2, decay_rate=0.5,
                                  plateau_patience=2), total_steps=40, steps_per_epoch=4)
    assert new.lr_lambdas[0].total_steps == 40 and new.last_epoch == 4  # the longer run, from where it was


def test_schedule_options_are_checked():
    with pytest.raises(InputError, match="optim.plateau_patience must be at least 1, got 0"):
        schedule("plateau", plateau_patience=0)
    # the optimizer comes built (make_optimizer): options without Hydra's optimizer spec still schedule it
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    assert build_optimizer(OptimOptions(optimizer={}), optimizer.param_groups[0]["params"], lambda params: optimizer,
                           total_steps=4, steps_per_epoch=2)[0] is optimizer


def test_scheduled_sampling_probability_zero_is_teacher_forcing_and_one_feeds_own_samples():
    from captioning.decoding import SpecialIds, sample

    torch.manual_seed(0)
    for inject in ("init", "par"):
        decoder = CaptionDecoder(DecoderConfig(vocab_size=20, feature_dim=6, embed_dim=8, hidden_dim=16,
                                               inject=inject)).eval()
        batch = collate_captions(items(6))
        features, captions = batch.images, batch.captions
        with torch.no_grad():
            forced = decoder(features, captions).logits
            stepped = decoder(features, captions, sampling_prob=1e-30).logits  # the step-by-step path, nothing replaced
            fed = []
            hook = decoder.embed.register_forward_hook(lambda m, inputs, out: fed.append(inputs[0][:, 0]))
            torch.manual_seed(5)
            own = decoder(features, captions, sampling_prob=1.0).logits
            hook.remove()
            torch.manual_seed(5)
            free = sample(decoder, features, DecodeOptions(max_len=captions.shape[1] - 1), SpecialIds(1, 2)).ids
        assert torch.allclose(stepped, forced, atol=1e-6)
        inputs = torch.stack(fed[1:], 1)  # the words fed after <start>
        for row in range(len(free)):  # up to each free-running caption's <end>, its words are the ones fed
            n = min(inputs.shape[1], int((free[row] != 0).sum()))
            assert torch.equal(inputs[row, :n], free[row, :n])
        assert not torch.equal(inputs, captions[:, 1:-1])  # not the references
        with torch.no_grad():  # the logits given those inputs are the model's, as when it decodes step by step
            again = decoder(features, torch.cat([captions[:, :1], inputs, captions[:, -1:]], 1)).logits
        assert torch.allclose(own, again, atol=1e-6)


def test_scheduled_sampling_schedule_and_checks():
    from captioning.config import ScheduledSamplingOptions

    ss = ScheduledSamplingOptions(start_epoch=3, increase_every=2, increase_prob=0.1, max_prob=0.25)
    assert [ss.prob(e) for e in range(1, 10)] == pytest.approx([0, 0, 0.1, 0.1, 0.2, 0.2, 0.25, 0.25, 0.25])
    assert ScheduledSamplingOptions().prob(100) == 0.0  # off by default
    assert TrainerOptions(scheduled_sampling={"start_epoch": 2}).scheduled_sampling.prob(2) == 0.05
    with pytest.raises(InputError, match="trainer.scheduled_sampling.max_prob must be in"):
        check(TrainerOptions(scheduled_sampling={"max_prob": 2.0}))


def test_scheduled_sampling_with_attention():
    from captioning.models import build_decoder

    torch.manual_seed(0)
    decoder = build_decoder(DecoderConfig(vocab_size=20, feature_dim=6, embed_dim=8, hidden_dim=16, inject="attention",
                                          attention_dim=8)).eval()
    batch = collate_captions(items(4))
    grid = torch.randn(4, 5, 6)
    with torch.no_grad():
        forced, terms = decoder(grid, batch.captions)
        stepped, stepped_terms = decoder(grid, batch.captions, sampling_prob=1e-30)
        assert torch.allclose(stepped, forced, atol=1e-6)
        assert torch.allclose(stepped_terms["attention_penalty"], terms["attention_penalty"])
        assert not torch.allclose(decoder(grid, batch.captions, sampling_prob=1.0).logits, forced, atol=1e-3)


def test_attention_penalty_is_logged_beside_the_loss():
    from captioning.data.collate import CaptionBatch
    from captioning.models import build_decoder

    torch.manual_seed(0)
    decoder = build_decoder(DecoderConfig(vocab_size=20, feature_dim=6, embed_dim=8, hidden_dim=16, inject="attention",
                                          attention_dim=8))
    batch = collate_captions(items(4))
    batch = CaptionBatch(torch.randn(4, 5, 6), batch.captions, batch.image_ids)  # a 5-cell grid
    state = TrainState()
    Stepper(decoder, None, torch.optim.SGD(decoder.parameters(), lr=0.1), None,
            TrainerOptions(precision="fp32", progress=False), CPU).epoch([batch], state)
    penalty = state.extras["attention_penalty"] / state.tokens
    assert 0 < penalty < state.loss_sum / state.tokens  # part of the loss, logged as train_attention_penalty
