"""The attention decoder: its weights are distributions, teacher forcing equals step-by-step decoding, batched
beam search equals one image at a time (maps included), the attention block passes gradcheck; the grid cache
is float16 on disk and read row by row, so an epoch's resident memory does not grow with it."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from captioning.data.collate import CaptionBatch
from captioning.config import DecodeOptions
from captioning.decoding import SpecialIds, beam_search, greedy
from captioning.objectives import batch_loss
from captioning.models import AttentionDecoder, DecoderConfig, build_decoder
from captioning.models.attention import SoftAttention

V, D, L, E, H = 12, 10, 9, 6, 8
IDS = dict(bos_id=1, eos_id=2, pad_id=0)


def make(cell: str = "lstm", gate: bool = True, seed: int = 0) -> AttentionDecoder:
    torch.manual_seed(seed)
    decoder = build_decoder(DecoderConfig(vocab_size=V, feature_dim=D, embed_dim=E, hidden_dim=H, cell=cell,
                                          inject="attention", attention_dim=7, attention_gate=gate,
                                          embed_dropout=0.0, output_dropout=0.0))
    assert isinstance(decoder, AttentionDecoder)
    return decoder.eval()


def grid(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, L, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cell, gate", [("lstm", True), ("gru", False), ("rnn", True)])
def test_teacher_forcing_equals_stepping_and_weights_are_distributions(cell, gate):
    decoder, features = make(cell, gate), grid()
    captions = torch.randint(3, V, (4, 7))
    with torch.no_grad():
        logits = decoder(features, captions).logits  # (B, T-1, V)
        state, stepped = decoder.init_state(features), []
        for t in range(captions.shape[1] - 1):
            out, state, alpha = decoder.step(captions[:, t], state, features)
            stepped.append(out)
            assert alpha.shape == (4, L)
            assert torch.allclose(alpha.sum(-1), torch.ones(4), atol=1e-6)
            assert (alpha >= 0).all()
    assert torch.allclose(torch.stack(stepped, 1), logits, atol=1e-5)


def test_doubly_stochastic_penalty_counts_only_the_caption():
    decoder = make()
    decoder.config.alpha_c = 2.0
    features, captions = grid(2), torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
    penalty = decoder(features, captions).losses["attention_penalty"]
    alpha = torch.stack(alphas_of(decoder, features, captions), 1)  # (2, 5, L)
    mask = (captions[:, 1:] != 0).float()[..., None]  # 3 and 2 target steps
    expected = 2.0 * ((1 - (alpha * mask).sum(1)) ** 2).sum(-1).sum() / 5  # per target word of the batch
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_penalty_weighs_as_in_xu_et_al():
    """arctic-captions' capgen.py: cost = mean over captions of (sum_t -log p + alpha_c * penalty). Our loss (a mean
    per word) times the batch's words per caption is that cost, for any alpha_c."""
    decoder = make().train()
    decoder.config.alpha_c = 1.0
    features, captions = grid(2), torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
    loss, n, _ = batch_loss(decoder, None, CaptionBatch(features, captions, torch.arange(2)),
                         torch.device("cpu"), pad_id=0)
    logp = decoder(features, captions).logits.log_softmax(-1).gather(2, captions[:, 1:, None])[..., 0]
    alpha = torch.stack(alphas_of(decoder, features, captions), 1) * (captions[:, 1:] != 0)[..., None]
    theirs = (-(logp * (captions[:, 1:] != 0)).sum(1) + ((1 - alpha.sum(1)) ** 2).sum(-1)).mean()
    assert n == 5 and (loss * n / 2).item() == pytest.approx(theirs.item(), rel=1e-5)


def alphas_of(decoder: AttentionDecoder, features: torch.Tensor, captions: torch.Tensor) -> list[torch.Tensor]:
    alphas, state = [], decoder.init_state(features)
    for t in range(captions.shape[1] - 1):
        _, state, alpha = decoder.step(captions[:, t], state, features)
        alphas.append(alpha)
    return alphas


def test_batched_beam_search_with_attention_equals_one_image_at_a_time():
    decoder, features = make(seed=4), grid(6, seed=5)
    with torch.no_grad():
        batched = beam_search(decoder, features, DecodeOptions(beam_size=3, max_len=8), SpecialIds(**IDS), with_attention=True)
        for i in range(6):
            alone = beam_search(decoder, features[i:i + 1], DecodeOptions(beam_size=3, max_len=8), SpecialIds(**IDS),
                                with_attention=True)
            n = alone.ids.shape[1]
            assert torch.equal(batched.ids[i, :n], alone.ids[0]) and (batched.ids[i, n:] == 0).all()
            assert torch.allclose(batched.attention[i, :n], alone.attention[0], atol=1e-6)
    assert batched.attention.shape[:2] == batched.ids.shape and batched.attention.shape[2] == L
    one = beam_search(decoder, features, DecodeOptions(beam_size=1, max_len=8), SpecialIds(**IDS), with_attention=True)
    g = greedy(decoder, features, DecodeOptions(max_len=8), SpecialIds(**IDS), with_attention=True)
    assert torch.equal(one.ids, g.ids) and torch.allclose(one.attention, g.attention, atol=1e-6)


