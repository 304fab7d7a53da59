"""Self-critical sequence training: the estimator is REINFORCE's (sign and size, against finite differences of
the exact expected reward), baselines behave, it raises the reward on a task with a known answer, and runs
through captioning-train from a checkpoint, resumably."""
from __future__ import annotations

import math
import types

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from captioning.baselines import FallbackIndex
from captioning.checkpoint import load_checkpoint
from captioning.cli._conf import CONF_DIR
from captioning.config import DecodeOptions, SCSTOptions
from captioning.data.coco import load_coco_captions
from captioning.data.collate import CaptionBatch
from captioning.data.shapes import make_shapes_dataset
from captioning.data.splits import stage_images
from captioning.decoding import keep_top_k
from captioning.io import InputError
from captioning.models import CaptionDecoder, DecoderConfig, build_decoder
from captioning.models.decoder import caption_loss
from captioning.scst import CiderReward, SCSTObjective
from captioning.text import Vocabulary
from captioning.training import train

VOCAB = Vocabulary(["a", "b"])  # <pad> <start> <end> <unk> a b: a 2-word vocabulary
MAX_LEN = 3


def toy_decoder(seed: int = 0) -> CaptionDecoder:
    torch.manual_seed(seed)
    return CaptionDecoder(DecoderConfig(vocab_size=len(VOCAB), feature_dim=4, embed_dim=4, hidden_dim=6,
                                        embed_dropout=0.0, output_dropout=0.0))


def count_a(captions: list[str], image_ids) -> torch.Tensor:
    """A reward with a known best caption: the number of "a"s."""
    return torch.tensor([c.split().count("a") for c in captions], dtype=torch.float32)


def every_caption() -> torch.Tensor:
    """Every token sequence the sampler can produce in MAX_LEN steps (any token, <pad> too; it stops after
    <end>), padded with <pad> after <end>."""
    done, frontier = [], [[]]
    for _ in range(MAX_LEN):
        frontier = [seq + [t] for seq in frontier for t in range(len(VOCAB))]
        done += [s for s in frontier if s[-1] == VOCAB.eos_id]
        frontier = [s for s in frontier if s[-1] != VOCAB.eos_id]
    done += frontier
    return torch.tensor([s + [VOCAB.pad_id] * (MAX_LEN - len(s)) for s in done])


def expected_reward(decoder: CaptionDecoder, feature: torch.Tensor, captions: torch.Tensor,
                    top_k: int | None = None) -> torch.Tensor:
    """J = sum over all captions of p(caption) r(caption), exactly: p(w_t) = softmax over the top_k words at each
    step, as the sampler draws, written out here (sequence_logprobs scores drawn captions, not every caption)."""
    inputs = torch.cat([captions.new_full((len(captions), 1), VOCAB.bos_id), captions], 1)
    logp = keep_top_k(decoder(feature.expand(len(captions), -1), inputs).logits.float(), top_k).log_softmax(-1)
    is_end = (captions == VOCAB.eos_id).long()
    counted = (is_end.cumsum(1) - is_end) == 0  # up to and including the first <end>
    caption_logp = torch.where(counted, logp.gather(2, captions[..., None])[..., 0], 0.0).sum(1)
    texts = [" ".join(VOCAB.decode(row)) for row in captions.tolist()]
    return (caption_logp.exp() * count_a(texts, None)).sum(), caption_logp.exp().sum()


