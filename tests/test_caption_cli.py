"""captioning-caption: outputs, bad files, error cases, and the gallery as a browser renders it."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from hydra import compose, initialize_config_dir

from captioning.checkpoint import save_checkpoint
from captioning.cli._conf import CONF_DIR
from captioning.cli.caption import caption_folder
from captioning.io import InputError
from captioning.data.shapes import make_shapes_dataset
from captioning.models import Captioner, CaptionDecoder, DecoderConfig, build_decoder, build_encoder
from captioning.text import Vocabulary

BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained small captioner: captions are arbitrary words, which is all these tests need."""
    torch.manual_seed(0)
    vocab = Vocabulary(["a", "red", "circle", "on", "the", "left"])
    encoder = build_encoder("small_cnn")
    config = DecoderConfig(vocab_size=len(vocab), feature_dim=encoder.out_dim, embed_dim=8, hidden_dim=16)
    model = Captioner(encoder, CaptionDecoder(config), vocab)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model_state=model.state_dict(), vocab=vocab,
                    model_config={"encoder": encoder.spec, "decoder": vars(config)})
    return path


@pytest.fixture()
def photos(tmp_path) -> Path:
    """Good images in nested folders with mixed-case extensions, plus every kind of bad file."""
    root = tmp_path / "photos"
    make_shapes_dataset(tmp_path / "shapes", n_train=1, n_val=1, n_test=4, seed=1, image_size=48, demo_images=0)
    pngs = sorted((tmp_path / "shapes" / "images").rglob("*.png"))
    (root / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(pngs[0], root / "a.png")
    shutil.copy(pngs[1], root / "nested" / "B.PNG")
    Image.open(pngs[2]).convert("RGB").save(root / "nested" / "deeper" / "c.JpG", format="JPEG")
    Image.open(pngs[3]).save(root / "d.gif")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.webp").write_text("not an image at all")
    data = (root / "a.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "readme.txt").write_text("ignored: not an image extension")
    return root


def caption(*args: str) -> subprocess.CompletedProcess:
    """The real command line, for exit codes and messages."""
    return subprocess.run([str(BIN / "captioning-caption"), *args, "progress=false", "num_workers=0"],
                          capture_output=True, text=True, timeout=300)


def caption_inprocess(capsys, *args: str, workers: int = 0) -> tuple[list[dict], str]:
    """The same code path in this process (composed with Hydra's compose API): much faster."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("caption", overrides=[*args, "progress=false", f"num_workers={workers}"])
    rows = caption_folder(cfg)
    return rows, capsys.readouterr().out


def test_captions_json_csv_and_failures(tmp_path, photos, checkpoint):
    out = tmp_path / "out"
    proc = caption(f"checkpoint={checkpoint}", f"images={photos}", f"output={out}", "decode.beam_size=2")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "captions.json").read_text())
    by_name = {r["file_name"]: r for r in rows}
    good = {"a.png", "nested/B.PNG", "nested/deeper/c.JpG", "d.gif"}
    bad = {"empty.jpg", "notes.webp", "truncated.png"}
    assert good | bad <= set(by_name) and "readme.txt" not in by_name
    assert all(isinstance(by_name[n]["caption"], str) and "error" not in by_name[n] for n in good)
    assert all("error" in by_name[n] and "caption" not in by_name[n] for n in bad)
    with open(out / "captions.csv", newline="") as f:
        assert {r["file_name"]: r["caption"] for r in csv.DictReader(f)} == {r["file_name"]: r.get("caption", "") for r in rows}
    n_ok = sum("caption" in r for r in rows)
    assert f"{n_ok} images captioned, {len(rows) - n_ok} failed" in proc.stdout
    assert len(list((out / "thumbs").glob("*.jpg"))) == n_ok


def test_error_cases(tmp_path, photos, checkpoint, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images found"):
        caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={empty}", f"output={tmp_path / 'o1'}")
    with pytest.raises(InputError, match="images folder not found"):
        caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={tmp_path / 'nope'}", f"output={tmp_path / 'o1'}")
    with pytest.raises(InputError, match="images folder is a file, not a folder: .*a.png"):  # one photo, not a folder
        caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={photos / 'a.png'}", f"output={tmp_path / 'o1'}")
    old = tmp_path / "old.pt"
    torch.save({"format_version": 0, "model_config": {}, "model": {}}, old)
    with pytest.raises(InputError, match="format 0"):
        caption_inprocess(capsys, f"checkpoint={old}", f"images={photos}", f"output={tmp_path / 'o3'}")
    with pytest.raises(InputError, match="batch_size must be at least 1, got 0; threads must be at least 1"):
        caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={photos}", f"output={tmp_path / 'o5'}",
                          "batch_size=0", "threads=0")

    proc = caption(f"checkpoint={tmp_path / 'missing.pt'}", f"images={photos}", f"output={tmp_path / 'o2'}")
    assert proc.returncode == 1 and "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"garbage")
    proc = caption(f"checkpoint={checkpoint}", f"images={only_bad}", f"output={tmp_path / 'o4'}")
    assert proc.returncode == 1 and "0 images captioned, 1 failed" in proc.stdout


def test_output_inside_input_folder_is_not_captioned_again(tmp_path, photos, checkpoint, capsys):
    out = photos / "captions_out"
    for _ in range(2):  # the second run must not pick up the first run's thumbnails
        caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={photos}", f"output={out}")
    names = [r["file_name"] for r in json.loads((out / "captions.json").read_text())]
    assert not any(n.startswith("captions_out/") for n in names)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_phone_photo_tagged_sideways_is_captioned_and_shown_upright(tmp_path, checkpoint, capsys, workers):
    photos = tmp_path / "phone"
    photos.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF Orientation "rotate 90 clockwise to view": stored 60 x 30, seen 30 x 60
    Image.new("RGB", (60, 30), "orange").save(photos / "IMG_0001.jpg", exif=exif)
    rows, _ = caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={photos}", f"output={tmp_path / 'out'}",
                               workers=workers)
    assert "caption" in rows[0]
    (thumb,) = (tmp_path / "out" / "thumbs").iterdir()
    assert Image.open(thumb).size[0] < Image.open(thumb).size[1]  # portrait, as every photo viewer shows it


def test_a_second_run_into_the_same_folder_leaves_only_its_own_thumbnails(tmp_path, photos, checkpoint, capsys):
    out = tmp_path / "out"
    (out / "thumbs").mkdir(parents=True)
    (out / "thumbs" / "mine.jpg").write_bytes(b"a file of the user's")
    (out / "thumbs" / "000042.jpg").write_bytes(b"the user's too, named like a thumbnail")
    caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={photos}", f"output={out}")
    assert len(list((out / "thumbs").glob("0000[0-3]*.jpg"))) == 4
    caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={photos / 'nested'}", f"output={out}")
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == ["000000.jpg", "000001.jpg", "000042.jpg", "mine.jpg"]
    assert json.loads((out / "written.json").read_text()) == {"files": ["thumbs/000000.jpg", "thumbs/000001.jpg"]}


def render(page: Path, tmp_path: Path) -> tuple[Image.Image, str]:
    """A headless Chromium screenshot of `page` and the DOM it built."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]
    url = page.resolve().as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    return Image.open(shot).convert("RGB"), dom


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium (.ci/run does)")
def test_gallery_renders_in_headless_chromium(tmp_path, photos, checkpoint, capsys):
    out = tmp_path / "out"
    caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={photos}", f"output={out}")
    image, dom = render(out / "index.html", tmp_path)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "screenshot looks blank"
    rows = json.loads((out / "captions.json").read_text())
    for r in rows:
        assert (r.get("caption") or r["file_name"]) in dom


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium (.ci/run does)")
def test_attention_maps_in_the_gallery(tmp_path, photos, checkpoint, capsys):
    """with_attention=true: one map per word (and <end>) under every caption, as PNGs beside the gallery."""
    torch.manual_seed(0)
    vocab = Vocabulary(["a", "red", "circle", "on", "the", "left"])
    encoder = build_encoder("small_cnn", image_size=64, grid=True)
    config = DecoderConfig(vocab_size=len(vocab), feature_dim=encoder.out_dim, embed_dim=8, hidden_dim=16,
                           inject="attention", attention_dim=8)
    model = Captioner(encoder, build_decoder(config), vocab)
    path = tmp_path / "attention.pt"
    save_checkpoint(path, model_state=model.state_dict(), vocab=vocab,
                    model_config={"encoder": encoder.spec, "decoder": vars(config)})
    out = tmp_path / "out"
    rows, _ = caption_inprocess(capsys, f"checkpoint={path}", f"images={photos}", f"output={out}", "with_attention=true",
                                "decode.max_len=4")
    captioned = [r for r in rows if "caption" in r]
    assert captioned and all(len(r["attention_maps"]) == len(r["caption"].split()) + 1 for r in captioned)
    assert all((out / m).is_file() for r in captioned for m in r["attention_maps"])
    _, dom = render(out / "index.html", tmp_path)
    assert dom.count('class="attention"') == len(captioned) and dom.count("attention/") >= len(captioned)
    with pytest.raises(InputError, match="with_attention=true draws an attention decoder's maps"):
        caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={photos}", f"output={tmp_path / 'o2'}",
                          "with_attention=true")  # a decoder without attention has no maps to draw
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):  # the old name: works, with a warning
        old = caption_folder(compose("caption", overrides=[f"checkpoint={path}", f"images={photos}", "attention=true",
                                                           f"output={tmp_path / 'o3'}", "decode.max_len=4",
                                                           "progress=false", "num_workers=0"]))
    assert [r.get("attention_maps") for r in old] == [r.get("attention_maps") for r in rows]
    assert "attention=true is now with_attention=true" in capsys.readouterr().err


