"""README.md under test: every shell command in its ```bash blocks runs (at tiny size) or, where it cannot
run offline on a CPU, composes.

The commands run verbatim in bash, in README order (a later command may use what an earlier one made,
as a reader's would), in a sandbox that looks like the repository root: datasets/, tests/, Makefile, the
Flickr8k release and a Karpathy COCO file unpacked where README says, a few photos in ~/photos. The
programs they call are wrappers (tests/readme_shim.py) that append tiny sizes, or compose instead of
running. COVERAGE says which, for each command: a command added to README without an entry here fails.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from test_real_layouts import karpathy_file

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHIMMED = ["captioning-train", "captioning-eval", "captioning-caption", "captioning-gradflow", "captioning-lm",
           "captioning-bench", "captioning-baseline", "captioning-report", "torchrun", "python", "make"]

RUN, COMPOSE = "run", "compose"
# Every command of README's bash blocks, and how it is covered. COMPOSE only where running is impossible here.
COVERAGE = {
    "make demo": RUN,
    "make test": COMPOSE,  # this suite is what it runs
    "python datasets/make_shapes.py --out data/shapes --train 3000 --val 300 --test 300 --seed 0": RUN,
    "python datasets/flickr8k_to_coco.py --captions data/flickr8k/text/Flickr8k.token.txt "
    "--splits-dir data/flickr8k/text --out data/flickr8k": RUN,
    "python datasets/karpathy_to_coco.py data/coco/dataset_coco.json --out data/coco --restval-into-train": RUN,
    "python datasets/download_coco.py --root data/coco --dry-run": RUN,
    "python datasets/download_coco.py --root data/coco": COMPOSE,  # 20 GB of downloads
    "captioning-train": RUN,
    "captioning-train +experiment=demo": RUN,
    "captioning-train +experiment=fc_recipe hydra.run.dir=runs/fc_recipe": RUN,
    "captioning-caption checkpoint=runs/fc_recipe/checkpoints/best.pt images=data/shapes/demo_images "
    "output=runs/fc_recipe/gallery decode.beam_size=3 decode.block_ngram_repeat=3": RUN,
    "captioning-train +experiment=fc_recipe encoder.finetune_from_epoch=20 encoder.finetune_blocks=3 "
    "optim.encoder_lr=1e-5 hydra.run.dir=runs/fc_finetune": RUN,
    "captioning-train -m +experiment=demo seed=0,1,2 trainer.precision=fp32,bf16 trainer.tensorboard=false "
    "hydra.sweep.dir=multirun/demo_precision": RUN,
    "captioning-train -m dataset=shapes_shifted seed=0,1,2 trainer.precision=fp32,bf16 trainer.tensorboard=false "
    "hydra.sweep.dir=multirun/shifted_precision": RUN,
    "captioning-report multirun/demo_precision --output multirun/demo_precision/report.md": RUN,
    "captioning-report multirun/shifted_precision --output multirun/shifted_precision/report.md": RUN,
    "captioning-train decoder.cell=gru decoder.inject=par optim=adamw trainer.max_epochs=20": RUN,
    "captioning-train -m decoder.cell=rnn,lstm hydra.sweep.dir=multirun/cells": RUN,
    "captioning-report multirun/cells --output multirun/cells/report.md": RUN,
    "python datasets/make_shapes.py --out data/shapes_shifted --distractors 2 --shifted-style outline": RUN,
    "python datasets/make_icons.py --out data/icons": RUN,  # from the slice in tests/data/icons, offline
    "captioning-baseline dataset=shapes_shifted 'k=[1,5,10,25]'": RUN,
    "captioning-baseline dataset=shapes_shifted split=test_shifted 'k=[1,5,10,25]'": RUN,
    "captioning-baseline dataset=icons split=test_shifted 'k=[1,5,10,25]'": RUN,
    # The icons / shapes_shifted study (README "Beating retrieval"): 3-seed sweeps of full runs, composed here
    **{f"captioning-train -m dataset={data} seed=0,1,2 {factor}trainer.threads=1 trainer.tensorboard=false hydra.sweep.dir=multirun/{name}": COMPOSE
       for data, factor, name in [
           ("icons", "trainer.max_epochs=15 trainer.patience=4 decode=greedy ", "icons_old_default"),
           ("icons", "", "icons_default"),
           ("icons", "trainer.label_smoothing=0.1 ", "icons_label_smoothing"),
           ("shapes_shifted", "trainer.label_smoothing=0.1 ", "shapes_label_smoothing"),
           ("shapes_shifted", "trainer.max_epochs=50 trainer.patience=5 decode=greedy ", "shapes_budget50"),
           ("shapes_shifted", "", "shapes_default")]},
    **{f"for s in 0 1 2; do captioning-train dataset=icons seed=$s "
       f"trainer.resume=multirun/icons_default/$s/checkpoints/last.pt {option} trainer.threads=1 trainer.tensorboard=false "
       f"hydra.run.dir=multirun/icons_decode/{name}_s$s; done": COMPOSE
       for option, name in [("decode=greedy", "greedy"), ("decode.length_penalty=none", "no_penalty"),
                            ("decode.beam_size=5", "beam5"), ("decode.length_penalty=wu", "wu")]},
    **{f"captioning-train -m dataset=icons seed=0 {factor} trainer.threads=1 trainer.tensorboard=false hydra.sweep.dir=multirun/{name}": COMPOSE
       for factor, name in [
           ("decoder.feature_norm=l2,layernorm decode=greedy trainer.max_epochs=15 trainer.patience=4", "screen_norm"),
           ("trainer.max_epochs=50 trainer.patience=5 decode=greedy", "screen_budget"),
           ("decoder.hidden_dim=1024 decoder.embed_dim=512 trainer.max_epochs=50 trainer.patience=5 decode=greedy",
            "screen_big"), ("decoder.feature_dropout=0.5", "screen_feature_dropout")]},
    "captioning-report multirun/icons_old_default multirun/icons_default --output icons_budget.md": COMPOSE,
    "captioning-report multirun/icons_default multirun/icons_label_smoothing --output icons_label_smoothing.md": COMPOSE,
    "captioning-train -m dataset=icons seed=0,1 decoder.embed_dropout=0.5 decoder.output_dropout=0.5 trainer.threads=1 "
    "trainer.tensorboard=false hydra.sweep.dir=multirun/icons_dropout": COMPOSE,
    "captioning-train -m dataset=icons seed=0,1,2 decoder=attention trainer.threads=1 trainer.tensorboard=false "
    "hydra.sweep.dir=multirun/icons_attention": COMPOSE,
    "captioning-report multirun/icons_label_smoothing multirun/icons_dropout multirun/icons_attention "
    "--output icons_attention.md": COMPOSE,
    "captioning-train dataset=icons decoder=attention +experiment=scst seed=0 "
    "trainer.init_from=multirun/icons_attention/0/checkpoints/best.pt trainer.threads=1 trainer.tensorboard=false "
    "hydra.run.dir=runs/icons_attention_scst": COMPOSE,
    "captioning-report multirun/shapes_default multirun/shapes_label_smoothing --output shapes_label_smoothing.md": COMPOSE,
    "captioning-train -m dataset=icons +experiment=scst seed=0 "
    "trainer.init_from=multirun/screen_budget/0/checkpoints/best.pt scst.baseline=greedy,mean "
    "optim.optimizer.lr=5e-5,5e-4 decode=greedy trainer.threads=1 trainer.tensorboard=false hydra.sweep.dir=multirun/screen_scst": COMPOSE,
    **{f"for s in {seeds}; do captioning-train -m dataset={data} +experiment=scst seed=$s "
       f"trainer.init_from=multirun/{data.split('_')[0]}_default/$s/checkpoints/best.pt optim.optimizer.lr=1e-4 "
       f"trainer.threads=1 trainer.tensorboard=false hydra.sweep.dir=multirun/{data.split('_')[0]}_scst_s$s; done": COMPOSE
       for data, seeds in (("shapes_shifted", "0 1 2"), ("icons", "1 2"))},
    **{f"for s in 0 1 2; do captioning-train -m dataset={data} +experiment=scst seed=$s "
       f"trainer.init_from=multirun/{data.split('_')[0]}_label_smoothing/$s/checkpoints/best.pt "
       f"trainer.threads=1 trainer.tensorboard=false hydra.sweep.dir=multirun/{data.split('_')[0]}_ls_scst_s$s; done": COMPOSE
       for data in ("icons", "shapes_shifted")},
    **{f"for s in 0 1 2; do captioning-train -m dataset=icons +experiment=scst {option} seed=$s "
       f"trainer.init_from=multirun/icons_label_smoothing/$s/checkpoints/best.pt trainer.threads=1 "
       f"trainer.tensorboard=false hydra.sweep.dir=multirun/icons_ls_scst_{name}_s$s; done": COMPOSE
       for option, name in (("scst.samples=10", "samples10"), ("scst.top_k=5", "topk5"))},
    "captioning-report multirun/icons_label_smoothing "
    + " ".join(f"multirun/icons_ls_scst_{v}s{s}" for v in ("", "samples10_", "topk5_") for s in range(3))
    + " --output icons_scst_options.md": COMPOSE,
    **{f"captioning-report multirun/{d}_label_smoothing multirun/{d}_ls_scst_s0 multirun/{d}_ls_scst_s1 "
       f"multirun/{d}_ls_scst_s2 --output {d}_ls_scst.md": COMPOSE for d in ("icons", "shapes")},
    "captioning-train -m dataset=icons +experiment=scst seed=0 trainer.init_from=multirun/icons_default/0/checkpoints/best.pt "
    "optim.optimizer.lr=2e-4,1e-4 trainer.threads=1 trainer.tensorboard=false hydra.sweep.dir=multirun/icons_scst_lr": COMPOSE,
    "captioning-report multirun/shapes_default multirun/shapes_scst_s0 multirun/shapes_scst_s1 multirun/shapes_scst_s2 "
    "--output shapes_scst.md": COMPOSE,
    "captioning-report multirun/icons_default multirun/icons_scst_lr multirun/icons_scst_s1 multirun/icons_scst_s2 "
    "--output icons_scst.md": COMPOSE,
    "captioning-report multirun/icons_default multirun/icons_decode --output icons_decode.md": COMPOSE,
    "captioning-report multirun/icons_default multirun/icons_decode multirun/screen_feature_dropout "
    "--output icons_decode_now.md": COMPOSE,
    **{f"for split in test test_shifted; do captioning-caption 'checkpoint=[{','.join(members)}]' "
       f"images=data/icons/images/$split references=data/icons/captions_$split.json output=runs/{out}/$split; done": COMPOSE
       for members, out in (([f"multirun/icons_default/{s}/checkpoints/best.pt" for s in range(3)], "icons_ensemble"),
                            (["multirun/icons_scst_lr/1/checkpoints/best.pt", "multirun/icons_scst_s1/0/checkpoints/best.pt",
                              "multirun/icons_scst_s2/0/checkpoints/best.pt"], "icons_scst_ensemble"))},
    "captioning-report multirun/shapes_budget50 multirun/shapes_default --output shapes_budget.md": COMPOSE,
    "captioning-report multirun/screen_budget multirun/screen_big multirun/screen_norm --output screen.md": COMPOSE,
    **{f"captioning-train -m dataset=shapes_shifted seed=0,1,2 {factor} trainer.tensorboard=false "
       f"hydra.sweep.dir=multirun/{name}": COMPOSE  # the study: 24 full training runs (each composed here)
       for factor, name in [("decoder.feature_norm=none,l2,layernorm", "feature_norm"),
                            ("decoder.embed_dropout=0 decoder.output_dropout=0", "no_dropout"),
                            ("decoder.feature_dropout=0.3", "feature_dropout"), ("optim=adamw", "adamw"),
                            ("trainer.label_smoothing=0.1", "label_smoothing"),
                            ("trainer.select_on=bleu4", "select_bleu4")]},
    "captioning-train decoder=attention hydra.run.dir=runs/attention": RUN,
    "captioning-caption checkpoint=runs/attention/checkpoints/best.pt images=data/shapes/demo_images "
    "output=runs/attention/gallery with_attention=true": RUN,
    "captioning-train -m dataset=shapes_shifted seed=0,1,2 decoder.inject=init,pre,par decoder.cell=rnn,gru "
    "trainer.max_epochs=8 trainer.tensorboard=false hydra.sweep.dir=multirun/conditioning": COMPOSE,  # 18 full runs
    "captioning-train -m dataset=shapes_shifted seed=0,1,2 decoder.inject=init,pre,par decoder.cell=lstm "
    "trainer.max_epochs=8 trainer.tensorboard=false hydra.sweep.dir=multirun/conditioning_lstm": COMPOSE,  # 9 runs
    "captioning-train -m dataset=shapes_shifted seed=0,1,2 decoder=attention trainer.max_epochs=8 "
    "trainer.tensorboard=false hydra.sweep.dir=multirun/conditioning_attention": COMPOSE,  # 3 full runs
    "captioning-report multirun/conditioning multirun/conditioning_lstm multirun/conditioning_attention "
    "--scores bleu1,bleu2,bleu3,bleu4,cider --output conditioning.md": COMPOSE,  # reads the study's runs
    "captioning-train +experiment=scst trainer.init_from=runs/demo/checkpoints/best.pt "
    "hydra.run.dir=runs/demo_scst": RUN,
    **{f"captioning-train dataset=shapes_shifted +experiment=scst seed={s} "
       f"trainer.init_from=multirun/feature_norm/{3 * s}/checkpoints/best.pt trainer.tensorboard=false "
       f"hydra.run.dir=runs/scst_s{s}": COMPOSE for s in range(3)},  # 3 full runs from the study's checkpoints
    "captioning-report multirun/feature_norm/0 multirun/feature_norm/3 multirun/feature_norm/6 runs/scst_s0 "
    "runs/scst_s1 runs/scst_s2 --scores bleu1,bleu2,bleu3,bleu4,cider --output scst.md": COMPOSE,  # the runs above
    "captioning-report multirun/feature_norm multirun/no_dropout multirun/feature_dropout multirun/adamw "
    "multirun/label_smoothing multirun/select_bleu4 --output study.md": COMPOSE,  # reads the study's runs
    "captioning-train dataset=flickr8k": RUN,
    "captioning-train dataset=coco_karpathy encoder=resnet101": COMPOSE,  # downloads ResNet-101's weights
    "captioning-train dataset=coco dataset.train.annotations=data/coco/captions_train.json "
    "dataset.train.images=data/coco/images dataset.val.annotations=data/coco/captions_val.json "
    "dataset.val.images=data/coco/images dataset.test.annotations=data/coco/captions_test.json "
    "dataset.test.images=data/coco/images": RUN,
    "captioning-train trainer.resume=runs/demo/checkpoints/last.pt trainer.max_epochs=8": RUN,
    "captioning-train --help": RUN,
    "torchrun --standalone --nproc_per_node=4 --no-python captioning-train dataset=coco_karpathy "
    "hydra.run.dir=runs/coco_ddp": RUN,  # 2 CPU processes
    "torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HEAD_NODE:29500 "
    "--rdzv_id=coco42 --no-python captioning-train dataset=coco_karpathy hydra.run.dir=/shared/runs/coco "
    "cache_dir=/shared/cache/features": COMPOSE,  # two nodes
    "captioning-train -m hydra/launcher=slurm hydra.launcher.partition=gpu decoder.cell=rnn,lstm,gru "
    "optim=adam,adamw": COMPOSE,  # SLURM
    "captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=~/photos output=~/photos_captions": RUN,
    "captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=~/photos output=~/photos_captions "
    "decode=greedy": RUN,
    "captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=~/photos output=~/photos_captions "
    "decode.beam_size=5 batch_size=64 num_workers=4": RUN,
    "captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=~/photos output=~/photos_captions "
    "decode.block_ngram_repeat=3 decode.suppress_unk=true decode.length_penalty=wu": RUN,
    "captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=~/photos output=~/photos_captions "
    "decode.beam_size=6 decode.beam_groups=3 decode.num_return=3": RUN,
    "captioning-train +experiment=demo decoder.cell=gru hydra.run.dir=runs/demo_gru": RUN,
    "captioning-caption 'checkpoint=[runs/demo/checkpoints/best.pt,runs/demo_gru/checkpoints/best.pt]' "
    "images=~/photos output=~/photos_ensemble": RUN,
    "captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=~/photos output=~/photos_captions "
    "device=cuda": COMPOSE,  # no GPU here
    "captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=data/shapes/images/test "
    "output=runs/demo/errors references=data/shapes/captions_test.json": RUN,
    "captioning-eval annotations=data/shapes/captions_test.json results=runs/demo/test_captions.json": RUN,
    "captioning-eval annotations=data/shapes/captions_test.json results=runs/demo/test_captions.json "
    "output=scores.json": RUN,
    "captioning-eval annotations=data/shapes/captions_test.json results=runs/demo/test_captions.json "
    "metrics=[bleu,meteor,rouge_l,cider]": RUN,
    "captioning-eval annotations=data/shapes/captions_test.json results=runs/demo/test_captions.json "
    "allow_subset=true bleu.flavour=nltk": RUN,
    "captioning-eval --help": RUN,
    "captioning-gradflow": RUN,
    "captioning-gradflow seq_len=200 'cells=[rnn,lstm]' seeds='[0,1,2,3,4]' init=orthogonal forget_bias=0": RUN,
    "captioning-lm": RUN,
    "captioning-lm text_file=book.txt tbptt.steps=128 model.cell=gru trainer.max_epochs=5": RUN,
    "captioning-lm init_from=runs/lm/flickr8k_steps32/checkpoints/best.pt trainer.max_epochs=0 "
    "'sample.temperatures=[0.3,1.5]'": RUN,
    "xzcat tests/data/flickr8k/Flickr8k.token.txt.xz | cut -f2 > data/flickr8k_captions.txt": RUN,
    "for s in 8 32 128; do captioning-lm text_file=data/flickr8k_captions.txt max_chars=200000 tbptt.steps=$s "
    "trainer.max_epochs=10 sample.prime=A hydra.run.dir=runs/lm/flickr8k_steps$s; done": RUN,
    "captioning-bench encoder": RUN,
    "captioning-bench encoder --images data/shapes/images/val --limit 200 --repeats 2": RUN,
    "captioning-bench decoder": RUN,
    "captioning-bench finetune": RUN,
    "captioning-bench caption": RUN,
    "captioning-bench allocator": RUN,
    "captioning-bench scale": RUN,
    "captioning-bench finetune --blocks 3 6 --repeats 3": RUN,
    "captioning-bench finetune --blocks 3 6 --repeats 3 --precision bf16": RUN,
    "captioning-bench beam --repeats 3": RUN,
    "captioning-bench beam --repeats 3 --precision auto": RUN,
    "captioning-bench beam --repeats 3 --checkpoint runs/demo/checkpoints/best.pt --folder data/shapes/images/test": RUN,
    "captioning-bench beam --repeats 3 --checkpoint runs/demo/checkpoints/best.pt --folder data/shapes/images/test "
    "--precision auto": RUN,
    "captioning-bench caption --checkpoint runs/demo/checkpoints/best.pt --images data/shapes/images/train "
    "--limit 3000": RUN,
    "captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=data/shapes/images/test "
    "output=runs/demo/test_fp32 references=data/shapes/captions_test.json precision=fp32": RUN,
    "captioning-caption checkpoint=runs/demo/checkpoints/best.pt images=data/shapes/images/test "
    "output=runs/demo/test_auto references=data/shapes/captions_test.json": RUN,
    "captioning-bench scale --steps 300": RUN,
    "captioning-bench scale --steps 300 --precision fp32": RUN,
    "OMP_NUM_THREADS=1 captioning-bench beam --repeats 3": RUN,
    "captioning-bench eval": RUN,
    "captioning-bench data": RUN,
    "captioning-bench all": COMPOSE,  # minutes: every benchmark at full size
    "make bench": COMPOSE,
}


def strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a # at the start or after a blank, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def readme_commands(text: str) -> list[str]:
    """Every command in the ```bash blocks: continuation lines joined, comments dropped, blanks squeezed."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(strip_comment(line).split())
            if line:
                commands.append(line)
    return commands


def test_every_readme_command_is_covered():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) > 20
    uncovered = [c for c in commands if c not in COVERAGE]
    assert not uncovered, f"README commands with no entry in COVERAGE (run or compose them here): {uncovered}"
    stale = [c for c in COVERAGE if c not in commands]
    assert not stale, f"COVERAGE entries no longer in README: {stale}"


def test_the_configuration_table_names_real_fields():
    """Each row of the Configuration table names a schema that exists, and lists (after "fields") only fields the
    schema has."""
    import captioning.config
    import captioning.run_config

    rows = [line for line in README.read_text(encoding="utf-8").splitlines()
            if line.startswith("| `") and "schema `" in line]
    assert len(rows) >= 5 and sum("fields" in row for row in rows) >= 2
    for row in rows:
        name = re.search(r"schema `(\w+)`", row)[1]
        schema = getattr(captioning.config, name, None) or getattr(captioning.run_config, name)
        if "fields" in row:
            fields = {f.name for f in dataclasses.fields(schema)}
            listed = set(re.findall(r"`([a-z_0-9]+)`", row.split("fields", 1)[1]))
            assert listed and listed <= fields, f"{row[:40]}...: not fields: {sorted(listed - fields)}"


def test_comment_and_continuation_parsing():
    text = "```bash\ncaptioning-x a=1 \\\n    b='#not' # note\n# only a comment\n\n```\n```python\nx = 1\n```\n"
    assert readme_commands(text) == ["captioning-x a=1 b='#not'"]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, flickr8k_release, reference_data) -> dict:
    """A folder laid out like the repository root with README's inputs in place, and the wrapper folder."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("datasets", "tests", "captioning", "conf", "Makefile", "setup.cfg", "pyproject.toml"):
        (root / name).symlink_to(REPO / name)
    flickr = root / "data" / "flickr8k"
    flickr.mkdir(parents=True)
    for name in ("text", "Flicker8k_Dataset"):  # README: the release unpacked into data/flickr8k
        (flickr / name).symlink_to(flickr8k_release / name, target_is_directory=True)
    lines = (reference_data / "flickr8k" / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    karpathy_file(root / "data" / "coco" / "dataset_coco.json", [ln.split("\t")[1] for ln in lines[:70]])
    (root / "book.txt").write_text("\n".join(ln.split("\t")[1] for ln in lines[:400]), encoding="utf-8")
    home = root / "home"
    (home / "photos" / "holiday").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (60 * i, 120, 200 - 50 * i)).save(home / "photos" / "holiday" / f"{i}.jpg")
    shims = root / "shimvenv" / "bin"
    shims.mkdir(parents=True)
    for program in SHIMMED:
        wrapper = shims / program
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "readme_shim.py"}" {program} "$@"\n')
        wrapper.chmod(0o755)
    (root / "tmp").mkdir()  # TMPDIR: what the commands leave there (torchrun's folders) goes with the sandbox
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(root / "tmp"),
           "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}",
           "README_REAL_BIN": str(Path(sys.executable).parent), "README_SHIM_VENV": str(shims.parent),
           "README_REAL_MAKE": shutil.which("make"), "PYTHONUNBUFFERED": "1", "HEAD_NODE": "localhost"}
    return {"root": root, "env": env}


def run_command(command: str, sandbox: dict) -> str | None:
    """Run one README command in the sandbox; None, or what went wrong."""
    env = {**sandbox["env"], "README_MODE": COVERAGE[command]}
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=sandbox["root"], env=env,
                          capture_output=True, text=True, timeout=600)
    print(f"{time.perf_counter() - start:5.1f} s  {COVERAGE[command]:7}  {command}")  # shown with pytest -s
    if proc.returncode != 0 or "Traceback" in proc.stderr:
        return f"$ {command}  [{COVERAGE[command]}, exit {proc.returncode}]\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return None


LECTURE = "## The lecture's ideas"  # from this section on, the commands need only what `make demo` made


@pytest.mark.slow
def test_every_readme_command_runs_or_composes(sandbox):
    """In README order. The first command (`make demo`) runs alone; then two lanes run side by side, each in
    order: the sections before the lecture's tools, and the lecture's tools and benchmarks. Most commands
    spend their time starting Python and torch on one core: two lanes halve the wait on two."""
    text = README.read_text(encoding="utf-8")
    first, *rest = readme_commands(text)
    lanes = (readme_commands(text[:text.index(LECTURE)])[1:], readme_commands(text[text.index(LECTURE):]))
    assert first == "make demo" and [*lanes[0], *lanes[1]] == rest
    failures = [run_command(first, sandbox)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for lane in pool.map(lambda commands: [run_command(c, sandbox) for c in commands], lanes):
            failures += lane
    failures = [f for f in failures if f]
    assert not failures, "\n\n".join(failures)
