"""captioning-caption: caption every image in a folder with a trained checkpoint.

    captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=photos/ output=captions/

Writes OUTDIR/captions.json, OUTDIR/captions.csv and OUTDIR/index.html (a gallery with
thumbnails). Unreadable files are listed with their error and never stop the run; the exit
status is 0 when at least one image was captioned.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from captioning.cli._conf import CONF_DIR
from captioning.cli.common import fail, require, run_entry_point, take_renamed, user_errors
from captioning.config import DecodeOptions, check, options_from
from captioning.io import InputError, check_writable, not_there


def caption_folder(cfg: DictConfig) -> list[dict]:
    from contextlib import closing
    from dataclasses import asdict

    import math

    from captioning.cpus import set_threads
    from captioning.data.coco import load_coco_captions
    from captioning.data.folder import IMAGE_EXTENSIONS, ImageFolderDataset, find_images
    from captioning.gallery import Thumbnails, summary_line, write_outputs
    from captioning.models import load_captioner
    from captioning.progress import progress
    from captioning.precision import resolve_device, resolve_precision

    take_renamed(cfg, {"attention": "with_attention"})  # the API's name
    with_attention = cfg.with_attention
    options = options_from(DecodeOptions, cfg.decode, "decode")
    check(options)  # before any image is read
    check_options(cfg)
    decode = asdict(options)
    device = resolve_device(cfg.device)
    precision, why = resolve_precision(cfg.precision, device)
    root, out_dir = Path(cfg.images).expanduser(), Path(cfg.output).expanduser()
    if not root.is_dir():
        raise InputError(f"images folder {not_there(root, folder=True)}: {root}")
    if out_dir.is_file():
        raise InputError(f"output={out_dir} is a file; give a folder for captions.json, captions.csv and index.html")
    index = load_fallback(cfg.fallback)  # read before any image, as the references
    references = None
    if cfg.references:  # read before any image: a bad file fails now
        coco = load_coco_captions(cfg.references)
        references = {coco.file_names[i]: coco.captions[i] for i in coco.image_ids}
    inside = out_dir.resolve().is_relative_to(root.resolve())
    paths, problems = find_images(root, exclude=out_dir if inside else None)
    if inside:
        print(f"note: output {out_dir} is inside the images folder; its files are not captioned", file=sys.stderr)
    if not paths:
        raise InputError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
    captioner = load_captioner(cfg.checkpoint, device=device)  # a list of checkpoints: their ensemble
    if with_attention:
        captioner.check_attention("with_attention=true", source=str(cfg.checkpoint))
    decode = decode if index is None else fallback_decoding(index, captioner, cfg, decode)  # every beam for the pool
    check_writable(out_dir)  # a read-only or full folder: now, not after the CNN has seen every image
    threads, threads_why = set_threads(cfg.threads)
    print(f"{len(paths)} images; CNN and decoder in {precision} ({why}); {threads} threads ({threads_why})",
          flush=True)
    # The workers decode each image once: the CNN's input, its thumbnail, and on CPU the CNN itself.
    thumbnails = Thumbnails(out_dir, cfg.thumbnail_size)
    described = captioner.describe_images(ImageFolderDataset(paths, captioner.transform, on_image=thumbnails),
                                          cfg.batch_size, cfg.seed, cfg.num_workers, precision,
                                          with_attention=with_attention, with_features=index is not None, **decode)

    def name(path: Path) -> str:  # os.fsdecode's form: a name that is not UTF-8 keeps its bytes as surrogates
        return path.relative_to(root).as_posix()

    rows: list[dict] = [{} for _ in paths]
    attention: dict[int, tuple] = {}
    with closing(described):  # closed at once on an error: the threads come back
        for indices, described_rows, bad in progress(described, total=math.ceil(len(paths) / cfg.batch_size),
                                                     desc="caption", unit="batch", mode=cfg.progress):
            for i, error in bad:
                rows[i] = {"file_name": name(paths[i]), "error": error}
            for i, d in zip(indices, described_rows):
                rows[i] = {"file_name": name(paths[i]), "caption": d["caption"], "score": round(d["score"], 4)}
                if "captions" in d:  # decode.num_return > 1: the best first, as in "caption"
                    rows[i].update(captions=d["captions"], scores=[round(x, 4) for x in d["scores"]])
                if with_attention:
                    attention[i] = (d["words"], d["attention"])
                if index is not None:  # for the fallback, which takes it out again
                    rows[i]["feature"] = d["feature"]
    if index is not None:
        print(apply_fallback(rows, index, keep=options.num_return))
        attention = {i: maps for i, maps in attention.items() if not rows[i].get("retrieval")}  # not its words
    rows += [{"file_name": name(path), "error": reason} for path, reason in problems]
    if references is not None:
        print(score_against(rows, references))
    written = write_outputs(rows, root, out_dir, cfg.thumbnail_size, title=f"Captions for {root}",
                            attention=attention, thumbnails_made={i for i, r in enumerate(rows) if "caption" in r})
    print(f"{summary_line(rows)}; gallery: {written['html']}  (also {written['json'].name}, {written['csv'].name})")
    return rows


def check_options(cfg: DictConfig) -> None:
    """InputError naming every option outside its range (before any image is read)."""
    problems = [f"{name} must be at least {low}, got {cfg[name]}"
                for name, low in (("batch_size", 1), ("num_workers", 0)) if cfg[name] < low]
    if cfg.threads is not None and cfg.threads < 1:
        problems.append(f"threads must be at least 1 or null, got {cfg.threads}")
    if problems:
        raise InputError("; ".join(problems))


def load_fallback(path: str | None):
    """The training run's `FallbackIndex` (retrieval.pt), or None without `fallback=`."""
    if not path:
        return None
    from captioning.baselines import FallbackIndex
    return FallbackIndex.load(Path(path).expanduser())


