"""A synthetic captioning dataset whose captions can only be right if the model looks.

Each image shows one kind of shape on a plain light background: `count` identical copies
(one, two, three) of a `colour` (red, green, blue, yellow, purple, orange) `shape` (circle,
square, triangle) of one `size` (small, large), grouped on one side (left, right) of the
picture. Every one of the five captions states all five attributes, in five fixed phrasings:

    two large red circles on the left
    two big red circles on the left side
    there are two large red circles on the left
    on the left are two big red circles
    two large circles in red on the left

Every 4-gram of every phrasing names at least one attribute: captions of the wrong image then
share few 4-grams with the references, so BLEU-4 rewards looking at the picture, not
reciting a template (the training run's shuffled-image control measures exactly this).

The attributes are coarse on purpose: they must survive a frozen ImageNet CNN's global average
pool (1280 numbers per image), and the phrasings are regular so that one correctly predicted
caption matches a reference exactly. Generation is deterministic: image i of a split is drawn
from its own random stream seeded by (seed, split, i), so the bytes do not depend on the
number of worker processes.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioning.io import InputError, atomic_path, atomic_write_json, read_json
from captioning.progress import Mode, progress as progress_bar
from captioning.text import tokenize

COLOURS = {"red": (214, 39, 40), "green": (40, 160, 60), "blue": (30, 90, 220), "yellow": (240, 200, 20),
           "purple": (140, 60, 180), "orange": (250, 130, 10)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.06, "large": 0.13}      # half the shape's box side, as a fraction of the image side
BIG_WORD = {"small": "little", "large": "big"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
POSITIONS = ("left", "right")
ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES), "count": tuple(COUNT_WORDS),
              "position": POSITIONS}
TEMPLATES = (
    "{count} {size} {colour} {shape} on the {position}",
    "{count} {big} {colour} {shape} on the {position} side",
    "there {be} {count} {size} {colour} {shape} on the {position}",
    "on the {position} {be} {count} {big} {colour} {shape}",
    "{count} {size} {shape} in {colour} on the {position}",
)
SPLITS = ("train", "val", "test")
SHIFTED = "test_shifted"                 # the extra test split drawn in another style
STYLES = ("filled", "outline")
MARGIN, GAP, SPACING = 0.04, 0.06, 0.04  # border, clearance from the vertical midline, between copies
DISTRACTOR_SIZE = 0.035                  # half the side of a distractor's box, as a fraction of the image side
OUTLINE_WIDTH = 0.025                    # the outline style's line width, as a fraction of the image side
SUPERSAMPLE = 4                          # draw 4x larger, then box-filter down: anti-aliased edges


def captions_for(attributes: dict) -> list[str]:
    """The five captions of an image with these attributes."""
    n = attributes["count"]
    words = dict(count=COUNT_WORDS[n], size=attributes["size"], big=BIG_WORD[attributes["size"]],
                 colour=attributes["colour"], shape=attributes["shape"] + ("s" if n > 1 else ""),
                 position=attributes["position"], be="is" if n == 1 else "are")
    return [t.format(**words) for t in TEMPLATES]


def _free_centres(rng: np.random.Generator, count: int, r: float, box: tuple[float, float, float, float],
                  taken: list[tuple[float, float, float]], gap: float) -> list[tuple[float, float]]:
    """`count` centres in box (x_lo, x_hi, y_lo, y_hi) whose squares of half-side r keep `gap` from each other
    and from the `taken` (x, y, r) squares; rejection sampling, restarted until all fit."""
    x_lo, x_hi, y_lo, y_hi = box
    while count:
        centres: list[tuple[float, float]] = []
        for _ in range(100 * count):
            x, y = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
            if all(max(abs(x - cx), abs(y - cy)) >= r + cr + gap
                   for cx, cy, cr in taken + [(cx, cy, r) for cx, cy in centres]):
                centres.append((x, y))
                if len(centres) == count:
                    return centres
    return []


def sample_scene(rng: np.random.Generator, image_size: int, distractors: int = 0
                 ) -> tuple[dict, list[tuple[float, float]], list[tuple[str, float, float, int]]]:
    """Draw the attributes uniformly, then non-overlapping centres inside the chosen half; then up to
    `distractors` small grey shapes anywhere else (never in the captions: a model must learn to ignore them)."""
    attributes = {name: values[rng.integers(len(values))] for name, values in ATTRIBUTES.items()}
    attributes["count"] = int(attributes["count"])
    s, r = image_size, SIZES[attributes["size"]] * image_size
    box = (MARGIN * s + r, s / 2 - GAP * s - r, MARGIN * s + r, s - MARGIN * s - r)  # left half; mirrored for right
    centres = _free_centres(rng, attributes["count"], r, box, [], SPACING * s)
    if attributes["position"] == "right":
        centres = [(s - x, y) for x, y in centres]
    extras = []
    if distractors:  # drawn only when asked, so the plain dataset's random stream (and bytes) stay the same
        n, rd = int(rng.integers(0, distractors + 1)), DISTRACTOR_SIZE * s
        taken = [(x, y, r) for x, y in centres]
        spots = _free_centres(rng, n, rd, (MARGIN * s + rd, s - MARGIN * s - rd) * 2, taken, SPACING * s)
        extras = [(SHAPES[rng.integers(len(SHAPES))], x, y, int(rng.integers(70, 170))) for x, y in spots]
        attributes["distractors"] = n
    return attributes, centres, extras


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, colour: tuple, style: str,
          width: int) -> None:
    kw = {"fill": colour} if style == "filled" else {"outline": colour, "width": width}
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], **kw)
    elif shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], **kw)
    else:
        points = [(x, y - r), (x + r, y + r), (x - r, y + r)]
        if style == "filled":
            draw.polygon(points, fill=colour)
        else:  # polygon(width=) is recent Pillow: draw the closed outline as lines
            draw.line(points + points[:1], fill=colour, width=width, joint="curve")


def render(attributes: dict, centres: list[tuple[float, float]], image_size: int, rng: np.random.Generator,
           style: str = "filled", extras: list[tuple[str, float, float, int]] = ()) -> Image.Image:
    """Light, slightly tinted background; identical copies in a slightly jittered colour, `filled` or as an
    `outline`; distractors in grey, in the same style."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    k = SUPERSAMPLE
    grey = rng.integers(228, 250)
    background = tuple(int(grey + t) for t in rng.integers(-4, 5, size=3))
    colour = tuple(int(np.clip(c + t, 0, 255)) for c, t in zip(COLOURS[attributes["colour"]],
                                                              rng.integers(-15, 16, size=3)))
    image = Image.new("RGB", (image_size * k, image_size * k), background)
    draw = ImageDraw.Draw(image)
    width = max(2, round(OUTLINE_WIDTH * image_size)) * k
    for shape, x, y, level in extras:
        _draw(draw, shape, x * k, y * k, DISTRACTOR_SIZE * image_size * k, (level,) * 3, style, width)
    r = SIZES[attributes["size"]] * image_size * k
    for x, y in centres:
        _draw(draw, attributes["shape"], x * k, y * k, r, colour, style, width)
    return image.reduce(k)