@pytest.mark.parametrize("options, api_kwargs", [
    ([], {}),                                                           # beam search with the defaults of both
    (["decode=greedy"], {"method": "greedy"}),
    (["decode=sample", "decode.temperature=1.5"], {"method": "sample", "temperature": 1.5, "seed": 0}),
    (["decode.beam_size=4", "decode.length_penalty=none", "decode.max_len=5"],
     {"beam_size": 4, "length_penalty": "none", "max_len": 5}),
    (["decode.block_ngram_repeat=2", "decode.min_len=3", "decode.suppress_unk=true", "decode.length_penalty=wu"],
     {"block_ngram_repeat": 2, "min_len": 3, "suppress_unk": True, "length_penalty": "wu"}),
    (["decode=sample", "decode.top_p=0.8"], {"method": "sample", "top_p": 0.8, "seed": 0}),
])
def test_cli_and_python_api_give_the_same_captions(tmp_path, capsys, options, api_kwargs):
    """One source of decoding defaults: captioning-caption and Captioner.caption agree for the same options."""
    from captioning import load_captioner

    torch.manual_seed(1)  # an untrained model made to depend on the image (small_cnn's features vary little)
    vocab = Vocabulary(["a", "red", "blue", "circle", "square", "on", "the", "left", "right"])
    encoder = build_encoder("small_cnn")
    config = DecoderConfig(vocab_size=len(vocab), feature_dim=encoder.out_dim, embed_dim=8, hidden_dim=16)
    model = Captioner(encoder, CaptionDecoder(config), vocab)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(6)
        model.decoder.init_state_proj.weight.mul_(500)
        model.decoder.init_cell_proj.weight.mul_(500)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model_state=model.state_dict(), vocab=vocab,
                    model_config={"encoder": encoder.spec, "decoder": vars(config)})
    root = tmp_path / "images"
    make_shapes_dataset(tmp_path / "shapes", n_train=0, n_val=0, n_test=20, seed=3, image_size=48, demo_images=0)
    shutil.copytree(tmp_path / "shapes" / "images" / "test", root)
    rows, _ = caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={root}", f"output={tmp_path / 'out'}",
                                "batch_size=8", *options)
    paths = sorted(root.iterdir())
    api = load_captioner(checkpoint, device="cpu").caption(paths, batch_size=8, **api_kwargs)
    assert [r["caption"] for r in rows] == api
    assert len(set(api)) > 1  # the images really get different captions


