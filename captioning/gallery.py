"""Writing a captioned folder: captions.json, captions.csv and a self-contained index.html.

The gallery only references files inside the output directory (thumbnails are written
there), so it can be zipped, mailed or opened offline. Every caption shows its score (the mean
log-probability per token: low means the model was unsure); when the rows carry references and their
CIDEr-D / BLEU-4 (captioning-caption references=...), the worst-scored images come first, each with its
references, so a researcher sees what the model gets wrong.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Collection

import torch
from PIL import Image

from captioning.data.images import open_image, save_thumbnail
from captioning.io import atomic_path, atomic_write_json, atomic_write_text

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }}
h1 {{ font-size: 1.4em; }} .summary {{ color: #555; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 16px; }}
figure {{ margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }}
img {{ width: 100%; height: 200px; object-fit: contain; background: #eee; }}
figcaption {{ margin-top: 6px; font-size: 0.95em; }} .file {{ color: #888; font-size: 0.8em; word-break: break-all; }}
.failed li {{ color: #a00; }} .score {{ color: #666; font-size: 0.85em; }}
.refs {{ color: #555; font-size: 0.85em; margin: 4px 0 0 1em; padding: 0; }}
.attention {{ display: flex; flex-wrap: wrap; gap: 4px; margin-top: 6px; }}
.attention figure {{ border: 0; padding: 0; width: 64px; text-align: center; font-size: 0.75em; }}
.attention img {{ width: 64px; height: 64px; }}
</style></head><body>
<h1>{title}</h1>
<p class="summary">{summary}</p>
<div class="grid">
{figures}
</div>
{failures}
</body></html>
"""


def summary_line(rows: list[dict]) -> str:
    ok = sum("caption" in r for r in rows)
    return f"{ok} images captioned, {len(rows) - ok} failed"


def shown(text: str) -> str:
    """HTML-escaped text, with the bytes of a file name that is not UTF-8 shown as \\xNN escapes."""
    return html.escape(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))


def inert(cell: object) -> object:
    """A CSV cell a spreadsheet shows as text: one that starts like a formula (=, +, -, @, tab, CR) gets a leading
    apostrophe (OWASP's advice against CSV injection); captions.json keeps every string as it is."""
    return f"'{cell}" if isinstance(cell, str) and cell.startswith(("=", "+", "-", "@", "\t", "\r")) else cell


def _details(row: dict) -> str:
    """The caption's score (or that it came from retrieval, with the model's caption), and its CIDEr-D, BLEU-4 and
    references when there are some."""
    parts = [f"score {row['score']:.2f}"] if "score" in row else []
    if row.get("retrieval"):  # captioning-caption fallback=: the image is unlike the training images
        parts.append(f"by retrieval; the model's: {html.escape(row['model_caption'])}")
    if "cider" in row:
        parts += [f"CIDEr-D {row['cider']:.2f}", f"BLEU-4 {row['bleu4']:.2f}"]
    refs = "".join(f"<li>{html.escape(r)}</li>" for r in row.get("references", []))
    return (f'<div class="score">{" · ".join(parts)}</div>' if parts else "") + \
        (f'<ul class="refs">{refs}</ul>' if refs else "")


class Thumbnails:
    """Writes row n's thumbnail, OUT/thumbs/<n>.jpg, at most `size` pixels a side; a plain picklable object, so
    the DataLoader workers that already hold the decoded image write it (`ImageFolderDataset(on_image=...)`)."""

    def __init__(self, out_dir: Path, size: int):
        self.out_dir, self.size = out_dir, size

    @staticmethod
    def path(n: int) -> Path:
        return Path("thumbs") / f"{n:06d}.jpg"

    def __call__(self, n: int, image: Image.Image) -> None:
        save_thumbnail(image, self.out_dir / self.path(n), self.size)


