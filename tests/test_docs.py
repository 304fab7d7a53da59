"""The README and the manual (docs/) under test: every shell command in their ```bash blocks runs (at tiny size)
or, where it cannot run offline on a CPU, composes; every ```python block runs; the configuration reference is what
the code generates; `mkdocs build --strict` builds the site.

The commands run verbatim in bash, in the pages' order (README, then docs/ in mkdocs.yml's nav; a later command may
use what an earlier one made, as a reader's would), each distinct command once, in a sandbox that looks like the
repository root: datasets/, tests/, Makefile, the Flickr8k release and a Karpathy COCO file unpacked where the Data
page says, a few photos in ~/photos. The programs they call are wrappers (tests/readme_shim.py) that append tiny
sizes, or compose instead of running. COVERAGE says which, for each command: a command added to a page without an
entry here fails. A Python block runs as it is, unless its first line says what it needs that a CPU offline lacks
(`# needs: the network ...`, `# needs: a GPU ...`): then it is only compiled.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from PIL import Image

from captioning.cli.reference import trailing_comment
from test_real_layouts import karpathy_file

REPO = Path(__file__).resolve().parents[1]
SHIMMED = ["captioning-train", "captioning-eval", "captioning-caption", "captioning-gradflow", "captioning-lm",
           "captioning-bench", "captioning-baseline", "captioning-report", "torchrun", "python", "make"]


def nav_pages(nav: list) -> list[str]:
    """The pages of mkdocs.yml's nav, in order."""
    pages = []
    for entry in nav:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


NAV = nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
PAGES = [REPO / "README.md", *(REPO / "docs" / page for page in NAV)]
# The second lane: pages whose commands need only what `make demo` made (see test_every_docs_command_runs).
SECOND_LANE = ("lecture.md", "performance.md", "experiments/bf16-vs-fp32.md")