def test_scores_references_and_worst_first(tmp_path, checkpoint, capsys):
    """Every caption carries its mean token log-probability; with references=, its CIDEr-D and BLEU-4 and the
    references themselves, and the gallery shows the worst-scored images first."""
    shapes = tmp_path / "shapes"
    make_shapes_dataset(shapes, n_train=0, n_val=0, n_test=5, seed=4, image_size=48, demo_images=0)
    annotations = json.loads((shapes / "captions_test.json").read_text())
    first = annotations["images"][0]["id"]  # give one image its own caption as a reference: it scores best
    rows, _ = caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={shapes / 'images' / 'test'}",
                                f"output={tmp_path / 'plain'}", "decode=greedy")
    own = next(r["caption"] for r in rows if r["file_name"] == annotations["images"][0]["file_name"])
    annotations["annotations"].append({"id": 999, "image_id": first, "caption": own})
    (tmp_path / "refs.json").write_text(json.dumps(annotations))
    rows, out = caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={shapes / 'images' / 'test'}",
                                  f"output={tmp_path / 'out'}", "decode=greedy", f"references={tmp_path / 'refs.json'}")
    assert "5 images have references: BLEU-4" in out
    written = json.loads((tmp_path / "out" / "captions.json").read_text())
    assert all(isinstance(r["score"], float) and r["score"] <= 0 for r in written)
    assert all(len(r["references"]) >= 5 and {"bleu4", "cider"} <= set(r) for r in written)
    best = max(written, key=lambda r: r["cider"])
    assert best["file_name"] == annotations["images"][0]["file_name"]
    with open(tmp_path / "out" / "captions.csv", newline="") as f:
        assert {r["file_name"]: float(r["cider"]) for r in csv.DictReader(f)} == \
            {r["file_name"]: r["cider"] for r in written}
    page = (tmp_path / "out" / "index.html").read_text()
    order = [page.index(f'alt="{r["file_name"]}"') for r in sorted(written, key=lambda r: r["cider"])]
    assert order == sorted(order)  # worst CIDEr-D first
    assert "score -" in page and written[0]["references"][0] in page


