"""captioning-gradflow: measure and plot ||dL/dh_t|| through time for RNN / LSTM / GRU.

    captioning-gradflow                                   # conf/gradflow.yaml defaults
    captioning-gradflow seq_len=200 'cells=[rnn,lstm]' seeds='[0,1,2,3,4]'

Writes gradflow.json (the numbers) and gradflow.png (log scale, one line per cell) to the run dir.
"""
from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from captioning.cli._conf import CONF_DIR
from captioning.cli.common import run_entry_point


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="gradflow")
def run(cfg: DictConfig) -> None:
    import matplotlib  # heavy imports after Hydra has parsed the command line
    import torch

    from captioning.io import atomic_path, atomic_write_json
    from captioning.lecture.gradflow import FlowConfig, clipping_demo, gradient_flow, plot

    matplotlib.use("Agg")  # files only, no display
    torch.set_num_threads(cfg.threads)
    flow_cfg = FlowConfig(seq_len=cfg.seq_len, input_size=cfg.input_size, hidden_size=cfg.hidden_size,
                          batch_size=cfg.batch_size, init=cfg.init, recurrent_gain=cfg.recurrent_gain,
                          forget_bias=cfg.forget_bias)
    flow = gradient_flow(list(cfg.cells), flow_cfg, list(cfg.seeds))
    clip = None
    if cfg.clip.enabled:
        clip_cfg = FlowConfig(seq_len=cfg.clip.seq_len, input_size=cfg.input_size, hidden_size=cfg.hidden_size,
                              batch_size=cfg.batch_size, init=cfg.clip.init, recurrent_gain=cfg.clip.recurrent_gain)
        clip = clipping_demo(clip_cfg, seed=cfg.seeds[0], max_norm=cfg.clip.max_norm, lr=cfg.clip.lr)

    out = cfg.out_dir
    atomic_write_json(os.path.join(out, "gradflow.json"),
                      {"config": {**vars(flow_cfg), "seeds": list(cfg.seeds)}, "cells": flow, "clipping": clip})
    fig = plot(flow, clip)
    with atomic_path(os.path.join(out, "gradflow.png")) as tmp:
        fig.savefig(tmp, format="png", dpi=110)

    print(f"||dL/dh_0|| / ||dL/dh_T|| over {cfg.seq_len} steps (mean of {len(cfg.seeds)} seeds):")
    for cell, r in flow.items():
        print(f"  {cell:5s} {r['first_over_last']:.3e}")
    if clip:
        print(f"exploding rnn (W_hh gain {clip['recurrent_gain']:g}, {cfg.clip.seq_len} steps): "
              f"||dL/dh_0|| / ||dL/dh_T|| = {clip['dh_norms'][0] / clip['dh_norms'][-1]:.3e}; "
              f"parameter gradient norm {clip['grad_norm_before']:.4g} -> {clip['grad_norm_after']:.4g} "
              f"after clip_grad_norm_(max_norm={clip['max_norm']:g}), same direction "
              f"(cosine {clip['cosine_before_after']:.6f}); SGD step at lr {clip['lr']:g}: "
              f"{clip['sgd_step_before']:.4g} -> {clip['sgd_step_after']:.4g} (weights' norm {clip['weight_norm']:.3g})")
    print(f"wrote {os.path.join(out, 'gradflow.json')} and gradflow.png")


def main() -> None:
    run_entry_point(run)


if __name__ == "__main__":
    main()