def attention_map(image: Image.Image, alpha: torch.Tensor) -> Image.Image:
    """The image, dimmed, with the attention weights (L,) of one word laid over it in red: the grid (a square
    of side sqrt(L)) scaled to the image with bilinear interpolation, the strongest weight fully opaque."""
    side = round(math.sqrt(len(alpha)))
    heat = (alpha.float().view(side, side) / alpha.max().clamp(min=1e-12) * 255).round().byte().numpy()
    mask = Image.fromarray(heat, mode="L").resize(image.size, Image.BILINEAR)
    dimmed = Image.blend(image, Image.new("RGB", image.size, (0, 0, 0)), 0.4)
    return Image.composite(Image.new("RGB", image.size, (255, 40, 0)), dimmed, mask.point(lambda v: v * 3 // 4))


def write_attention_maps(source: Path, out_dir: Path, n: int, words: list[str], alpha: torch.Tensor,
                         size: int = 96) -> list[str]:
    """OUT/attention/<n>/<k>.png for every word (and <end>); returns their paths relative to OUT."""
    image = open_image(source).resize((size, size), Image.BILINEAR)
    paths = []
    for k, weights in enumerate(alpha):
        path = Path("attention") / f"{n:06d}" / f"{k:02d}.png"
        with atomic_path(out_dir / path) as tmp:
            attention_map(image, weights).save(tmp, format="PNG")
        paths.append(path.as_posix())
    return paths


def write_outputs(rows: list[dict], images_root: Path, out_dir: Path, thumbnail_size: int = 256,
                  title: str = "Captions", attention: dict[int, tuple[list[str], torch.Tensor]] | None = None,
                  thumbnails_made: Collection[int] = ()) -> dict[str, Path]:
    """rows: [{"file_name": rel path, "caption": str} | {"file_name": ..., "error": str}]. Row n's thumbnail
    (`Thumbnails`) is written here unless n is in `thumbnails_made` (the workers that read the images wrote it).

    File names are os.fsdecode's strings: one that is not valid UTF-8 holds its bytes as surrogates.
    Each output keeps them losslessly: JSON as "\\udcXX" escapes (json.load gives the same string back,
    os.fsencode the same bytes), CSV as the original bytes, the gallery as a readable \\xNN form.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "captions.json", "csv": out_dir / "captions.csv", "html": out_dir / "index.html"}
    strips = {}
    for n, (words, alpha) in (attention or {}).items():  # one map per word: where the decoder looked
        rows[n]["attention_maps"] = write_attention_maps(images_root / rows[n]["file_name"], out_dir, n, words, alpha)
        strips[n] = "".join(f'<figure><img src="{html.escape(m)}" alt=""><figcaption>{html.escape(w)}'
                            f'</figcaption></figure>' for m, w in zip(rows[n]["attention_maps"], [*words, "<end>"]))
    atomic_write_json(paths["json"], rows)

    buf = io.StringIO()
    fallback = ["retrieval"] if any(row.get("retrieval") for row in rows) else []  # captioning-caption fallback=
    writer = csv.DictWriter(buf, fieldnames=["file_name", "caption", "score", "bleu4", "cider", *fallback, "error"],
                            lineterminator="\n", extrasaction="ignore")  # references: in the JSON only
    writer.writeheader()
    writer.writerows({k: inert(v) for k, v in row.items()} for row in rows)
    atomic_write_text(paths["csv"], buf.getvalue(), errors="surrogateescape")

    figures, failures, thumbnails = [], [], Thumbnails(out_dir, thumbnail_size)
    order = sorted(range(len(rows)), key=lambda n: rows[n].get("cider", float("inf")))  # worst-scored first
    for n in order:
        row = rows[n]
        name = shown(row["file_name"])
        if "caption" not in row:
            failures.append(f"<li><b>{name}</b>: {shown(row['error'])}</li>")
            continue
        thumb = Thumbnails.path(n)
        if n not in thumbnails_made:
            thumbnails(n, open_image(images_root / row["file_name"]))
        strip = f'<div class="attention">{strips[n]}</div>' if n in strips else ""
        figures.append(f'<figure><img src="{thumb.as_posix()}" alt="{name}"><figcaption>'
                       f'{html.escape(row["caption"])}{_details(row)}<div class="file">{name}</div>'
                       f'</figcaption>{strip}</figure>')
    failed = (f'<h2>Could not be read</h2><ul class="failed">{"".join(failures)}</ul>' if failures else "")
    page = PAGE.format(title=shown(title), summary=html.escape(summary_line(rows)),
                       figures="\n".join(figures), failures=failed)
    atomic_write_text(paths["html"], page)
    _remove_stale(out_dir, {Thumbnails.path(n) for n, r in enumerate(rows) if "caption" in r}
                  | {Path(m) for r in rows for m in r.get("attention_maps", [])})
    return paths


MANIFEST = "written.json"  # the thumbnails and attention maps this tool wrote into the folder


def _remove_stale(out_dir: Path, written: set[Path]) -> None:
    """Thumbnails and attention maps an earlier run wrote into this folder that this run's gallery does not show
    (it captioned fewer images, or shorter captions): only files that run's manifest lists, never a file of the
    user's named like ours. Then this run's manifest."""
    manifest = out_dir / MANIFEST
    try:
        earlier = {Path(p) for p in json.loads(manifest.read_text())["files"]}
    except (OSError, ValueError, KeyError, TypeError):  # none (a new folder) or not ours: remove nothing
        earlier = set()
    for path in sorted(earlier - written):
        if ".." not in path.parts and not path.is_absolute():
            (out_dir / path).unlink(missing_ok=True)
            if path.parent.parent == Path("attention") and not any((out_dir / path.parent).iterdir()):
                (out_dir / path.parent).rmdir()
    atomic_write_json(manifest, {"files": sorted(p.as_posix() for p in written)})
