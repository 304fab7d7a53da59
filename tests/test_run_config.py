"""RunConfig: a training run's configuration typed once, with one source of defaults, checked before any work."""
from __future__ import annotations

import warnings
from dataclasses import asdict
from functools import partial

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from captioning.checkpoint import load_checkpoint
from captioning.cli._conf import CONF_DIR
from captioning.data.shapes import make_shapes_dataset
from captioning.io import InputError
from captioning.run_config import (BaselineOptions, DatasetOptions, EncoderOptions, OptimOptions, RunConfig,
                                   SplitFiles)
from captioning.training import train


def composed(*overrides: str) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=True)


def test_the_composed_defaults_are_the_dataclasses_defaults():
    """One source of every default: conf/train.yaml with its default groups builds RunConfig's own defaults
    (the dataset aside, which has no default paths)."""
    plain = composed()
    config = RunConfig.of(plain)
    assert config == RunConfig(dataset=config.dataset)
    # the old baseline keys are null, and leave
    assert config.as_dict() == {**plain, "baseline": {"k": [1, 10], "fallback": 0.05},
                                "dataset": {**plain["dataset"], "extra_tests": {}}}


def test_a_key_no_group_has_and_a_missing_split_are_one_line():
    plain = composed()
    with pytest.raises(InputError, match=r"^encoder\.trainabel is not an option of encoder \(did you mean "
                                         r"encoder\.trainable\?\)$"):
        RunConfig.of({**plain, "encoder": {**plain["encoder"], "trainabel": True}})
    with pytest.raises(InputError, match=r"^seeds is not an option of captioning-train \(did you mean seed\?\)$"):
        RunConfig.of({**plain, "seeds": 3})
    without_test = {k: v for k, v in plain["dataset"].items() if k != "test"}
    with pytest.raises(InputError, match="dataset: .*missing 1 required positional argument: 'test'"):
        RunConfig.of({**plain, "dataset": without_test})


def test_values_that_cannot_work_are_listed_together_with_the_rules_between_groups():
    plain = composed("+experiment=scst", "encoder.trainable=true", "optim.scheduler=linear", "baseline.k=[0]")
    problems = RunConfig.of(plain).problems()
    assert any(p.startswith("optim.scheduler must be one of cosine") for p in problems)
    assert any(p.startswith("scst.enabled: SCST starts from a trained captioner") for p in problems)
    assert any(p.startswith("scst.enabled trains the decoder alone") for p in problems)
    assert "baseline.k must be positive integers, got [0]" in problems
    assert EncoderOptions(finetune_from_epoch=2).trains and not EncoderOptions().trains
    files = SplitFiles("a.json", "images")
    assert DatasetOptions(files, files, files, extra_tests={"test": files}).problems() == [
        "dataset.extra_tests may not be called test"]
    assert OptimOptions(decay_rate=0).problems() == ["optim.decay_rate must be in (0, 1], got 0"]


def test_the_old_baseline_and_dataset_names_still_work_with_a_warning():
    plain = composed("baseline.knn=false")
    with pytest.warns(UserWarning, match=r"baseline\.knn=False baseline\.consensus_k=None is now baseline\.k=\[\]"):
        assert RunConfig.of(plain).baseline == BaselineOptions(k=[])
    with pytest.warns(UserWarning, match=r"is now baseline\.k=\[1, 25\]"):
        assert RunConfig.of(composed("baseline.consensus_k=25")).baseline.k == [1, 25]
    with pytest.warns(UserWarning, match=r"dataset\.name is not read"):
        RunConfig.of({**plain, "baseline": {"k": [1]}, "dataset": {**plain["dataset"], "name": "mine"}})


def test_a_run_trains_from_a_runconfig_built_in_python(tmp_path):
    """The API without Hydra: a RunConfig object (no dicts) trains a run and scores its baselines."""
    root = tmp_path / "shapes"
    make_shapes_dataset(root, n_train=32, n_val=8, n_test=8, seed=0, image_size=32, demo_images=0)
    split = {s: SplitFiles(str(root / f"captions_{s}.json"), str(root / "images" / s)) for s in ("train", "val", "test")}
    config = RunConfig(dataset=DatasetOptions(**split), cache_dir=str(tmp_path / "cache"),
                       encoder=EncoderOptions(name="small_cnn", pretrained=False, image_size=32, num_workers=0),
                       optim=OptimOptions(warmup_steps=0, scheduler="constant"), baseline=BaselineOptions(k=[1, 3]))
    config.decoder.hidden_dim, config.decoder.embed_dim = 16, 8
    config.trainer.max_epochs, config.trainer.batch_size, config.trainer.threads = 1, 16, 1
    config.trainer.tensorboard = config.trainer.progress = False
    config.decode.max_len = 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warm-up advice for a run this small
        metrics = train(config, tmp_path / "run", partial(torch.optim.Adam, lr=1e-3))
    assert {"test", "test_knn1", "test_knn3", "test_shuffled_images"} <= set(metrics)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["run_config"]
    assert saved == asdict(config.with_trainer(precision=metrics["precision"]))
