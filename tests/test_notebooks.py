"""Every notebook in notebooks/ runs top to bottom on the bundled model."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

# Over a minute each on 2 cores: run by `make test-all`, not by `make test` (CI).
HEAVY = {"02_examples.ipynb", "03_steering.ipynb", "04_shieldgemma.ipynb", "07_circuits.ipynb"}
NOTEBOOKS = [
    pytest.param(path, id=path.name, marks=[pytest.mark.heavy] if path.name in HEAVY else [])
    for path in sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_runs(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