RUN, COMPOSE = "run", "compose"
PREVIOUS = "trainer.label_smoothing=0 decode=greedy trainer.max_epochs=15 trainer.patience=4"  # the 15-epoch defaults
# Every command of the pages' bash blocks, and how it is covered. COMPOSE only where running is impossible here.
COVERAGE = {
    "make demo": RUN,
    "make test": COMPOSE,  # this suite is what it runs
    "make install": COMPOSE,  # the suite runs in what it installed
    "make docs": COMPOSE,  # test_the_configuration_reference_is_generated_from_the_code and test_mkdocs_build_strict
    # README's tour: the demo's shapes files stand in for a user's COCO-format folder
    "captioning-train dataset=coco dataset.train.annotations=data/shapes/captions_train.json "
    "dataset.train.images=data/shapes/images/train dataset.val.annotations=data/shapes/captions_val.json "
    "dataset.val.images=data/shapes/images/val dataset.test.annotations=data/shapes/captions_test.json "
    "dataset.test.images=data/shapes/images/test hydra.run.dir=runs/my_data": RUN,
    "captioning-caption checkpoint=runs/my_data/checkpoints/best.pt images=~/photos output=~/photos_captions": RUN,
    "captioning-eval annotations=data/shapes/captions_test.json results=runs/my_data/test_captions.json": RUN,
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
    # The icons / shapes_shifted study (docs/experiments/): 3-seed sweeps of full runs, composed here
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
    "captioning-train -m dataset=shapes_shifted seed=0,1,2 decoder=attention trainer.threads=1 trainer.tensorboard=false "
    "hydra.sweep.dir=multirun/shapes_attention": COMPOSE,
    "captioning-report multirun/shapes_label_smoothing multirun/shapes_attention --output shapes_attention.md": COMPOSE,
    "captioning-train dataset=icons decoder=attention +experiment=scst seed=0 "
    "trainer.init_from=multirun/icons_attention/0/checkpoints/best.pt trainer.threads=1 trainer.tensorboard=false "
    "hydra.run.dir=runs/icons_attention_scst": COMPOSE,
    **{"captioning-train dataset=icons decoder=attention +experiment=scst seed=0 "
       f"trainer.init_from=multirun/icons_attention/0/checkpoints/best.pt {option} trainer.threads=1 "
       f"trainer.tensorboard=false hydra.run.dir=runs/icons_attention_scst_{name}": COMPOSE
       for option, name in (("optim.optimizer.lr=1e-7 trainer.max_epochs=1", "lr1e-7"),
                            ("optim.optimizer.lr=2e-5", "lr2e-5"))},
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
    **{f"for s in 0 1 2; do captioning-train -m dataset={data} +experiment=scst scst.temperature=0.5 seed=$s "
       f"trainer.init_from=multirun/{data.split('_')[0]}_label_smoothing/$s/checkpoints/best.pt trainer.threads=1 "
       f"trainer.tensorboard=false hydra.sweep.dir=multirun/{data.split('_')[0]}_ls_scst_temp05_s$s; done": COMPOSE
       for data in ("icons", "shapes_shifted")},
    **{f"captioning-report multirun/{d}_label_smoothing "
       + " ".join(f"multirun/{d}_ls_scst_{v}s{s}" for v in ("", "temp05_") for s in range(3))
       + f" --output {d}_scst_temperature.md": COMPOSE for d in ("icons", "shapes")},
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
    # The retrieval fallback, capacity and SCST from the current defaults (retrieval-fallback.md, capacity.md,
    # scst.md): 3 seeds per set
    **{cmd: COMPOSE for d, short in (("icons", "icons"), ("shapes_shifted", "shapes")) for cmd in (
        f"for s in 0 1 2; do captioning-train dataset={d} seed=$s trainer.threads=1 trainer.tensorboard=false "
        f"hydra.run.dir=multirun/{d}_default_now/$s; done",
        f"captioning-report multirun/{d}_default_now --output {short}_fallback.md",
        f"for s in 0 1 2; do for q in 0.01 0.02 0.1; do for split in test test_shifted; do captioning-baseline dataset={d} "
        f"split=$split checkpoint=multirun/{d}_default_now/$s/checkpoints/best.pt fallback=$q 'k=[10]' "
        f"output=multirun/qsweep/{d}/$s/q$q/$split; done; done; done",
        f"for s in 0 1 2; do captioning-train dataset={d} seed=$s decoder.hidden_dim=1024 decoder.embed_dim=512 "
        f"trainer.threads=1 trainer.tensorboard=false hydra.run.dir=multirun/{short}_big/$s; done",
        f"captioning-report multirun/{d}_default_now multirun/{short}_big --output {short}_capacity.md",
        f"for s in 0 1 2; do captioning-train dataset={d} +experiment=scst seed=$s "
        f"trainer.init_from=multirun/{d}_default_now/$s/checkpoints/best.pt trainer.threads=1 trainer.tensorboard=false "
        f"hydra.run.dir=multirun/{d}_scst_now/$s; done",
        f"captioning-report multirun/{d}_default_now multirun/{d}_scst_now --output {short}_scst_now.md",
        f"for s in 0 1 2; do captioning-train dataset={d} +experiment=scst seed=$s "
        f"trainer.init_from=multirun/{d}_default_now/$s/checkpoints/best.pt trainer.threads=1 trainer.tensorboard=false "
        f"hydra.run.dir=multirun/{d}_scst_e0/$s; done",
        f"captioning-report multirun/{d}_default_now multirun/{d}_scst_e0 --output {d}_scst_e0.md")},
    "for s in 0 1 2; do captioning-train dataset=shapes_shifted +experiment=scst seed=$s "
    "trainer.init_from=multirun/shapes_shifted_default_now/$s/checkpoints/best.pt scst.xe_weight=1 trainer.threads=1 "
    "trainer.tensorboard=false hydra.run.dir=multirun/shapes_shifted_scst_xe1/$s; done": COMPOSE,
    "captioning-report multirun/shapes_shifted_default_now multirun/shapes_shifted_scst_e0 "
    "multirun/shapes_shifted_scst_xe1 --output shapes_shifted_scst_xe1.md": COMPOSE,
    # SCST on the training images cross-entropy left to it (training.md, scst.md)
    "captioning-train dataset=shapes_shifted scst.holdout=0.2 hydra.run.dir=runs/xe_held": COMPOSE,
    "captioning-train dataset=shapes_shifted +experiment=scst scst.holdout=0.2 trainer.max_epochs=15 "
    "trainer.init_from=runs/xe_held/checkpoints/best.pt hydra.run.dir=runs/scst_held": COMPOSE,
    **{cmd: COMPOSE for d, short in (("icons", "icons"), ("shapes_shifted", "shapes")) for cmd in (
        f"for s in 0 1 2; do captioning-train dataset={d} scst.holdout=0.2 seed=$s trainer.threads=1 "
        f"trainer.tensorboard=false hydra.run.dir=multirun/{short}_hoxe/$s; done",
        f"for s in 0 1 2; do captioning-train dataset={d} +experiment=scst scst.holdout=0.2 trainer.max_epochs=15 "
        f"seed=$s trainer.init_from=multirun/{short}_hoxe/$s/checkpoints/best.pt trainer.threads=1 "
        f"trainer.tensorboard=false hydra.run.dir=multirun/{short}_hoscst/$s; done",
        f"captioning-report multirun/{short}_hoxe multirun/{short}_hoscst --output {short}_holdout.md",
        f"for s in 0 1 2; do captioning-train dataset={d} +experiment=scst scst.holdout=0.2 trainer.max_epochs=15 "
        f"optim.optimizer.lr=3e-5 seed=$s trainer.init_from=multirun/{short}_hoxe/$s/checkpoints/best.pt "
        f"trainer.threads=1 trainer.tensorboard=false hydra.run.dir=multirun/{short}_hoscst_lr3e-5/$s; done",
        f"captioning-report multirun/{short}_hoxe multirun/{short}_hoscst_lr3e-5 --output {short}_holdout_lr.md")},
    # the setting that loses least (scst.md)
    **{f"for s in 0 1 2; do captioning-train dataset={d} +experiment=scst scst.xe_weight=0 optim.optimizer.lr=3e-5 "
       f"seed=$s trainer.init_from=multirun/{start}/$s/checkpoints/best.pt trainer.threads=1 "
       f"trainer.tensorboard=false hydra.run.dir=multirun/{short}_scst_e0_lr3e-5/$s; done": COMPOSE
       for d, start, short in (("icons", "icons_default_now", "icons"),
                               ("shapes_shifted", "shapes_shifted_default_now", "shapes"))},
    "for s in 0 1 2; do captioning-train dataset=icons +experiment=scst scst.xe_weight=1 seed=$s "
    "trainer.init_from=multirun/icons_default_now/$s/checkpoints/best.pt trainer.threads=1 trainer.tensorboard=false "
    "hydra.run.dir=multirun/icons_scst_e0_xe1/$s; done": COMPOSE,
    "captioning-report multirun/icons_default_now multirun/icons_scst_e0 multirun/icons_scst_e0_lr3e-5 "
    "multirun/icons_scst_e0_xe1 --output icons_scst_least.md": COMPOSE,
    "captioning-report multirun/shapes_shifted_default_now multirun/shapes_shifted_scst_e0 "
    "multirun/shapes_scst_e0_lr3e-5 multirun/shapes_shifted_scst_xe1 --output shapes_scst_least.md": COMPOSE,
    # the fallback on a folder of real icons (captioning.md)
    "captioning-train dataset=icons seed=0 trainer.tensorboard=false hydra.run.dir=multirun/icons_fallback_cli/0": COMPOSE,
    "captioning-caption checkpoint=multirun/icons_fallback_cli/0/checkpoints/best.pt "
    "fallback=multirun/icons_fallback_cli/0/retrieval.pt images=data/icons/images/test_shifted "
    "references=data/icons/captions_test_shifted.json output=runs/icons_fallback": COMPOSE,
    # SCST's settings on the icons' seed-1 checkpoint, and its captions by decoding (scst.md)
    **{f"captioning-train dataset=icons seed=1 +experiment=scst "
       f"trainer.init_from=multirun/icons_default_now/1/checkpoints/best.pt {setting} trainer.threads=1 "
       f"trainer.tensorboard=false hydra.run.dir=multirun/icons_scst_{name}/1": COMPOSE
       for setting, name in (("optim.optimizer.lr=3e-5", "lr3e-5"), ("optim.optimizer.lr=1e-5", "lr1e-5"),
                             ("scst.xe_weight=1", "xe1"), ("scst.xe_weight=4", "xe4"))},
    **{f"captioning-caption checkpoint=multirun/icons_{run}/1/checkpoints/best.pt images=data/icons/images/val "
       f"references=data/icons/captions_val.json output=runs/icons_val_{short} decode=greedy num_workers=0 threads=1":
       COMPOSE for run, short in (("default_now", "xe"), ("scst_now", "scst"))},
    "captioning-report multirun/screen_budget multirun/screen_big multirun/screen_norm --output screen.md": COMPOSE,
    **{f"captioning-train -m dataset=shapes_shifted seed={seeds} {factor} trainer.tensorboard=false "
       f"hydra.sweep.dir=multirun/{name}": COMPOSE  # the study: 20 full training runs (each composed here)
       for seeds, factor, name in [
           ("0,1,2", f"{PREVIOUS} decoder.feature_norm=none,l2,layernorm", "feature_norm"),
           ("0", f"{PREVIOUS} decoder.embed_dropout=0 decoder.output_dropout=0", "no_dropout"),
           ("0,1,2", f"{PREVIOUS} decoder.feature_dropout=0.3", "feature_dropout"),
           ("0,1,2", f"{PREVIOUS} optim=adamw", "adamw"),
           ("0,1,2", "decode=greedy trainer.max_epochs=15 trainer.patience=4 trainer.label_smoothing=0.1",
            "label_smoothing"),
           ("0", f"{PREVIOUS} trainer.select_on=bleu4", "select_bleu4")]},
"captioning-train decoder=attention hydra.run.dir=runs/attention": RUN,
    "captioning-caption checkpoint=runs/attention/checkpoints/best.pt images=data/shapes/demo_images "
    "output=runs/attention/gallery with_attention=true": RUN,
    "captioning-train -m dataset=shapes_shifted seed=0,1,2 trainer.label_smoothing=0 decode=greedy decoder.inject=init,pre,par decoder.cell=rnn,gru "
    "trainer.max_epochs=8 trainer.tensorboard=false hydra.sweep.dir=multirun/conditioning": COMPOSE,  # 18 full runs
    "captioning-train -m dataset=shapes_shifted seed=0,1,2 trainer.label_smoothing=0 decode=greedy decoder.inject=init,pre,par decoder.cell=lstm "
    "trainer.max_epochs=8 trainer.tensorboard=false hydra.sweep.dir=multirun/conditioning_lstm": COMPOSE,  # 9 runs
    "captioning-train -m dataset=shapes_shifted seed=0,1,2 trainer.label_smoothing=0 decode=greedy decoder=attention trainer.max_epochs=8 "
    "trainer.tensorboard=false hydra.sweep.dir=multirun/conditioning_attention": COMPOSE,  # 3 full runs
    "captioning-report multirun/conditioning multirun/conditioning_lstm multirun/conditioning_attention "
    "--scores bleu1,bleu2,bleu3,bleu4,cider --output conditioning.md": COMPOSE,  # reads the study's runs
    "captioning-train +experiment=scst trainer.init_from=runs/demo/checkpoints/best.pt "
    "hydra.run.dir=runs/demo_scst": RUN,
    **{f"captioning-train dataset=shapes_shifted +experiment=scst scst.baseline=greedy optim.optimizer.lr=5e-5 "
       f"trainer.max_epochs=10 decode=greedy seed={s} "
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
    "captioning-caption checkpoint=runs/demo/checkpoints/best.pt fallback=runs/demo/retrieval.pt "
    "images=data/shapes/images/test output=runs/demo/fallback references=data/shapes/captions_test.json": RUN,
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
    "captioning-bench projection": RUN,
    "captioning-bench all": COMPOSE,  # minutes: every benchmark at full size
    "make gpu-check": COMPOSE,  # no GPU here: tests/test_bench.py checks its one line without CUDA
    "captioning-bench gpu": COMPOSE,
    "make bench": COMPOSE,
}


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced ```bash and ```python block, in order."""
    return re.findall(r"^```(bash|python)\n(.*?)^```", text, flags=re.S | re.M)


def readme_commands(text: str) -> list[str]:
    """Every command in the ```bash blocks: continuation lines joined, comments dropped, blanks squeezed."""
    commands = []
    for language, block in blocks(text):
        if language == "bash":
            for line in block.replace("\\\n", " ").splitlines():
                line = " ".join(trailing_comment(line)[0].split())
                if line:
                    commands.append(line)
    return commands


def page_items(page: Path) -> list[tuple[str, str]]:
    """("bash", command) and ("python", block) of one page, in its order."""
    items = []
    for language, block in blocks(page.read_text(encoding="utf-8")):
        items += ([("bash", c) for c in readme_commands(f"```bash\n{block}```\n")] if language == "bash"
                  else [("python", block)])
    return items


def all_commands() -> list[str]:
    return [c for page in PAGES for kind, c in page_items(page) if kind == "bash"]


def needs(block: str) -> str | None:
    """What a Python block says it needs beyond a CPU offline (its first line `# needs: ...`), or None."""
    match = re.match(r"# needs: (.+)", block)
    return match[1] if match else None


def test_every_command_is_covered():
    commands = all_commands()
    assert len(commands) > 20
    uncovered = [c for c in commands if c not in COVERAGE]
    assert not uncovered, f"commands in the pages with no entry in COVERAGE (run or compose them here): {uncovered}"
    stale = [c for c in COVERAGE if c not in commands]
    assert not stale, f"COVERAGE entries no longer in any page: {stale}"


def test_every_page_is_in_the_nav_and_the_readme_is_short():
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages == set(NAV), f"pages not in mkdocs.yml's nav: {sorted(pages - set(NAV))}; missing: {sorted(set(NAV) - pages)}"
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_python_blocks_compile_and_say_what_they_need():
    python = [(page, block) for page in PAGES for kind, block in page_items(page) if kind == "python"]
    assert len(python) >= 3
    for page, block in python:
        compile(block, str(page), "exec")
        assert needs(block) is None or re.search(r"network|GPU", needs(block)), f"{page.name}: {needs(block)}"


def test_every_study_names_its_question_and_its_data():
    studies = [REPO / "docs" / page for page in NAV if page.startswith("experiments/")]
    assert len(studies) >= 8
    for page in studies:
        text = page.read_text(encoding="utf-8")
        assert "**Question.**" in text and "**Data.**" in text and "```bash" in text and "\n|---|" in text, page.name


def test_no_machine_paths_or_who_ran_it():
    """The repository speaks of the project: the hardware and the command, not where or by whom it ran."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for pattern in (r"/work/", r"/home/\w", r"\bsessions?\b", r"\blent\b"):
            assert not re.search(pattern, text, flags=re.I), f"{page.name}: {pattern}"


def test_the_configuration_reference_is_generated_from_the_code():
    from captioning.cli.reference import render

    page = REPO / "docs" / "reference" / "configuration.md"
    assert page.read_text(encoding="utf-8") == render(), \
        "docs/reference/configuration.md differs from the code: run `make docs` and commit it"


def test_every_configuration_key_has_a_default_and_a_meaning():
    text = (REPO / "docs" / "reference" / "configuration.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) > 100
    blank = [row.split(" | ")[0] for row in rows if row.rstrip().endswith("|  |")]
    assert not blank, f"keys without a meaning (comment the field or the yaml key): {blank}"
    for key in ("decode.beam_groups", "decode.diversity_lambda", "decode.num_return", "trainer.init_from",
                "trainer.select_on", "trainer.nonfinite", "trainer.scheduled_sampling.start_epoch", "scst.baseline",
                "baseline.k", "vocab.min_count", "cache_dir", "control", "optim.optimizer.lr"):
        assert f"| `{key}` |" in text, key


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8").count("load_captioner")


def test_comment_and_continuation_parsing():
    text = "```bash\ncaptioning-x a=1 \\\n    b='#not' # note\n# only a comment\n\n```\n```python\nx = 1\n```\n"
    assert readme_commands(text) == ["captioning-x a=1 b='#not'"]
    assert blocks(text)[1] == ("python", "x = 1\n")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, flickr8k_release, reference_data) -> dict:
    """A folder laid out like the repository root with the pages' inputs in place, and the wrapper folder."""
    root = tmp_path_factory.mktemp("docs")
    for name in ("datasets", "tests", "captioning", "conf", "Makefile", "setup.cfg", "pyproject.toml"):
        (root / name).symlink_to(REPO / name)
    flickr = root / "data" / "flickr8k"
    flickr.mkdir(parents=True)
    for name in ("text", "Flicker8k_Dataset"):  # the Data page: the release unpacked into data/flickr8k
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


def run_item(item: tuple[str, str], sandbox: dict) -> str | None:
    """Run one command (in bash, through the wrappers) or Python block (as it is) in the sandbox; None, or what
    went wrong."""
    kind, text = item
    if kind == "python":
        if needs(text):
            return None  # compiled by test_python_blocks_compile_and_say_what_they_need
        args, mode = [sys.executable, "-c", text], "python"
    else:
        args, mode = ["bash", "-o", "pipefail", "-c", text], COVERAGE[text]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=sandbox["root"], env={**sandbox["env"], "README_MODE": mode},
                          capture_output=True, text=True, timeout=600)
    print(f"{time.perf_counter() - start:5.1f} s  {mode:7}  {text.splitlines()[0]}")  # shown with pytest -s
    if proc.returncode != 0 or "Traceback" in proc.stderr:
        return f"$ {text}  [{mode}, exit {proc.returncode}]\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return None


def lanes() -> tuple[list, list]:
    """Every command and Python block after `make demo`, each command once, in two lanes: the pages of SECOND_LANE
    and all the others, each in page order."""
    seen, first, second = {"make demo"}, [], []
    for page in PAGES:
        lane = second if page.relative_to(REPO).as_posix().removeprefix("docs/") in SECOND_LANE else first
        for item in page_items(page):
            if item[0] == "python" or item[1] not in seen:
                seen.add(item[1])
                lane.append(item)
    return first, second


@pytest.mark.slow
def test_every_docs_command_runs_or_composes(sandbox):
    """`make demo` runs alone first; then two lanes run side by side, each in order. Most commands spend their
    time starting Python and torch on one core: two lanes halve the wait on two."""
    assert ("bash", "make demo") in page_items(REPO / "README.md")
    failures = [run_item(("bash", "make demo"), sandbox)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for lane in pool.map(lambda items: [run_item(item, sandbox) for item in items], lanes()):
            failures += lane
    failures = [f for f in failures if f]
    assert not failures, "\n\n".join(failures)
