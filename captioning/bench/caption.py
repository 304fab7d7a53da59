"""caption: captioning a folder end to end, the first way (plain CNN in the main process) vs captioning-caption.

Both caption the same folder with the same checkpoint and beam search, and write the same outputs (captions,
thumbnails, gallery). The first way is captioning-caption as it was: DataLoader workers decode and resize, the
main process runs the plain CNN (NCHW, no folding) on batches of 16 in fp32, then beam search, then makes every
thumbnail from the file again. captioning-caption today (`captioning.cli.caption.caption_folder`, composed from
conf/caption.yaml like the command line) runs the CNN's inference copy in the workers, which also write the
thumbnails from the image they decoded, in processes that keep freed memory for the next batch
(`captioning.cpus.keep_freed_memory`); the first way runs first, with glibc's malloc as it comes. The checkpoint
is --checkpoint, or else a captioner with the pretrained EfficientNet-Lite0 and a random decoder (hidden 256; it
says nothing, but takes as long to decode).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captioning.data.folder import ImageFolderDataset, collate_folder, find_images
from captioning.data.shapes import make_shapes_dataset
from captioning.io import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of images (default: --limit synthetic 128-px shapes images, made for the run)")
    parser.add_argument("--limit", type=int, default=2000, help="caption at most this many images")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained captioner (default: see above)")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"], help="captioning-caption's rows")
    parser.add_argument("--workers", type=int, default=2)


def first_way(checkpoint: Path, paths: list[Path], root: Path, out_dir: Path, beam_size: int, workers: int) -> dict:
    """captioning-caption before it ran the CNN in its workers (see the module docstring)."""
    from captioning.config import DecodeOptions
    from captioning.gallery import write_outputs
    from captioning.models import load_captioner

    captioner = load_captioner(checkpoint, device="cpu")
    loader = DataLoader(ImageFolderDataset(paths, captioner.transform), batch_size=16, num_workers=workers,
                        collate_fn=collate_folder)
    decode = asdict(DecodeOptions(method="beam", beam_size=beam_size))
    rows: list[dict] = [{} for _ in paths]
    with torch.inference_mode():
        for n, (indices, images, bad) in enumerate(loader):
            for i, error in bad:
                rows[i] = {"file_name": paths[i].relative_to(root).as_posix(), "error": error}
            if images is None:
                continue
            described = captioner.describe_features(captioner.encoder(images), seed=n, **decode)
            for i, d in zip(indices, described):
                rows[i] = {"file_name": paths[i].relative_to(root).as_posix(), "caption": d["caption"]}
    write_outputs(rows, root, out_dir, 256)
    return {r["file_name"]: r.get("caption") for r in rows}


def captioning_caption(checkpoint: Path, root: Path, out_dir: Path, beam_size: int, workers: int,
                       precision: str) -> dict:
    from hydra import compose, initialize_config_dir

    from captioning.cli._conf import CONF_DIR
    from captioning.cli.caption import caption_folder

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("caption", overrides=[f"checkpoint={checkpoint}", f"images={root}", f"output={out_dir}",
                                            f"decode.beam_size={beam_size}", f"num_workers={workers}",
                                            f"precision={precision}", "device=cpu", "progress=false"])
    return {r["file_name"]: r.get("caption") for r in caption_folder(cfg)}


def random_captioner(path: Path) -> Path:
    """A checkpoint of the pretrained EfficientNet-Lite0 with a random demo-sized LSTM decoder."""
    from captioning.checkpoint import save_checkpoint
    from captioning.models import Captioner, DecoderConfig, build_decoder, build_encoder
    from captioning.text import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary([f"w{i}" for i in range(40)])
    config = DecoderConfig(vocab_size=len(vocab), feature_dim=1280, embed_dim=128, hidden_dim=256)
    encoder = build_encoder("efficientnet_lite0")
    model = Captioner(encoder, build_decoder(config), vocab)
    save_checkpoint(path, model_state=model.state_dict(), vocab=vocab,
                    model_config={"encoder": encoder.spec, "decoder": asdict(config)})
    return path


def run(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.images is None:
            make_shapes_dataset(tmp / "shapes", n_train=0, n_val=args.limit, n_test=0, demo_images=0)
            args = argparse.Namespace(**{**vars(args), "images": tmp / "shapes" / "images" / "val"})
        if not args.images.is_dir():
            raise InputError(f"image folder {args.images} not found")
        paths = find_images(args.images)[0][:args.limit]  # as captioning-caption finds them
        if not paths:
            raise InputError(f"no images in {args.images}")
        root = tmp / "folder"  # exactly the --limit images, linked
        for p in paths:
            (root / p.relative_to(args.images)).parent.mkdir(parents=True, exist_ok=True)
            (root / p.relative_to(args.images)).symlink_to(p.resolve())
        paths = find_images(root)[0]
        checkpoint = args.checkpoint or random_captioner(tmp / "random.pt")
        methods = {("first way: plain CNN in the main process, thumbnails after", "fp32"):
                   lambda out: first_way(checkpoint, paths, root, out, args.beam_size, args.workers)}
        for precision in args.precisions:
            methods[("captioning-caption: CNN and thumbnails in the workers", precision)] = \
                lambda out, precision=precision: captioning_caption(checkpoint, root, out, args.beam_size,
                                                                    args.workers, precision)
        seconds, captions = {}, {}
        for n, (key, fn) in enumerate(methods.items()):
            t0 = time.perf_counter()
            captions[key] = fn(tmp / f"out{n}")
            seconds[key] = time.perf_counter() - t0
    base = captions[next(iter(methods))]
    return [{"method": method, "precision": precision, "images": len(paths), "seconds": s,
             "images/s": len(paths) / s, "speedup": f"{seconds[next(iter(methods))] / s:.2f}x",
             "same captions as the first way": f"{sum(captions[(method, precision)][k] == v for k, v in base.items())}"
                                               f"/{len(paths)}"}
            for (method, precision), s in seconds.items()]