# top_k: the gradient of the truncated distribution drawn from (seed 20: "a" is among the 2 likeliest words); the
# full softmax's gradient of the truncated samples points the wrong way there with the greedy baseline (+0.56).
@pytest.mark.parametrize("top_k, seed, baseline", [(None, 0, "mean"), (2, 20, "mean"), (2, 20, "greedy")])
def test_the_loss_is_the_reinforce_estimator_sign_and_size(top_k, seed, baseline):
    decoder, feature = toy_decoder(seed), torch.randn(1, 4)
    captions = every_caption()
    with torch.no_grad():
        j, total = expected_reward(decoder, feature, captions, top_k)
    assert total.item() == pytest.approx(1.0, abs=1e-5)  # the enumeration is the whole distribution
    param = decoder.out.bias
    eps, index = 1e-3, VOCAB.stoi["a"]
    with torch.no_grad():  # central finite difference of J in one parameter
        param[index] += eps
        j_plus, _ = expected_reward(decoder, feature, captions, top_k)
        param[index] -= 2 * eps
        j_minus, _ = expected_reward(decoder, feature, captions, top_k)
        param[index] += eps
    dj = (j_plus - j_minus).item() / (2 * eps)

    # The SCST loss on many samples (either baseline: unbiased) estimates -dJ/dtheta.
    objective = SCSTObjective(SCSTOptions(samples=20000, baseline=baseline, max_len=MAX_LEN, top_k=top_k), VOCAB, count_a,
                              torch.device("cpu"))
    batch = CaptionBatch(feature, torch.zeros(1, 2, dtype=torch.long), torch.tensor([0]))
    torch.manual_seed(1)
    loss, n, extras = objective(decoder, None, batch)
    decoder.zero_grad()
    loss.backward()
    estimate = param.grad[index].item()
    assert n == 20000 and dj > 0.05  # more "a" is possible, so raising p("a") raises J
    assert estimate == pytest.approx(-dj, rel=0.1)  # descending the loss ascends the expected reward
    assert extras["reward"] == pytest.approx(j.item(), rel=0.05) and extras["entropy"] > 0


def test_mean_baseline_gives_no_gradient_when_every_sample_is_rewarded_alike():
    decoder = toy_decoder()
    objective = SCSTObjective(SCSTOptions(samples=8, baseline="mean", max_len=MAX_LEN), VOCAB,
                              lambda captions, ids: torch.full((len(captions),), 3.0), torch.device("cpu"))
    batch = CaptionBatch(torch.randn(4, 4), torch.zeros(4, 2, dtype=torch.long), torch.arange(4))
    loss, _, extras = objective(decoder, None, batch)
    loss.backward()
    assert loss.item() == 0.0 and extras["reward"] == extras["baseline"] == 3.0
    assert extras["advantage"] == 0.0 and extras["positive"] == 0.0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in decoder.parameters())


def test_samples_worse_than_the_greedy_caption_all_get_a_negative_advantage_and_the_log_says_so():
    """The stall of the greedy baseline where sampling is far worse than argmax: no sample is reinforced."""
    calls = []

    def reward(captions, ids):  # the samples first, then the greedy captions
        calls.append(len(captions))
        return torch.full((len(captions),), 1.0 if len(calls) == 1 else 5.0)

    objective = SCSTObjective(SCSTOptions(samples=4, baseline="greedy", max_len=MAX_LEN), VOCAB, reward,
                              torch.device("cpu"))
    batch = CaptionBatch(torch.randn(3, 4), torch.zeros(3, 2, dtype=torch.long), torch.arange(3))
    _, n, extras = objective(toy_decoder(), None, batch)
    assert calls == [12, 3] and n == 12
    assert (extras["reward"], extras["baseline"], extras["advantage"], extras["positive"]) == (1.0, 5.0, -4.0, 0.0)