def test_attention_block_passes_gradcheck():
    torch.manual_seed(0)
    block = SoftAttention(D, H, 5).double()
    values = torch.randn(2, L, D, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, H, dtype=torch.float64, requires_grad=True)

    def f(values, h):
        return block(block.feature_proj(values), values, h)

    assert torch.autograd.gradcheck(f, (values, h))


def test_grid_cache_is_float16_on_disk_and_read_as_float32(tmp_path):
    from captioning.data.coco import load_coco_captions
    from captioning.data.datasets import CaptionDataset
    from captioning.data.features import cached_features, pooled
    from captioning.data.images import open_image
    from captioning.data.shapes import make_shapes_dataset
    from captioning.models import build_encoder
    from captioning.text import Vocabulary

    paths = make_shapes_dataset(tmp_path / "shapes", n_train=5, n_val=0, n_test=0, image_size=32, demo_images=0)
    coco = load_coco_captions(paths["train"], tmp_path / "shapes" / "images" / "train")
    encoder = build_encoder("small_cnn", image_size=64, grid=True)
    features = cached_features(encoder, coco, tmp_path / "cache", num_workers=0, progress=False)
    assert isinstance(features, np.memmap) and features.dtype == np.float16 and features.shape == (5, 16, 64)
    assert list((tmp_path / "cache").glob("*.npy"))
    with torch.no_grad():
        direct = encoder(torch.stack([encoder.transform(open_image(coco.image_path(i))) for i in coco.image_ids]))
    assert torch.allclose(torch.from_numpy(np.asarray(features, dtype=np.float32)), direct, atol=2e-2, rtol=1e-2)
    item = CaptionDataset(coco, Vocabulary(["a"]), features=features)[0][0]
    assert item.dtype == torch.float32 and item.shape == (16, 64)
    assert torch.allclose(pooled(features), torch.from_numpy(np.asarray(features, dtype=np.float32)).mean(1))


EPOCH = textwrap.dedent("""
    import json, sys
    import numpy as np
    from torch.utils.data import DataLoader
    from captioning.data.coco import load_coco_captions
    from captioning.data.datasets import CaptionDataset
    from captioning.data.collate import collate_captions
    from captioning.text import Vocabulary

    def anon_kib():
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("RssAnon")).split()[1])

    coco, grid = load_coco_captions(sys.argv[1]), np.load(sys.argv[2], mmap_mode="r")
    loader = DataLoader(CaptionDataset(coco, Vocabulary(["a", "b"]), features=grid), batch_size=32,
                        collate_fn=lambda b: collate_captions(b, 0))
    start, peak, total = anon_kib(), 0, 0.0
    for batch in loader:  # an epoch over every caption, as training reads them
        total += float(batch.images.sum())
        peak = max(peak, anon_kib())
    print(json.dumps({"start": start, "peak": peak, "sum": total}))
""")


@pytest.mark.slow
def test_an_epoch_over_a_4x_larger_grid_cache_takes_no_more_memory(tmp_path):
    def split(n: int) -> tuple:
        ann = tmp_path / f"captions_{n}.json"
        ann.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.png"} for i in range(n)],
                                   "annotations": [{"id": i, "image_id": i, "caption": "a b"} for i in range(n)]}))
        cache = tmp_path / f"grid_{n}.npy"
        store = np.lib.format.open_memmap(cache, mode="w+", dtype=np.float16, shape=(n, 49, 1280))
        for i in range(0, n, 256):  # 123 KB a row: 400 rows are 50 MB, 1600 rows 200 MB
            store[i:i + 256] = np.random.default_rng(i).standard_normal((min(256, n - i), 49, 1280))
        store.flush()
        del store
        return ann, cache

    peaks = {}
    for n in (400, 1600):
        proc = subprocess.run([sys.executable, "-c", EPOCH, *map(str, split(n))], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        peaks[n] = json.loads(proc.stdout)
    growth = {n: (p["peak"] - p["start"]) / 1024 for n, p in peaks.items()}  # MiB of anonymous memory
    assert growth[1600] < growth[400] + 16, growth  # 150 MB more cache, no more resident memory
    assert growth[1600] < 64
