"""Every job of a `captioning-train -m` sweep checked before the first one starts.

Hydra composes each job's config when the job starts, so a value that cannot work in the last job of a sweep
(`-m decoder.cell=rnn,lstm,transfomer`) would stop the sweep only after the jobs before it have trained. This
callback (conf/train.yaml, `hydra.callbacks`) composes every job's config up front, as Hydra's basic sweeper
will, and runs the same checks a single run makes (`added_keys`, `captioning.training.check_config`): one
`error:` line naming each job that cannot work, and no job starts. Other sweepers (Optuna) choose values as they
go: their jobs are checked one by one as they start. A run's (or sweep's) directory that cannot be written is one
line too, before Hydra makes it.
"""
from __future__ import annotations

from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from captioning.cli.common import fail
from captioning.io import InputError, check_writable

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class CheckSweep(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable(config.hydra.run.dir)  # before Hydra makes it (a read-only folder: its traceback)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
            _writable(config.hydra.sweep.dir)
            return
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        from captioning.cli.train import added_keys
        from captioning.training import check_config  # torch: only once a sweep is sure to run

        loader = GlobalHydra.instance().config_loader()
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create(config_loader=loader).parse_overrides(
            [*params, *config.hydra.overrides.task])
        swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
        jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
        problems = []
        for n, job in enumerate(jobs):
            cfg = loader.load_sweep_config(config, job)
            plain = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                     for k, v in cfg.items() if k != "hydra"}
            try:
                if extra := added_keys(cfg):
                    raise InputError("; ".join(extra))
                check_config(plain)
            except InputError as e:
                values = " ".join(o for o in job if o.split("=", 1)[0] in swept)
                problems.append(f"job {n} ({values}): {e}")
        if problems:
            fail(f"{len(problems)} of the sweep's {len(jobs)} jobs cannot run, so none was started: "
                 + "; ".join(problems))
        _writable(config.hydra.sweep.dir)  # makes it: only once every job can run


def _writable(folder: str) -> None:
    try:
        check_writable(folder)
    except InputError as e:
        fail(str(e))