def test_scst_learns_the_best_caption_of_each_image():
    """Two images whose references are "a a" and "b b" (CIDEr-D reward): SCST from a random decoder ends
    with each image's greedy caption its reference, and a higher mean reward."""
    references = {0: ["a a", "a a ."], 1: ["b b", "b b ."]}
    reward = CiderReward(references)
    decoder, features = toy_decoder(seed=3), torch.randn(2, 4)
    objective = SCSTObjective(SCSTOptions(samples=8, baseline="greedy", max_len=MAX_LEN), VOCAB, reward,
                              torch.device("cpu"))
    batch = CaptionBatch(features, torch.zeros(2, 2, dtype=torch.long), torch.tensor([0, 1]))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=0.05)
    torch.manual_seed(0)
    rewards = []
    for _ in range(150):
        loss, _, extras = objective(decoder, None, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(extras["reward"])
    from captioning.decoding import greedy
    with torch.no_grad():
        best = greedy(decoder.eval(), features, DecodeOptions(max_len=MAX_LEN), VOCAB).ids
    assert [" ".join(VOCAB.decode(r)) for r in best.tolist()] == ["a a", "b b"]
    assert sum(rewards[-20:]) / 20 > sum(rewards[:20]) / 20 + 1.0


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("inject", ["init", "pre", "par"])
@pytest.mark.parametrize("baseline, top_k, temperature", [("greedy", None, 1.0), ("mean", 2, 0.7)])
def test_every_cell_injection_and_sampling_option(cell, inject, baseline, top_k, temperature):
    torch.manual_seed(0)
    decoder = CaptionDecoder(DecoderConfig(vocab_size=len(VOCAB), feature_dim=4, embed_dim=4, hidden_dim=6,
                                           cell=cell, inject=inject, impl="explicit" if cell == "gru" else "fused"))
    objective = SCSTObjective(SCSTOptions(samples=3, baseline=baseline, top_k=top_k, temperature=temperature,
                                          max_len=MAX_LEN), VOCAB, count_a, torch.device("cpu"))
    batch = CaptionBatch(torch.randn(5, 4), torch.zeros(5, 2, dtype=torch.long), torch.arange(5))
    loss, n, extras = objective(decoder, None, batch)
    loss.backward()
    assert n == 15 and math.isfinite(loss.item()) and extras["baseline"] >= 0
    assert decoder.out.weight.grad is not None  # the loss reaches the weights (zero where all samples tie)
    assert all(torch.isfinite(p.grad).all() for p in decoder.parameters() if p.grad is not None)


@pytest.mark.parametrize("inject", ["init", "attention"])
def test_the_mixed_objective_adds_the_references_cross_entropy(inject):
    """scst.xe_weight: the samples and the references go through one teacher-forced pass, padded to one width;
    the loss (and its gradient) is SCST's plus xe_weight times the references' cross-entropy computed apart."""
    torch.manual_seed(0)
    decoder = build_decoder(DecoderConfig(vocab_size=len(VOCAB), feature_dim=4, embed_dim=4, hidden_dim=6, inject=inject,
                                          attention_dim=5, embed_dropout=0.0, output_dropout=0.0))
    features = torch.randn(3, 2, 4) if inject == "attention" else torch.randn(3, 4)  # a 2-region grid, or pooled
    references = {7: [[1, 4, 4, 4, 4, 5, 2], [1, 5, 2]], 8: [[1, 4, 2]], 9: [[1, 5, 5, 2], [1, 2], [1, 4, 5, 4, 2]]}
    batch = CaptionBatch(features, torch.zeros(3, 2, dtype=torch.long), torch.tensor([7, 8, 9]))
    refs = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for i in (7, 8, 9) for r in references[i]],
                                           batch_first=True, padding_value=VOCAB.pad_id)
    xe = caption_loss(decoder(features[[0, 0, 1, 2, 2, 2]], refs).logits, refs[:, 1:], VOCAB.pad_id, 0.1)
    losses, grads = [], []
    for weight in (0.0, 0.5):
        objective = SCSTObjective(SCSTOptions(samples=4, max_len=MAX_LEN, xe_weight=weight), VOCAB, count_a,
                                  torch.device("cpu"), references, label_smoothing=0.1)
        torch.manual_seed(1)  # the same samples
        decoder.zero_grad()
        loss, n, extras = objective(decoder, None, batch)
        loss.backward()
        losses.append(loss.item())
        grads.append(decoder.out.weight.grad.clone())
    assert n == 12 and extras["xe"] == pytest.approx(xe.item(), rel=1e-6)
    assert losses[1] == pytest.approx(losses[0] + 0.5 * xe.item(), rel=1e-6)
    decoder.zero_grad()
    (0.5 * xe).backward()
    assert torch.allclose(grads[1], grads[0] + decoder.out.weight.grad, atol=1e-6)
    with pytest.raises(ValueError, match="xe_weight needs the training images' encoded references"):
        SCSTObjective(SCSTOptions(xe_weight=0.5), VOCAB, count_a, torch.device("cpu"))


def test_cider_reward_is_cider_d_with_training_document_frequencies():
    references = {1: ["a red circle", "one red circle"], 2: ["a blue square"], 3: ["two green circles"]}
    reward = CiderReward(references)
    rewards = reward(["a red circle", "a blue square", "zebra"], [1, 2, 1])
    assert rewards[0] > rewards[2] == 0 and rewards[1] > 0
    assert reward.cider.log_n == pytest.approx(math.log(3))


