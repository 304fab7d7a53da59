"""Every option of every config group composes with every entry point that uses it, and builds.

As in lightning-hydra-template's test_configs.py: compose with Hydra's API (no subprocess), then build what
the entry point would build from the composed config: the model, the optimizer and its schedule, the
decoding options. No training. A new YAML file in a group is picked up here without editing this file.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from captioning.cli._conf import CONF_DIR
from captioning.config import DecodeOptions, DecoderOptions, TrainerOptions, check, options_from
from captioning.io import InputError
from captioning.models import build_encoder
from captioning.text import Vocabulary
from captioning.optim import build_optimizer, param_groups
from captioning.run_config import RunConfig, group_options as typed_group
from captioning.training import build_model

BIN = Path(sys.executable).parent
# entry point -> the config groups it composes (hydra/launcher is tested in test_distributed.py)
GROUPS = {"train": ["dataset", "encoder", "decoder", "optim", "trainer", "decode", "experiment"],
          "caption": ["decode"], "baseline": ["dataset", "encoder"]}
# Required values a user supplies on the command line (dataset=coco has no default paths).
FILL_IN = {"train": {"dataset.train.annotations": "a.json", "dataset.train.images": "img",
                     "dataset.val.annotations": "b.json", "dataset.val.images": "img",
                     "dataset.test.annotations": "c.json", "dataset.test.images": "img"},
           "caption": {"checkpoint": "m.pt", "images": "photos", "output": "out"}}
FILL_IN["baseline"] = FILL_IN["train"]


def group_options(group: str) -> list[str]:
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def compose_with(entry: str, override: str) -> OmegaConf:
    """Compose like the command line `entry override`, plus the required values a user would give."""
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(entry, overrides=[override])
        missing = OmegaConf.missing_keys(cfg)
        assert missing <= set(FILL_IN[entry]), f"{entry} {override}: unexpected required values {missing}"
        cfg = compose(entry, overrides=[override, *(f"{k}={FILL_IN[entry][k]}" for k in sorted(missing))])
    assert not OmegaConf.missing_keys(cfg)
    return cfg


CASES = [(entry, group, option) for entry, groups in GROUPS.items() for group in groups
         for option in group_options(group)]


def test_every_group_has_options():
    found = {(entry, group) for entry, group, _ in CASES}
    assert found == {(entry, group) for entry, groups in GROUPS.items() for group in groups}
    assert {"coco", "coco_karpathy", "flickr8k", "shapes"} <= set(group_options("dataset"))


@pytest.mark.parametrize("entry,group,option", CASES, ids=[f"{e}-{g}={o}" for e, g, o in CASES])
def test_option_composes_and_builds(entry, group, option):
    override = f"+{group}={option}" if group == "experiment" else f"{group}={option}"
    cfg = compose_with(entry, override)
    plain = OmegaConf.to_container(cfg, resolve=True)
    if entry == "baseline":  # its encoder and the split it captions
        assert plain["split"] in typed_group("dataset", plain["dataset"]).splits
        e = typed_group("encoder", plain["encoder"])
        assert build_encoder(e.name, pretrained=False, image_size=e.image_size).out_dim > 0
        return
    check(DecodeOptions(**plain["decode"]))
    if entry != "train":
        return
    config = RunConfig.of(plain)  # every group typed: a key no schema has is refused
    check(config.dataset, config.encoder, config.decoder, config.optim, config.trainer)  # scst needs init_from
    for split in ("train", "val", "test"):
        assert isinstance(getattr(config.dataset, split).annotations, str)
    if config.encoder.name.startswith("resnet"):  # torchvision would download ImageNet weights
        config.encoder.pretrained = False
    torch.manual_seed(0)
    model, model_config = build_model(config, Vocabulary(["a", "red", "circle"]))
    assert model_config["decoder"]["vocab_size"] == 7 and model.decoder.config.cell == config.decoder.cell
    groups = param_groups(model, config.optim.encoder_lr)
    optimizer, scheduler = build_optimizer(config.optim, groups, instantiate(cfg.optim.optimizer), total_steps=10,
                                           steps_per_epoch=5)
    assert optimizer.param_groups[0]["lr"] > 0
    grid = config.decoder.inject == "attention"  # the attention decoder reads the encoder's grid
    assert model.encoder.grid == grid
    features = torch.randn(2, 4, model.encoder.out_dim) if grid else torch.randn(2, model.encoder.out_dim)
    captions = torch.randint(0, 7, (2, 5))
    model.decoder(features, captions).logits.sum().backward()  # the built model runs, and its gradients reach the optimizer
    optimizer.step()
    scheduler.step()


@pytest.mark.parametrize("argv, keys", [
    (["captioning-train", "dataset=coco"], [f"dataset.{s}.{k}" for s in ("test", "train", "val")
                                            for k in ("annotations", "images")]),
    (["captioning-caption", "images=photos", "output=out"], ["checkpoint"]),
    (["captioning-eval", "results=r.json"], ["annotations"]),
])
def test_a_missing_required_value_is_one_line_with_an_example(tmp_path, argv, keys):
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: set "), proc.stderr
    assert all(f"{k}=..." in lines[0] for k in keys) and f"e.g. {argv[0]} " in lines[0]


def test_the_sweep_objective_is_validation_not_test(monkeypatch, tmp_path):
    """What captioning-train returns to Hydra (a sweeper optimises it) is the best validation score."""
    from hydra.core.hydra_config import HydraConfig

    import captioning.training
    from captioning.cli import train as train_cli

    metrics = {"select_on": "cider", "best_val_score": 0.25, "best_epoch": 3,
               "test": {"loss": 1.0, **{f"bleu{n}": 0.9 for n in range(1, 5)}, "cider": 2.5}}
    monkeypatch.setattr(captioning.training, "train", lambda cfg, run_dir, make_optimizer: metrics)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"hydra.run.dir={tmp_path}"], return_hydra_config=True)
    OmegaConf.set_struct(cfg, False)
    cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    del cfg["hydra"]
    assert train_cli.run.__wrapped__(cfg) == 0.25


def test_a_key_the_schema_lacks_is_refused_naming_the_likely_one():
    with pytest.raises(InputError, match=r"^decode\.beams is not an option of decode \(did you mean decode\.beam_size\?\)$"):
        options_from(DecodeOptions, {"beams": 3}, "decode")
    with pytest.raises(InputError, match=r"trainer\.scheduled_sampling\.prob is not an option"):
        TrainerOptions(scheduled_sampling={"prob": 0.5})
    assert options_from(DecodeOptions, {"beam_size": 3}, "decode") == DecodeOptions(beam_size=3)
