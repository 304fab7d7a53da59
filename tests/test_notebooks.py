"""The notebooks run top to bottom (so they never rot) and are stored without outputs."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebook_is_saved_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs; clear them before saving"


# Every notebook runs top to bottom on each test run, at the smaller sizes CAPTIONING_NOTEBOOK_QUICK asks for.
EXECUTED = ["01_quickstart.ipynb", "02_rnn_vs_lstm.ipynb", "03_attention.ipynb"]


@pytest.mark.parametrize("name", EXECUTED)
def test_notebook_runs_top_to_bottom(name: str, monkeypatch, tmp_path):
    path = NOTEBOOKS / name
    monkeypatch.setenv("CAPTIONING_NOTEBOOK_QUICK", "1")  # the kernel inherits it: the notebooks' smaller sizes
    # The notebooks keep their work folder (mkdtemp) for the reader to look at; under the test's own
    # tmp_path it goes with pytest's old runs instead of adding ~100 MB to /tmp on every test run.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    # "python3" resolves to this interpreter: jupyter_client swaps a bare `python` in the kernel
    # command for sys.executable, so the kernel sees the same venv (and package) as the tests.
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Traceback" not in text
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for prefix in re.findall(r'mkdtemp\(prefix="([^"]+)"\)', code):
        assert list(tmp_path.glob(f"{prefix}*")), f"{name}: its work folder {prefix}* was not made under TMPDIR"
