"""Character LM with truncated BPTT: the state carries, the gradient does not, the loss falls."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioning.io import InputError
from captioning.lecture.charlm import CharLM, CharVocab, LMConfig, fit, load_lm, load_text, sample, save_lm
from captioning.lecture.tbptt import batchify, carry_forward, chunks


pytestmark = pytest.mark.usefixtures("one_thread")


TEXT = "the cat sat on the mat.\nthe dog sat on the log.\n" * 30


def _model(cell: str = "lstm", impl: str = "fused", vocab_size: int = 11) -> CharLM:
    torch.manual_seed(0)
    return CharLM(LMConfig(vocab_size=vocab_size, embed_dim=8, hidden_dim=16, num_layers=2, cell=cell, impl=impl))


def test_chunks_cover_the_stream_once_with_shifted_targets():
    stream = torch.arange(2 * 23).view(2, 23)
    pairs = list(chunks(stream, 5))
    assert [x.shape[1] for x, _ in pairs] == [5, 5, 5, 5, 2]
    torch.testing.assert_close(torch.cat([x for x, _ in pairs], 1), stream[:, :-1])
    torch.testing.assert_close(torch.cat([y for _, y in pairs], 1), stream[:, 1:])
    assert batchify(torch.arange(10), 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


@pytest.mark.parametrize("cell,impl", [("lstm", "fused"), ("gru", "explicit"), ("rnn", "fused")])
def test_state_carries_across_chunks(cell, impl):
    """Chunk by chunk with the carried (detached) state == one long forward pass."""
    model = _model(cell, impl).eval()
    ids = torch.randint(0, 11, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model(ids)  # (B, 40, V)
        pieces = [out for out, _ in carry_forward(model, ids.split(7, dim=1))]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    # and the carry matters: starting every chunk from zeros gives something else
    with torch.no_grad():
        fresh = torch.cat([model(x)[0] for x in ids.split(7, dim=1)], 1)
    assert not torch.allclose(fresh, full, atol=1e-3)


@pytest.mark.parametrize("cell,impl", [("lstm", "fused"), ("lstm", "explicit"), ("gru", "fused"), ("rnn", "explicit")])
def test_no_gradient_crosses_a_chunk_boundary(cell, impl):
    """A loss in chunk k+1 gives zero gradient to the (embedded) inputs of chunk k, while the
    same loss without the detach does reach them (so the test could fail)."""
    model = _model(cell, impl)
    embedded = []  # the embedding output of each chunk, kept in the graph

    def keep(_module, _inputs, out):
        out.retain_grad()
        embedded.append(out)

    model.embed.register_forward_hook(keep)
    ids = torch.randint(0, 11, (2, 18), generator=torch.Generator().manual_seed(1))
    outs = [out for out, _ in carry_forward(model, ids.split(6, dim=1))]
    outs[1].square().sum().backward()
    assert embedded[0].grad is None or embedded[0].grad.abs().max() == 0  # chunk k: nothing
    assert embedded[1].grad.abs().max() > 0                               # chunk k+1: its own inputs
    assert embedded[2].grad is None                                        # the future: nothing

    embedded.clear()
    first, state = model(ids[:, :6])
    second, _ = model(ids[:, 6:12], state)  # the state NOT detached: full BPTT
    second.square().sum().backward()
    assert embedded[0].grad.abs().max() > 0


def test_loss_goes_down_and_sampling_behaves(tmp_path: Path):
    vocab = CharVocab.build(TEXT)
    ids = vocab.encode(TEXT)
    model = _model("lstm", "fused", len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = fit(model, ids[:-200], ids[-200:], steps=16, batch_size=4, epochs=6, optimizer=opt, clip=1.0)
    first, last = history[0], history[-1]
    assert last["train_loss"] < 0.6 * first["train_loss"]
    assert last["val_ppl"] < 0.5 * len(vocab)  # far better than guessing uniformly among the characters
    assert all(r["seconds"] > 0 for r in history)

    # argmax is deterministic; temperature ~0 collapses sampling onto it; temperature 1 varies
    a1 = sample(model, vocab, "the ", 40, argmax=True)
    assert a1 == sample(model, vocab, "the ", 40, argmax=True) and a1.startswith("the ")
    g = torch.Generator().manual_seed(0)
    assert sample(model, vocab, "the ", 40, temperature=1e-4, generator=g) == a1
    hot = {sample(model, vocab, "the ", 40, temperature=2.0, generator=g) for _ in range(5)}
    assert len(hot) > 1

    # checkpoints round-trip (weights_only) to the same predictions
    save_lm(tmp_path / "lm.pt", model, vocab, history)
    loaded, vocab2, history2 = load_lm(tmp_path / "lm.pt")
    assert vocab2.itos == vocab.itos and history2 == history
    x = ids[None, :30]
    torch.testing.assert_close(loaded.eval()(x)[0], model.eval()(x)[0])


def _cli(tmp_path: Path, *overrides: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioning.cli.lm", f"hydra.run.dir={tmp_path / 'run'}",
                           *overrides], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli_trains_saves_and_samples(tmp_path: Path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    proc = _cli(tmp_path, f"text_file={text}", "trainer.max_epochs=2", "tbptt.steps=8", "tbptt.batch_size=4",
                "model.hidden_dim=16", "model.embed_dim=8", "sample.length=20", "sample.num_samples=1",
                "sample.temperatures=[0.5]", "sample.prime=the")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2] and metrics["tbptt_steps"] == 8
    samples = json.loads((run / "samples.json").read_text())
    assert set(samples) == {"temperature=0.5", "argmax"}
    assert all(len(s) == 23 and s.startswith("the") for v in samples.values() for s in v)
    model, vocab, history = load_lm(run / "checkpoints" / "last.pt")
    assert history == metrics["epochs"] and len(vocab) == len(set(TEXT))
    assert (run / "checkpoints" / "best.pt").is_file()
    # The old names (before the LM took captioning-train's) still work, each with a one-line warning, and a
    # checkpoint written under the old model name still loads
    old = _cli(tmp_path / "old", f"text_file={text}", "optim.epochs=1", "optim.lr=0.01", "optim.clip=0.5",
               "tbptt.steps=8", "tbptt.batch_size=4", "model.hidden_size=12", "model.embed_dim=8", "sample.length=5",
               "sample.num_samples=1", "sample.temperatures=[0.5]")
    assert old.returncode == 0, old.stderr
    for name, new in (("optim.epochs=1", "trainer.max_epochs=1"), ("optim.lr=0.01", "optim.optimizer.lr=0.01"),
                      ("optim.clip=0.5", "trainer.grad_clip=0.5"), ("model.hidden_size=12", "model.hidden_dim=12")):
        assert f"warning: {name} is now {new}" in old.stderr
    payload = torch.load(tmp_path / "old" / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert payload["config"]["hidden_dim"] == 12
    assert len(json.loads((tmp_path / "old" / "run" / "metrics.json").read_text())["epochs"]) == 1
    payload["config"]["hidden_size"] = payload["config"].pop("hidden_dim")
    torch.save(payload, tmp_path / "written_before.pt")
    assert load_lm(tmp_path / "written_before.pt")[0].config.hidden_dim == 12


def test_cli_missing_default_captions_is_a_clear_error(tmp_path: Path, monkeypatch, capsys):
    """In-process (Hydra's compose + the entry point): cheaper than another subprocess."""
    from hydra import compose, initialize_config_dir

    from captioning.cli._conf import CONF_DIR
    from captioning.cli.lm import run

    monkeypatch.chdir(tmp_path)  # no data/shapes/captions_train.json here
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("lm", overrides=[f"out_dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_:
        run(cfg)
    assert exit_.value.code == 1
    assert "error: captions file not found: data/shapes/captions_train.json" in capsys.readouterr().err


def test_text_from_coco_captions_and_clear_errors(tmp_path: Path):
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps({
        "images": [{"id": 2, "file_name": "b.jpg"}, {"id": 1, "file_name": "a.jpg"}],
        "annotations": [{"id": 10, "image_id": 2, "caption": "a red circle"},
                        {"id": 11, "image_id": 1, "caption": "two blue squares"},
                        {"id": 12, "image_id": 1, "caption": "blue squares"}]}), encoding="utf-8")
    assert load_text(annotations=str(ann)) == "two blue squares\nblue squares\na red circle\n"
    assert load_text(annotations=str(ann), max_chars=8) == "two blue"
    with pytest.raises(InputError, match="text file not found: .*nope.txt"):
        load_text(text_file=str(tmp_path / "nope.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.txt is not UTF-8"):
        load_text(text_file=str(tmp_path / "latin1.txt"))
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="bad.pt"):
        load_lm(tmp_path / "bad.pt")
