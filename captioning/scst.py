"""Self-critical sequence training (Rennie et al. 2017): optimise the caption metric itself.

Cross-entropy training teaches the next word given the reference prefix; the model is then judged on
whole captions it wrote itself. SCST closes that gap with REINFORCE. For each image v, draw K captions
w^1..w^K from the model, score each with the reward r(w) = CIDEr-D(w, references of v) (document
frequencies from the training references), and descend

    L = -1/(B K) sum_{v, k} (r(w^k) - b) * sum_t log p(w^k_t | w^k_<t, v)

whose expected gradient is -grad E[r] for any b that does not depend on the sample drawn. The baseline
b is the mean reward of the image's other K - 1 samples (the default: Luo 2020, "A better variant of
self-critical sequence training"), or the reward of the greedy caption (Rennie et al.'s "self-critical":
a sample is reinforced only if it beats what the model would say at test time). Both are unbiased; they
differ in what a step does where the samples are far worse than the greedy caption, as after
cross-entropy training on references that disagree (the icons set: a name, or a category with tags).
There every greedy advantage r - b is negative: each step only pushes down what was sampled, and the
mass goes anywhere, not to better captions. The leave-one-out advantages centre on zero, so the better
half of each image's samples is pushed up.

The samples are drawn without dropout, and their log-probabilities come from one teacher-forced pass over
the sampled captions, also without dropout: the policy that drew them is the one being differentiated.

The mixed objective (Paulus et al. 2018, "A deep reinforced model for abstractive summarization") adds the
cross-entropy of the image's references, in the same pass:

    L_mixed = L_SCST + lambda * L_XE,    L_XE = -1/N sum_{references, t} log p(w_t | w_<t, v)

(`scst.xe_weight` = lambda; label-smoothed as trainer.label_smoothing says). Where cross-entropy has already
fitted the training images, the reward keeps rising on them while the captions of new images get worse; the
cross-entropy term holds the policy near the distribution over every reference that cross-entropy taught.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from captioning.config import DecodeOptions, SCSTOptions
from captioning.data.collate import CaptionBatch
from captioning.decoding import greedy, keep_top_k, sample
from captioning.metrics.cider import CiderD
from captioning.models.decoder import caption_loss
from captioning.text import Vocabulary, joined_tokens

class CiderReward:
    """CIDEr-D of tokenized captions against each image's references, with document frequencies of a fixed
    corpus (the training references), the references' n-gram vectors computed once."""

    def __init__(self, references: Mapping[int, Sequence[str]]):
        tokenized = {i: [joined_tokens(r) for r in refs] for i, refs in references.items()}
        self.cider = CiderD(list(tokenized.values()))
        self.vectors = {i: [self.cider.vector(r) for r in refs] for i, refs in tokenized.items()}

    def __call__(self, captions: Sequence[str], image_ids: Sequence[int]) -> Tensor:
        """(N,) rewards of N tokenized captions, each against the references of its image."""
        return torch.tensor([self.cider.image_score(c, self.vectors[i]) for c, i in zip(captions, image_ids)],
                            dtype=torch.float32)


def sequence_logprobs(logits: Tensor, ids: Tensor, eos_id: int, temperature: float = 1.0, top_k: int | None = None
                      ) -> tuple[Tensor, Tensor]:
    """sum_t log p(w_t | w_<t, v) of each sampled caption (N,), with gradient, and the mean entropy of the
    sampling distribution over its tokens (N,), from the logits (N, L, V) of a teacher-forced pass over
    <start> + ids (N, L).

    p is the distribution the words were drawn from: softmax(logits / temperature) over the top_k words
    (REINFORCE's gradient is that of the sampling policy's log-probability, not of the full softmax's)."""
    logits = logits.float() / temperature
    if top_k is not None:  # the drawn word stays in even if this pass's rounding puts it just outside the top k
        drawn = torch.zeros_like(logits, dtype=torch.bool).scatter_(2, ids[..., None], True)
        logits = torch.where(drawn, logits, keep_top_k(logits, top_k))
    logp = logits.log_softmax(-1)
    # Every drawn token counts up to and including the first <end> (the sampler may draw any token, <pad>
    # included: position, not token, says where a caption ends).
    is_end = (ids == eos_id).long()
    mask = (is_end.cumsum(1) - is_end) == 0
    token_logp = torch.where(mask, logp.gather(2, ids[..., None])[..., 0], 0.0)  # after <end>: maybe -inf
    entropy = torch.where(mask, -torch.special.xlogy(logp.exp(), logp.exp()).sum(-1), 0.0)  # 0 log 0 = 0
    return token_logp.sum(1), entropy.sum(1) / mask.sum(1).clamp(min=1)