def fallback_decoding(index, captioner, cfg: DictConfig, decode: dict) -> dict:
    """The decoding options with every beam returned, for the fallback's pool as in the training run's row; InputError
    for an index made by another encoder (or the same one with other weights) than the checkpoint's."""
    from captioning.finetune import weights_digest

    if (index.encoder, index.encoder_weights) != (captioner.encoder.spec, weights_digest(captioner.encoder)):
        raise InputError(f"fallback={cfg.fallback} holds the features of another encoder than {cfg.checkpoint}'s "
                         f"({index.encoder.get('name')} against {captioner.encoder.spec.get('name')}, or other "
                         f"weights): give the retrieval.pt of the training run the checkpoint comes from")
    beams = decode["beam_size"] if decode["method"] == "beam" else 1
    return {**decode, "num_return": max(decode["num_return"], beams)}


def apply_fallback(rows: list[dict], index, keep: int) -> str:
    """The fallback of the training run (`FallbackIndex`, captioning/baselines.py) on the captioned rows: an image
    less like the training images than its threshold gets the consensus of its beams and its k nearest training
    images' captions ("retrieval": true, its own caption kept as "model_caption"); the rows keep `keep` captions
    of their beams. Returns the line that says how many fell back."""
    import torch

    captioned = [r for r in rows if "caption" in r]
    if not captioned:
        return "fallback: no image was captioned"
    own = [r.get("captions", [r["caption"]]) for r in captioned]
    captions, fell_back = index.knn.fallback(torch.stack([r.pop("feature") for r in captioned]), own,
                                             index.threshold, index.k)
    for row, caption, back in zip(captioned, captions, fell_back.tolist()):
        if keep == 1:  # the beams were decoded for the pool alone
            row.pop("captions", None)
            row.pop("scores", None)
        elif "captions" in row:
            row["captions"], row["scores"] = row["captions"][:keep], row["scores"][:keep]
        if back:  # the score is the model's caption's
            row.update(model_caption=row["caption"], model_score=row.pop("score"), caption=caption, retrieval=True)
    return (f"fallback: {int(fell_back.sum())} of {len(captioned)} images are less like the training images than "
            f"the threshold ({index.threshold:.4f}, the {index.quantile:g} quantile of validation) and were captioned "
            f"by retrieval (k={index.k})")


def score_against(rows: list[dict], references: dict[str, list[str]]) -> str:
    """Add each captioned image's references, BLEU-4 and CIDEr-D to its row (images matched by their path
    relative to the folder, as the references' file_name); returns the line that summarises them."""
    from captioning.metrics import score_captions_per_image

    matched = {n: r for n, r in enumerate(rows) if "caption" in r and r["file_name"] in references}
    if not matched:
        return f"note: none of the {len(rows)} images is in the references (file_name relative to the folder)"
    corpus, per_image = score_captions_per_image({n: r["caption"] for n, r in matched.items()},
                                                 {n: references[r["file_name"]] for n, r in matched.items()})
    for n, row in matched.items():
        row.update(references=references[row["file_name"]], bleu4=round(per_image[n]["bleu4"], 4),
                   cider=round(per_image[n]["cider"], 4))
    return (f"{len(matched)} images have references: BLEU-4 {corpus['bleu4']:.4f}, CIDEr-D {corpus['cider']:.4f} "
            f"(the gallery shows the worst first)")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="caption")
def run(cfg: DictConfig) -> None:
    require(cfg, "captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=photos/ output=captions/")
    with user_errors():
        rows = caption_folder(cfg)
    if not any("caption" in r for r in rows):
        fail("no image could be read")


def main() -> None:
    run_entry_point(run)


if __name__ == "__main__":
    main()
