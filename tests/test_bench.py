"""captioning-bench: every subcommand runs on tiny sizes and prints its table (benchmarks are not tests)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from captioning.bench.decoder import step_flops
from captioning.cli.bench import main
from captioning.models import CaptionDecoder, DecoderConfig
from captioning.models.decoder import caption_loss


def bench(capsys, *argv: str) -> list[dict]:
    """Run `captioning-bench argv` and parse its markdown table into rows."""
    main(list(argv))
    out = capsys.readouterr().out
    assert out.startswith("Machine: ") and f"## {argv[0]}" in out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1]) <= {"|", "-"}
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def tiny_checkpoint(path) -> None:
    """An untrained small_cnn + LSTM captioner."""
    from captioning.checkpoint import save_checkpoint
    from captioning.models import Captioner, build_encoder
    from captioning.text import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary(["a", "red", "circle"])
    encoder = build_encoder("small_cnn")
    config = DecoderConfig(vocab_size=len(vocab), feature_dim=encoder.out_dim, embed_dim=8, hidden_dim=16)
    save_checkpoint(path, model_state=Captioner(encoder, CaptionDecoder(config), vocab).state_dict(), vocab=vocab,
                    model_config={"encoder": encoder.spec, "decoder": vars(config)})


def test_encoder(capsys, tmp_path):
    for i in range(5):
        Image.new("RGB", (40, 30), (40 * i, 20, 200 - 30 * i)).save(tmp_path / f"{i}.png")
    rows = bench(capsys, "encoder", "--images", str(tmp_path), "--encoder", "small_cnn", "--workers", "1",
                 "--repeats", "1")
    assert [(r["precision"], r["speedup"]) for r in rows][0] == ("fp32", "1.0x")  # the plain loop is the base
    assert [r["precision"] for r in rows[1:]] == ["fp32", "fp32", "bf16"]
    assert all(r["images"] == "5" and float(r["images/s"]) > 0 for r in rows)
    assert all(float(r["min cosine vs plain"]) >= 0.999 for r in rows if r["precision"] == "fp32")


def test_allocator(capsys):
    rows = bench(capsys, "allocator", "--encoder", "small_cnn", "--image-size", "32", "--batch-sizes", "2", "4",
                 "--images", "4", "--precisions", "fp32", "bf16", "--repeats", "1")
    assert [(r["precision"], r["batch"], r["malloc"]) for r in rows] == [
        (p, b, m) for p in ("fp32", "bf16") for b in ("2", "4") for m in ("glibc defaults", "keep_freed_memory")]
    assert all(float(r["ms/image"]) > 0 and int(r["page faults/image"]) >= 0 for r in rows)
    assert all(r["speedup"] == "1.00x" for r in rows[::2])  # each batch's glibc defaults are its base


def test_caption(capsys, tmp_path):
    tiny_checkpoint(tmp_path / "m.pt")
    (tmp_path / "images").mkdir()
    for i in range(5):
        Image.new("RGB", (40, 30), (40 * i, 20, 200 - 30 * i)).save(tmp_path / "images" / f"{i}.png")
    rows = bench(capsys, "caption", "--images", str(tmp_path / "images"), "--checkpoint", str(tmp_path / "m.pt"),
                 "--precisions", "fp32", "bf16", "--workers", "1")
    assert [(r["method"].split(":")[0], r["precision"]) for r in rows] == [
        ("first way", "fp32"), ("captioning-caption", "fp32"), ("captioning-caption", "bf16")]
    assert rows[0]["speedup"] == "1.00x" and rows[1]["same captions as the first way"] == "5/5"
    assert all(r["images"] == "5" and float(r["images/s"]) > 0 for r in rows)


def test_scale(capsys):
    rows = bench(capsys, "scale", "--images", "40", "--captions", "210", "--steps", "2", "--hidden", "16", "--embed",
                 "8", "--batch", "8", "--precision", "fp32")
    stages = [r["stage"] for r in rows]
    assert stages[0] == "read, validate and index the annotations" and rows[0]["result"] == "40 images, 210 captions"
    assert rows[2]["result"] == "210 items" and "float16" in stages[4]
    assert stages[5].startswith("one decoder epoch, projected from 2 steps (hidden 16, batch 8, fp32)")
    assert "27 steps" in rows[5]["result"] and float(rows[5]["seconds"]) > 0  # 210 captions / 8 per batch
    assert stages[6] == "peak resident memory of this process" and rows[6]["result"].endswith("MiB")


def test_decoder(capsys):
    rows = bench(capsys, "decoder", "--batch", "4", "--hidden", "16", "--embed", "8", "--vocab", "40",
                 "--feature-dim", "12", "--seq-len", "6", "--steps", "1", "--repeats", "1", "--peak-size", "64")
    assert [(r["impl"], r["precision"]) for r in rows] == [("fused", "fp32"), ("fused", "bf16"),
                                                          ("explicit", "fp32"), ("explicit", "bf16")]
    for r in rows:
        assert float(r["tokens/s"]) > 0 and float(r["matmul peak GFLOP/s"]) > 0 and r["% of peak"].endswith("%")


def test_finetune(capsys):
    rows = bench(capsys, "finetune", "--encoder", "small_cnn", "--image-size", "32", "--batch", "4", "--blocks", "1",
                 "--vocab", "30", "--steps", "1", "--repeats", "1")
    assert [r["training step"] for r in rows] == ["cached features (decoder only)", "images, CNN frozen",
                                                  "images, last 1 of 4 blocks trained",
                                                  "images, whole CNN trained (4 blocks)"]
    assert [int(r["trained CNN parameters"]) for r in rows] == [0, 0, 37056, 60864]
    assert all(float(r["images/s"]) > 0 for r in rows) and rows[1]["vs frozen CNN"] == "1.00x"


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("inject", ["init", "pre", "par"])
def test_decoder_flops_match_torchs_flop_counter(cell, inject):
    config = DecoderConfig(vocab_size=30, feature_dim=12, embed_dim=8, hidden_dim=10, num_layers=2, cell=cell,
                           impl="explicit", inject=inject)
    decoder = CaptionDecoder(config)
    captions = torch.randint(3, 30, (4, 6))
    with FlopCounterMode(display=False) as counter:
        caption_loss(decoder(torch.randn(4, 12), captions).logits, captions[:, 1:], pad_id=0).backward()
    assert step_flops(config, batch=4, seq_len=6) == counter.get_total_flops()


def test_projection(capsys):
    rows = bench(capsys, "projection", "--hidden", "16", "--vocab", "50", "--batch-sizes", "1", "7", "--repeats", "1")
    assert [r["rows"] for r in rows] == ["1", "7"]
    for r in rows:
        assert float(r["nn.Linear ms"]) > 0 and float(r["oneDNN ms"]) > 0 and float(r["largest difference"]) < 1e-4
        assert r["decoding uses"].split()[0] in ("oneDNN", "nn.Linear")


def test_beam(capsys):
    rows = bench(capsys, "beam", "--images", "3", "--beam-sizes", "2", "--batch-sizes", "3", "--vocab", "30",
                 "--hidden", "16", "--embed", "8", "--feature-dim", "12", "--max-len", "5")
    assert [r["method"] for r in rows] == ["per-image loop", "batched, 3 images/call"]
    assert all(r["same captions as loop"] == "3/3" for r in rows)


def test_beam_with_a_trained_checkpoint(capsys, tmp_path):
    tiny_checkpoint(tmp_path / "m.pt")
    for i in range(4):
        Image.new("RGB", (40, 30), (60 * i, 20, 200 - 30 * i)).save(tmp_path / f"{i}.png")
    rows = bench(capsys, "beam", "--checkpoint", str(tmp_path / "m.pt"), "--folder", str(tmp_path), "--images", "3",
                 "--beam-sizes", "2", "--batch-sizes", "3", "--max-len", "5")
    assert [r["images"] for r in rows] == ["3", "3"] and all(r["same captions as loop"] == "3/3" for r in rows)


def test_eval(capsys, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"im{i}.jpg#{n}\t{text}\n" for i, texts in enumerate([
        ["A brown dog runs on the grass .", "a dog is running on the grass", "the brown dog runs on grass"],
        ["Two people walk down the street , talking .", "two people are walking down the street",
         "people walk down a street"]])
        for n, text in enumerate(texts)))
    rows = bench(capsys, "eval", "--captions", str(captions), "--repeats", "1")
    assert len(rows) == 2 and rows[0]["images"] == "2"
    assert float(rows[0]["BLEU-4"]) > 0.1 and rows[0]["BLEU-4"] == rows[1]["BLEU-4"]  # ours equals the official
    assert float(rows[0]["CIDEr-D"]) >= 0 and rows[0]["CIDEr-D"] == rows[1]["CIDEr-D"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: make gpu-check runs the whole check")
def test_the_gpu_check_stops_in_one_line_without_cuda(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["gpu"])
    out = capsys.readouterr().out
    assert exit_.value.code == 1
    said = [line for line in out.splitlines() if line.startswith("gpu check:")]
    assert len(said) == 1 and "no CUDA device" in said[0] and "nothing ran on a GPU" in said[0]