@pytest.fixture(scope="module")
def xe_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("scst")
    make_shapes_dataset(root / "shapes", n_train=16, n_val=6, n_test=6, seed=0, image_size=32, demo_images=0)
    run(root, "xe", "trainer.max_epochs=1")
    return root


def run(root, name: str, *overrides: str) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"dataset.root={root / 'shapes'}", f"cache_dir={root / 'cache'}",
                                          "encoder=small_cnn", "encoder.image_size=32", "encoder.num_workers=0",
                                          "decoder.hidden_dim=16", "decoder.embed_dim=8", "trainer.batch_size=4",
                                          "trainer.tensorboard=false", "trainer.progress=false", *overrides])
    return train(OmegaConf.to_container(cfg, resolve=True), root / name, instantiate(cfg.optim.optimizer))


def test_scst_stage_from_a_checkpoint_logs_rewards_and_resumes_exactly(xe_checkpoint):
    root, xe = xe_checkpoint, f"trainer.init_from={xe_checkpoint / 'xe' / 'checkpoints' / 'best.pt'}"
    full = run(root, "full", "+experiment=scst", xe, "trainer.max_epochs=2", "optim.optimizer.lr=0.01")
    start, *epochs = full["epochs"]  # epoch 0: the checkpoint it started from, scored before any step
    assert start["epoch"] == start["step"] == 0 and "val_cider" in start and "train_reward" not in start
    assert all({"train_reward", "train_baseline", "train_advantage", "train_positive", "train_entropy", "val_cider"} <= set(e)
               for e in epochs)
    assert [e["step"] for e in epochs] == [4, 8]  # 16 images / 4: one step per 4 images, not per caption
    header = (root / "full" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_reward", "train_baseline", "train_entropy", "val_cider"} <= set(header)
    assert (root / "full" / "curves.png").stat().st_size > 10_000  # with the reward and baseline curves
    run(root, "run", "+experiment=scst", xe, "trainer.max_epochs=1", "optim.optimizer.lr=0.01")
    resumed = run(root, "run", "+experiment=scst", xe, "trainer.max_epochs=2", "optim.optimizer.lr=0.01",
                  "trainer.resume=auto")
    assert [e.get("train_reward") for e in resumed["epochs"]] == [e.get("train_reward") for e in full["epochs"]]
    a, b = (load_checkpoint(root / d / "checkpoints" / "last.pt")["model"] for d in ("full", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides, message", [
    (["encoder.trainable=true"], r"scst.enabled trains the decoder alone: drop encoder.trainable"),
    (["encoder.finetune_from_epoch=2"], r"scst.enabled trains the decoder alone: .*trainer.init_from=RUN"),
])
def test_scst_refuses_a_cnn_to_train(xe_checkpoint, overrides, message):
    """SCST's captions are sampled from the features without gradient: a CNN to train would silently stay as it is."""
    xe = f"trainer.init_from={xe_checkpoint / 'xe' / 'checkpoints' / 'best.pt'}"
    with pytest.raises(InputError, match=message):
        run(xe_checkpoint, "refused", "+experiment=scst", xe, *overrides)
    assert not (xe_checkpoint / "refused").exists()


def test_scst_resume_auto_with_nothing_to_resume_and_no_init_is_refused(xe_checkpoint, tmp_path):
    with pytest.raises(InputError, match=r"SCST starts from a trained captioner.*trainer.resume=auto found no "
                                         r"checkpoint in"):
        run(xe_checkpoint, "empty", "+experiment=scst", "trainer.resume=auto")
    assert not (xe_checkpoint / "empty" / "checkpoints").exists()


def test_a_run_is_not_resumed_under_the_other_objective(xe_checkpoint):
    """Resuming cross-entropy's last.pt with SCST counted its steps against SCST's and trained nothing."""
    last = xe_checkpoint / "xe" / "checkpoints" / "last.pt"
    with pytest.raises(InputError, match=rf"cannot resume {last} with scst.enabled=True: its run trained with "
                                         rf"cross-entropy; start a new stage from its weights with "
                                         rf"trainer.init_from={last}"):
        run(xe_checkpoint, "xe", "+experiment=scst", "trainer.max_epochs=3", f"trainer.resume={last}")


def test_stage_images_splits_the_training_images_between_the_stages_whatever_the_seed():
    ids = list(range(100, 140))
    train = types.SimpleNamespace(image_ids=ids[::-1])  # the order of the file does not matter
    held, rest = stage_images(train, 0.25, scst=True), stage_images(train, 0.25, scst=False)
    assert len(held) == 10 and held | rest == set(ids) and not held & rest
    assert stage_images(types.SimpleNamespace(image_ids=ids), 0.25, scst=True) == held
    assert stage_images(train, 0.0, scst=True) is None and stage_images(train, 0.0, scst=False) is None


def test_scst_holdout_trains_each_stage_on_its_images_and_retrieval_on_all(xe_checkpoint):
    """Cross-entropy trains on the images SCST does not get; SCST on the held-out ones; the retrieval index (k=1
    and the fallback) and the reward's statistics keep every training image; a stage with another holdout is
    refused before anything trains."""
    root = xe_checkpoint
    train = load_coco_captions(root / "shapes" / "captions_train.json", root / "shapes" / "images" / "train",
                               check_images=False)
    kept = stage_images(train, 0.25, scst=False)
    steps = math.ceil(sum(len(train.captions[i]) for i in kept) / 4)  # batch 4
    xe = run(root, "xe_held", "scst.holdout=0.25", "trainer.max_epochs=1")
    assert xe["epochs"][-1]["step"] == steps
    cnn = run(root, "xe_held_cnn", "scst.holdout=0.25", "trainer.max_epochs=1", "encoder.trainable=true")
    assert cnn["epochs"][-1]["step"] == steps  # images through a CNN that trains: the same share
    init = f"trainer.init_from={root / 'xe_held' / 'checkpoints' / 'best.pt'}"
    scst = run(root, "scst_held", "+experiment=scst", init, "scst.holdout=0.25", "trainer.max_epochs=2")
    assert [e["step"] for e in scst["epochs"]] == [0, 1, 2]  # 4 held-out images of 16: one step of 4 an epoch
    run(root, "scst_held_resumed", "+experiment=scst", init, "scst.holdout=0.25", "trainer.max_epochs=1")
    resumed = run(root, "scst_held_resumed", "+experiment=scst", init, "scst.holdout=0.25", "trainer.max_epochs=2",
                  "trainer.resume=auto")  # the same held-out images again: the uninterrupted run's weights
    assert [e.get("train_reward") for e in resumed["epochs"]] == [e.get("train_reward") for e in scst["epochs"]]
    a, b = (load_checkpoint(root / d / "checkpoints" / "last.pt")["model"]
            for d in ("scst_held", "scst_held_resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    index = FallbackIndex.load(root / "scst_held" / "retrieval.pt")
    assert len(index.features) == len(train) == 16
    with pytest.raises(InputError, match=r"scst.holdout=0.0, but .*xe_held.*best.pt was trained with "
                                         r"scst.holdout=0.25 .*: run with scst.holdout=0.25$"):
        run(root, "scst_other", "+experiment=scst", init)
    assert not (root / "scst_other" / "checkpoints").exists()


@pytest.mark.parametrize("holdout, message", [
    ("-0.25", r"scst.holdout must be at least 0 and below 1, got -0.25"),
    ("1", r"scst.holdout must be at least 0 and below 1, got 1"),
    ("0.01", r"scst.holdout=0.01 sets aside 0 of the 16 training images of .*captions_train.json: choose a share "
             r"that leaves images to both stages"),
    ("0.99", r"scst.holdout=0.99 sets aside 16 of the 16 training images"),
])
def test_a_holdout_that_leaves_a_stage_no_image_is_refused_in_either_stage(xe_checkpoint, holdout, message):
    """The cross-entropy stage reads the holdout too (scst disabled): a share of no image, or of every image, is
    refused before any feature is made, not found out as a run that trained nothing."""
    with pytest.raises(InputError, match=message):
        run(xe_checkpoint, "bad_holdout", f"scst.holdout={holdout}")
    assert not (xe_checkpoint / "bad_holdout" / "checkpoints").exists()