def _make_image(job: tuple) -> dict:
    """Worker: draw and save one image; returns its COCO `images` entry."""
    seed, split_index, index, image_size, path, style, distractors = job
    rng = np.random.default_rng([seed, split_index, index])
    attributes, centres, extras = sample_scene(rng, image_size, distractors)
    with atomic_path(path) as tmp:
        render(attributes, centres, image_size, rng, style, extras).save(tmp, format="PNG")
    return {"file_name": Path(path).name, "width": image_size, "height": image_size, "style": style,
            "attributes": attributes}


@dataclass(frozen=True)
class Drawing:
    """How the shapes are drawn: `style` (filled | outline); with `shifted_style`, a fourth split `test_shifted`
    drawn in that style (a distribution shift between training and test; `test` stays in `style`);
    `distractors`: up to this many small grey shapes per image that no caption mentions."""
    style: str = "filled"
    shifted_style: str | None = None
    distractors: int = 0


def make_shapes_dataset(root: str | os.PathLike, n_train: int = 3000, n_val: int = 300, n_test: int = 300,
                        seed: int = 0, image_size: int = 128, workers: int | None = None,
                        demo_images: int = 8, progress: Mode = False, drawing: Drawing = Drawing()
                        ) -> dict[str, Path]:
    """Write root/images/{split}/*.png and root/captions_{split}.json; returns split -> annotations path.

    Image ids run on across splits (1..n_train, then val, then test), so they are unique in the
    whole dataset. The first `demo_images` test images are also copied to root/demo_images. `drawing`: the
    styles and distractors (`Drawing`).
    """
    root, style, shifted_style, distractors = Path(root), drawing.style, drawing.shifted_style, drawing.distractors
    for name in (style, shifted_style or style):
        if name not in STYLES:
            raise InputError(f"style must be one of {', '.join(STYLES)}, got {name!r}")
    splits = [(s, n, style) for s, n in zip(SPLITS, (n_train, n_val, n_test))]
    if shifted_style is not None:
        splits.append((SHIFTED, n_test, shifted_style))
    sizes = {s: n for s, n, _ in splits}
    if workers is None:  # below ~200 images, starting processes costs more than it saves
        workers = min(2, os.cpu_count() or 1) if sum(sizes.values()) >= 200 else 1
    jobs, first_id = [], 1
    for split_index, (split, n, split_style) in enumerate(splits):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(seed, split_index, i, image_size, str(root / "images" / split / f"{first_id + i:06d}.png"),
                  split_style, distractors) for i in range(n)]
        first_id += n
    bar = dict(total=len(jobs), desc="shapes", unit="img", mode=progress)
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            entries = list(progress_bar(pool.imap(_make_image, jobs, chunksize=64), **bar))
    else:
        entries = [_make_image(job) for job in progress_bar(jobs, **bar)]

    paths, image_id, ann_id = {}, 1, 1
    for split, _, split_style in splits:
        images, annotations = [], []
        for entry in entries[image_id - 1:image_id - 1 + sizes[split]]:
            images.append({"id": image_id, **entry})
            for caption in captions_for(entry["attributes"]):
                annotations.append({"id": ann_id, "image_id": image_id, "caption": caption})
                ann_id += 1
            image_id += 1
        paths[split] = root / f"captions_{split}.json"
        atomic_write_json(paths[split], {
            "info": {"description": f"synthetic shapes, split {split}, seed {seed}, size {image_size}, "
                                    f"style {split_style}, distractors {distractors}"},
            "licenses": [], "type": "captions", "images": images, "annotations": annotations}, indent=None)

    demo = root / "demo_images"
    demo.mkdir(exist_ok=True)
    for entry in entries[n_train + n_val:n_train + n_val + min(demo_images, n_test)]:  # test images only
        with atomic_path(demo / entry["file_name"]) as tmp:
            shutil.copyfile(root / "images" / "test" / entry["file_name"], tmp)
    return paths


