"""What only a CUDA GPU can test: the same maths on the GPU as on the CPU, training there, bf16 autocast there, and
NCCL. Marked `cuda`: `make gpu-check` (`captioning-bench gpu`) runs them on a machine with a GPU; elsewhere each is
skipped with the reason. What can be checked on a CPU about the device (every tensor made on the model's device,
checkpoints moved between devices) is tested in the other files.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from captioning.config import DecodeOptions
from captioning.decoding import SPECIAL_IDS, beam_search, greedy, sample
from captioning.models import DecoderConfig, build_decoder, load_captioner
from test_resume import run, shapes  # noqa: F401 - shapes: the tiny dataset fixture

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check runs it)")]

INJECT = ["init", "pre", "par", "attention"]


def decoder_pair(inject: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """One decoder's CPU copy and CUDA copy, same weights, eval mode."""
    torch.manual_seed(0)
    cpu = build_decoder(DecoderConfig(vocab_size=50, feature_dim=24, embed_dim=16, hidden_dim=32, inject=inject,
                                      attention_dim=16)).eval()
    gpu = build_decoder(DecoderConfig(vocab_size=50, feature_dim=24, embed_dim=16, hidden_dim=32, inject=inject,
                                      attention_dim=16)).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


def features(inject: str, n: int = 6) -> torch.Tensor:
    return torch.randn(n, 7, 24) if inject == "attention" else torch.randn(n, 24)  # (B, L, D) or (B, D)


@pytest.mark.parametrize("inject", INJECT)
def test_teacher_forcing_on_cuda_equals_cpu(inject):
    cpu, gpu = decoder_pair(inject)
    v, captions = features(inject), torch.randint(4, 50, (6, 9))
    with torch.no_grad():
        expected = cpu(v, captions).logits
        got = gpu(v.cuda(), captions.cuda()).logits.cpu()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("inject", INJECT)
def test_greedy_and_beam_on_cuda_give_the_cpus_captions(inject):
    cpu, gpu = decoder_pair(inject)
    v = features(inject)
    with torch.no_grad():
        for search, opts in ((greedy, DecodeOptions(method="greedy")), (beam_search, DecodeOptions(beam_size=3))):
            assert torch.equal(search(gpu, v.cuda(), opts, SPECIAL_IDS).ids.cpu(), search(cpu, v, opts, SPECIAL_IDS).ids)


def test_sampling_on_cuda_is_reproducible_from_a_cuda_generator():
    _, gpu = decoder_pair("init")
    v = features("init").cuda()
    draws = [sample(gpu, v, DecodeOptions(method="sample", top_k=5), SPECIAL_IDS,
                    generator=torch.Generator("cuda").manual_seed(3)).ids for _ in range(2)]
    assert torch.equal(*draws)


@pytest.mark.skipif(torch.cuda.is_available() and not torch.cuda.is_bf16_supported(), reason="no bf16 on this GPU")
def test_bf16_autocast_step_on_cuda_stays_close_to_fp32():
    _, gpu = decoder_pair("init")
    v, captions = features("init").cuda(), torch.randint(4, 50, (6, 9)).cuda()
    with torch.no_grad():
        full = gpu(v, captions).logits
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = gpu(v, captions).logits.float()
    assert (half - full).abs().max() < 0.1


@pytest.mark.parametrize("decoder", ["lstm", "attention"])
def test_training_on_cuda_then_captioning_on_the_cpu(shapes, tmp_path, decoder):  # noqa: F811
    metrics = run(shapes, tmp_path / "run", f"decoder={decoder}", "trainer.max_epochs=2", "trainer.device=cuda",
                  "trainer.precision=auto")
    assert metrics["test"]["bleu4"] >= 0
    captioner = load_captioner(tmp_path / "run" / "checkpoints" / "best.pt", device="cpu")
    assert captioner.device.type == "cpu" and all(captioner.caption(sorted((shapes / "images" / "test").iterdir())))


def test_scst_on_cuda(shapes, tmp_path):  # noqa: F811
    run(shapes, tmp_path / "xe", "trainer.max_epochs=1", "trainer.device=cuda")
    metrics = run(shapes, tmp_path / "scst", "+experiment=scst", "trainer.max_epochs=1", "trainer.device=cuda",
                  f"trainer.init_from={tmp_path / 'xe' / 'checkpoints' / 'best.pt'}")
    assert metrics["epochs"] and "train_reward" in metrics["epochs"][-1]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more CUDA GPUs (NCCL)")
def test_torchrun_over_every_gpu_trains_with_nccl(shapes, tmp_path):  # noqa: F811
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--standalone", f"--nproc_per_node={torch.cuda.device_count()}", "--no-python",
               os.path.join(os.path.dirname(sys.executable), "captioning-train"), f"dataset.root={shapes}",
               f"cache_dir={shapes / 'cache'}", "encoder=small_cnn", "encoder.image_size=32", "trainer.max_steps=4",
               "trainer.batch_size=8", "trainer.device=cuda", f"hydra.run.dir={tmp_path / 'ddp'}"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "checkpoints" / "best.pt").is_file()