class SCSTObjective:
    """SCST as a training objective (`captioning.objectives`), over one-item-per-image batches of (cached)
    features."""

    per_image = True  # an image's references are its samples' reward

    def __init__(self, opts: SCSTOptions, vocab: Vocabulary, reward: CiderReward, device: torch.device,
                 references: Mapping[int, Sequence[Sequence[int]]] | None = None, label_smoothing: float = 0.0):
        """`references`: each training image's encoded references (<start> ... <end>), for `opts.xe_weight`."""
        self.opts, self.vocab, self.reward, self.device = opts, vocab, reward, device
        self.references, self.label_smoothing = references or {}, label_smoothing
        if opts.xe_weight and not references:
            raise ValueError("scst.xe_weight needs the training images' encoded references")
        self.sampling = DecodeOptions(method="sample", max_len=opts.max_len, temperature=opts.temperature,
                                      top_k=opts.top_k)

    def start_epoch(self, epoch: int) -> None:
        pass

    def summary(self, row: dict) -> str:
        return (f"  reward {row['train_reward']:.3f} (baseline {row['train_baseline']:.3f}, "
                f"{100 * row['train_positive']:.0f}% of samples above it)" +
                (f"  references' cross-entropy {row['train_xe']:.3f}" if "train_xe" in row else ""))

    def _text(self, ids: Tensor) -> list[str]:
        return [" ".join(self.vocab.decode(row)) for row in ids.tolist()]

    def _reference_batch(self, image_ids: list[int]) -> tuple[Tensor, Tensor]:
        """Every reference of the batch's images, padded (R, T), and the batch row of each one's image (R,)."""
        refs = [(row, torch.tensor(r)) for row, i in enumerate(image_ids) for r in self.references[i]]
        padded = nn.utils.rnn.pad_sequence([r for _, r in refs], batch_first=True, padding_value=self.vocab.pad_id)
        return padded.to(self.device), torch.tensor([row for row, _ in refs], device=self.device)

    def __call__(self, decoder: nn.Module, encoder: nn.Module | None, batch: CaptionBatch
                 ) -> tuple[Tensor, int, dict[str, float]]:
        o, v, K = self.opts, self.vocab, self.opts.samples
        policy = getattr(decoder, "module", decoder)  # sample with the bare model; DDP wraps the graded pass
        # Cached features: SCST trains the decoder alone (training.check_config refuses a CNN to train).
        features = batch.images.to(self.device, non_blocking=True)  # (B, D)
        decoder.eval()  # no dropout: see the module docstring
        with torch.no_grad():
            repeated = features.repeat_interleave(K, 0)  # (B*K, D)
            drawn = sample(policy, repeated, self.sampling, v).ids
        image_ids = batch.image_ids.repeat_interleave(K).tolist()
        rewards = self.reward(self._text(drawn), image_ids).to(self.device).view(-1, K)  # (B, K)
        if o.baseline == "greedy":
            with torch.no_grad():
                best = greedy(policy, features, DecodeOptions(method="greedy", max_len=o.max_len), v,
                              with_scores=False).ids
            baseline = self.reward(self._text(best), batch.image_ids.tolist()).to(self.device)[:, None]  # (B, 1)
        else:  # the mean of the other samples' rewards
            baseline = (rewards.sum(1, keepdim=True) - rewards) / (K - 1)  # (B, K)
        sampled = torch.cat([drawn.new_full((len(drawn), 1), v.bos_id), drawn], 1)  # (B*K, L + 1)
        extras = {}
        if o.xe_weight:  # the samples and the references in one teacher-forced pass (one DDP forward per step)
            refs, rows = self._reference_batch(batch.image_ids.tolist())  # (R, T), (R,)
            width = max(sampled.shape[1], refs.shape[1])
            logits = decoder(torch.cat([repeated, features[rows]]),
                             torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=v.pad_id)
                                        for c in (sampled, refs)])).logits  # (B*K + R, width - 1, V)
            xe = caption_loss(logits[len(sampled):, :refs.shape[1] - 1], refs[:, 1:], v.pad_id, self.label_smoothing)
            logits, extras["xe"] = logits[:len(sampled), :drawn.shape[1]], xe.item()
        else:
            logits, xe = decoder(repeated, sampled).logits, 0.0  # (B*K, L, V)
        logp, entropy = sequence_logprobs(logits, drawn, v.eos_id, o.temperature, o.top_k)
        advantage = (rewards - baseline).view(-1)  # (B*K,)
        loss = -(advantage * logp).mean() + o.xe_weight * xe
        # The advantage's mean and the share of samples it reinforces tell a stalled run apart: with the greedy
        # baseline and samples far worse than the greedy caption, every advantage is negative and the policy only
        # learns what not to say (the mean baseline's advantages centre on 0 by construction).
        return loss, len(logp), {"reward": rewards.mean().item(), "baseline": baseline.mean().item(),
                                 "advantage": advantage.mean().item(),
                                 "positive": (advantage > 0).float().mean().item(), "entropy": entropy.mean().item(),
                                 **extras}