def summary(root: str | os.PathLike) -> dict:
    """Images and captions per split, vocabulary size, caption lengths, attribute distribution."""
    splits, attributes, vocab, lengths = {}, defaultdict(Counter), set(), []
    for split in [*SPLITS, *([SHIFTED] if (Path(root) / f"captions_{SHIFTED}.json").is_file() else [])]:
        data = read_json(Path(root) / f"captions_{split}.json", what="annotations file")
        splits[split] = {"images": len(data["images"]), "captions": len(data["annotations"])}
        for image in data["images"]:
            for name, value in image.get("attributes", {}).items():
                attributes[name][value] += 1
        for ann in data["annotations"]:
            tokens = tokenize(ann["caption"])
            vocab.update(tokens)
            lengths.append(len(tokens))
    return {"splits": splits, "vocab_size": len(vocab),
            "caption_words": {"mean": round(float(np.mean(lengths)), 2), "max": max(lengths)},
            "attributes": {name: dict(sorted(c.items())) for name, c in attributes.items()}}


def format_summary(s: dict) -> str:
    lines = [f"{split:>12}: {v['images']:6d} images {v['captions']:7d} captions" for split, v in s["splits"].items()]
    lines.append(f"vocabulary: {s['vocab_size']} words; caption length: mean {s['caption_words']['mean']}, "
                 f"max {s['caption_words']['max']} words")
    lines += [f"{name:>12}: " + ", ".join(f"{k}={n}" for k, n in c.items()) for name, c in s["attributes"].items()]
    return "\n".join(lines)
