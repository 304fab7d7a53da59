"""Per-run logging: metrics.csv (one row per epoch), TensorBoard scalars and the loss-curve plot."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from captioning.io import atomic_path, atomic_write_text


class RunLog:
    """Collects one dict of scalars per epoch and mirrors it to CSV and TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, history: list[dict] | None = None):
        self.run_dir = Path(run_dir)
        self.history: list[dict] = list(history or [])
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log_step(self, step: int, scalars: dict) -> None:
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"step/{k}", v, step)

    def log_epoch(self, row: dict) -> None:
        self.history.append(row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"epoch/{k}", v, row["epoch"])
            self._tb.flush()
        keys = list(dict.fromkeys(k for r in self.history for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())

    def plot_curves(self) -> Path:
        """curves.png: train/val loss, val BLEU-4 and val CIDEr-D per epoch (with SCST's reward, baseline and advantage)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in self.history]
        fig, (ax_loss, ax_bleu, ax_cider) = plt.subplots(1, 3, figsize=(14, 3.8))
        for key, label in [("train_loss", "train"), ("val_loss", "val")]:
            ax_loss.plot(epochs, [r.get(key) for r in self.history], marker="o", label=label)
        scst = any("train_reward" in r for r in self.history)  # SCST's train loss is -(r - b) log p, not cross-entropy
        ax_loss.set(xlabel="epoch", ylabel="SCST loss (train), cross-entropy (val)" if scst else "cross-entropy per token",
                    title="loss")
        ax_loss.legend()
        ax_bleu.plot(epochs, [r.get("val_bleu4") for r in self.history], marker="o", color="C2")
        ax_bleu.set(xlabel="epoch", ylabel="BLEU-4", title="validation BLEU-4")
        ax_cider.plot(epochs, [r.get("val_cider") for r in self.history], marker="o", color="C3", label="val")
        if scst:
            for key, label, colour in [("train_reward", "train: sampled captions' reward", "C4"),
                                       ("train_baseline", "train: baseline", "C5"),
                                       ("train_advantage", "train: advantage (reward - baseline)", "C6")]:
                ax_cider.plot(epochs, [r.get(key) for r in self.history], marker=".", color=colour, label=label)
            ax_cider.legend(fontsize="small")
        ax_cider.set(xlabel="epoch", ylabel="CIDEr-D", title="validation CIDEr-D" + (" and SCST rewards" if scst else ""))
        fig.tight_layout()
        path = self.run_dir / "curves.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
