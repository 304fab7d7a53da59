"""The package installs like a library: a wheel built from the repository carries its Hydra configs, and
its console scripts work from a folder outside the repository, in a fresh virtual environment.

The fresh environment reuses the dependencies already installed in this one (torch and the rest) through a
.pth file that lists this environment's site-packages: no network, and `captioning` itself comes from the
wheel alone (an editable install's finder is not loaded from a .pth-listed folder).
"""
from __future__ import annotations

import configparser
import json
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["captioning-train", "captioning-eval", "captioning-caption", "captioning-gradflow", "captioning-lm",
           "captioning-bench", "captioning-baseline", "captioning-report"]


def test_setup_cfg_lists_every_package():
    """setup.cfg names the packages by hand (for the conf/ mapping): a new subpackage must be added there."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "captioning").rglob("__init__.py")}
    assert listed == found | {"captioning.conf"}
    scripts = {line.split("=")[0].strip() for line in cfg["options.entry_points"]["console_scripts"].split("\n")
               if line.strip()}
    assert scripts == set(SCRIPTS)


def run(args: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns its bin/ folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # build from a copy: the build writes build/ and *.egg-info next to setup.cfg
    shutil.copytree(REPO, source, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or n.endswith(".egg-info")
        or (Path(folder) == REPO and n not in {"captioning", "conf", "setup.cfg", "pyproject.toml", "README.md"})])
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist",
         source], cwd=tmp)
    wheel = next((tmp / "dist").glob("captioning-*.whl"))
    env = tmp / "venv"
    venv.create(env, with_pip=False)
    env_site = next(env.glob("lib/python*/site-packages"))
    (env_site / "reuse_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", env / "bin" / "python", "install", "-q", "--no-deps",
         "--no-index", wheel], cwd=tmp)
    return env / "bin"


@pytest.mark.slow
def test_wheel_carries_the_configs_and_is_what_runs(installed, tmp_path):
    where = run([installed / "python", "-c", "import captioning.cli._conf as c; print(c.__file__); print(c.CONF_DIR)"],
                cwd=tmp_path).stdout.split()
    env = installed.parent
    assert Path(where[0]).is_relative_to(env) and Path(where[1]).is_relative_to(env), where
    assert (Path(where[1]) / "train.yaml").is_file() and (Path(where[1]) / "decoder" / "lstm.yaml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["captioning-train", "captioning-eval", "captioning-caption",
                                    "captioning-gradflow", "captioning-lm", "captioning-baseline"])
def test_hydra_apps_compose_from_another_folder(installed, tmp_path, script):
    proc = run([installed / script, "--cfg", "job"], cwd=tmp_path)
    assert "decode" in proc.stdout or "seq_len" in proc.stdout or "tbptt" in proc.stdout or "annotations" in proc.stdout


@pytest.mark.slow
def test_train_caption_eval_from_another_folder(installed, tmp_path):
    """A tiny end-to-end run with nothing but the installed package."""
    run([installed / "python", "-c", "from captioning.data.shapes import make_shapes_dataset as m; "
         "m('shapes', n_train=24, n_val=6, n_test=6, image_size=48, demo_images=3)"], cwd=tmp_path)
    run([installed / "captioning-train", "dataset.root=shapes", "encoder=small_cnn", "decoder.hidden_dim=16",
         "decoder.embed_dim=8", "trainer.batch_size=8", "trainer.max_epochs=1", "trainer.tensorboard=false",
         "trainer.progress=false", "encoder.num_workers=0", "hydra.run.dir=run"], cwd=tmp_path)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    run([installed / "captioning-eval", "annotations=shapes/captions_test.json", "results=run/test_captions.json",
         "output=scores.json"], cwd=tmp_path)
    assert 0 <= json.loads((tmp_path / "scores.json").read_text())["bleu4"] <= 1
    proc = run([installed / "captioning-caption", "checkpoint=run/checkpoints/best.pt", "images=shapes/demo_images",
                "output=gallery", "num_workers=0"], cwd=tmp_path)
    assert "3 images captioned, 0 failed" in proc.stdout
    assert len(json.loads((tmp_path / "gallery" / "captions.json").read_text())) == 3
    proc = run([installed / "captioning-bench", "--help"], cwd=tmp_path)
    assert "encoder" in proc.stdout
    proc = run([installed / "captioning-report", "run"], cwd=tmp_path)
    assert "| defaults | 1 |" in proc.stdout and (tmp_path / "run" / "report.png").is_file()


def test_nothing_reads_outside_the_repository():
    """A user's clone has nothing beside it: no code, test, notebook, script or doc may reach for the
    reference-data folder that sits beside this project's own checkout."""
    needle = "/".join(["..", "shared"])  # spelled so that this file does not match itself
    folders = ("captioning", "tests", "datasets", "conf", "notebooks", "docs")
    files = [p for folder in folders for p in (REPO / folder).rglob("*")
             if p.is_file() and p.suffix in {".py", ".yaml", ".ipynb", ".md", ".txt"}]
    files += [REPO / "Makefile", REPO / ".ci" / "run", REPO / "README.md", REPO / "setup.cfg", REPO / "mkdocs.yml"]
    offenders = [str(p.relative_to(REPO)) for p in files if needle in p.read_text(encoding="utf-8")]
    assert not offenders