def test_num_return_writes_every_caption_best_first(tmp_path, photos, checkpoint, capsys):
    out = tmp_path / "out"
    rows, _ = caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={photos}", f"output={out}",
                                "decode.beam_size=4", "decode.num_return=3", "decode.beam_groups=2")
    captioned = [r for r in rows if "caption" in r]
    assert captioned and all(len(r["captions"]) == len(r["scores"]) == 3 and r["captions"][0] == r["caption"]
                             for r in captioned)
    assert json.loads((out / "captions.json").read_text()) == rows
    assert (out / "captions.csv").read_text().splitlines()[0] == "file_name,caption,score,bleu4,cider,error"


def test_the_cnn_in_workers_gives_the_first_ways_captions_and_thumbnails(tmp_path, photos, checkpoint, capsys):
    """captioning-caption's workers run the CNN's inference copy and write the thumbnails; in fp32 its captions
    are those of the plain CNN in the main process (captioning-bench caption's first way), bad files as before."""
    from captioning.bench.caption import first_way
    from captioning.data.folder import find_images

    rows, out = caption_inprocess(capsys, f"checkpoint={checkpoint}", f"images={photos}", f"output={tmp_path / 'new'}",
                                  "precision=fp32", "batch_size=2", workers=2)
    assert "images; CNN and decoder in fp32 (as asked)" in out
    paths, _ = find_images(photos)
    plain = first_way(checkpoint, paths, photos, tmp_path / "plain", beam_size=3, workers=0)
    assert {r["file_name"]: r.get("caption") for r in rows} == plain
    captioned = [n for n, r in enumerate(rows) if "caption" in r]
    thumbs = sorted((tmp_path / "new" / "thumbs").iterdir())
    assert [t.name for t in thumbs] == [f"{n:06d}.jpg" for n in captioned]
    for t in thumbs:  # the same thumbnails the gallery made before, from the same decoded images
        assert (tmp_path / "plain" / "thumbs" / t.name).read_bytes() == t.read_bytes()


def test_encoded_batches_regroup_into_decoding_chunks_in_order():
    from captioning.data.features import in_chunks

    batches = [([0, 1], torch.tensor([[0.0], [1.0]]), []), ([3], torch.tensor([[3.0]]), [(2, "bad")]),
               ([], None, [(4, "bad")]), ([5, 6, 7], torch.tensor([[5.0], [6.0], [7.0]]), [])]
    chunks = list(in_chunks(iter(batches), 2))
    assert [c[0] for c in chunks] == [[0, 1], [3, 5], [6, 7]]
    assert all(c[1][:, 0].tolist() == c[0] for c in chunks)  # each feature row stays with its image
    assert [e for c in chunks for e in c[2]] == [(2, "bad"), (4, "bad")]
    assert list(in_chunks(iter([([], None, [(0, "bad")])]), 4)) == [([], None, [(0, "bad")])]


def test_while_workers_run_the_cnn_the_caller_runs_on_the_threads_they_leave(photos):
    from captioning.data.features import encoded_batches
    from captioning.data.folder import ImageFolderDataset, find_images
    from captioning.models import build_encoder

    encoder = build_encoder("small_cnn")
    dataset = ImageFolderDataset(find_images(photos)[0], encoder.transform)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = {torch.get_num_threads() for _ in encoded_batches(encoder, dataset, batch_size=2, num_workers=1)}
        assert seen == {1} and torch.get_num_threads() == 2  # 2 CPUs' threads, 1 left by the worker; then back
        seen = {torch.get_num_threads() for _ in encoded_batches(encoder, dataset, batch_size=2, num_workers=0)}
        assert seen == {2}  # no worker: the caller runs the CNN itself, on every thread
        batches = encoded_batches(encoder, dataset, batch_size=2, num_workers=1)
        next(batches)
        assert torch.get_num_threads() == 1
        batches.close()  # a caller that stops early (an unreadable image in Captioner.caption) closes it
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_python_api_with_workers_gives_the_same_captions(tmp_path, photos, checkpoint):
    from captioning.data.images import ImageError
    from captioning.models import load_captioner

    captioner = load_captioner(checkpoint, device="cpu")
    paths = [photos / "a.png", photos / "nested" / "B.PNG", photos / "d.gif"] * 5  # 15 images: more than one batch
    alone = captioner.caption(paths, batch_size=4, precision="fp32")
    assert captioner.caption(paths, batch_size=4, precision="fp32", num_workers=2) == alone
    assert captioner.caption([Image.open(p) for p in paths], batch_size=4, precision="fp32") == alone
    with pytest.raises(ImageError, match="empty.jpg"):
        captioner.caption([paths[0], photos / "empty.jpg"])
