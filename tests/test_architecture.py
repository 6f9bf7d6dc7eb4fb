"""The package's layers (docs/architecture.md) as import-linter contracts (pyproject.toml),
and the public names that a move of modules must keep."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")

pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install -e '.[dev]')")


def _lint(cwd: Path, src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([LINT, "--no-cache", "--config", str(cwd / "pyproject.toml")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers_and_has_no_import_circle():
    run = _lint(ROOT, ROOT / "src")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize("module, bad_import, broken", [
    # the engine reaching up to the workflow: a layer crossed the wrong way (and a circle)
    ("engine/kernel.py", "from .. import workflow as _up", "factembed.engine.kernel -> factembed.workflow"),
    # the io package (below the preprocessing) importing it back: the circle that was there
    ("io/__init__.py", "from .. import preprocessing as _up", "factembed.io -> factembed.preprocessing"),
    # torch in the data layer
    ("io/labels.py", "import torch as _t", "factembed.io.labels -> torch"),
    # inside a room: the step reaching up to the runner that drives it
    ("training/step.py", "from . import runner as _up", "factembed.training.step -> factembed.training.runner"),
])
def test_a_broken_layer_fails_the_check(tmp_path, module, bad_import, broken):
    """The check is not a formality: the same contracts on a copy of the package with one
    import added the wrong way round fail, naming the import."""
    shutil.copytree(ROOT / "src" / "factembed", tmp_path / "src" / "factembed",
                    ignore=shutil.ignore_patterns("__pycache__", "*.npz", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / "factembed" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # added by the test\n")
    run = _lint(tmp_path, tmp_path / "src")
    assert run.returncode != 0
    assert broken in run.stdout, run.stdout


#: what users import: the package's door, its tools and the documented modules
PUBLIC = {
    "factembed": ["FactorizedEmbeddings", "FEConfig", "tl", "evaluate", "__version__"],
    "factembed.tl": ["fe", "fe_transform"],
    "factembed.plot": ["plot_embedding", "plot_training_curves", "label_palette", "interactive"],
    "factembed.evaluate": ["evaluate", "METRIC_ORDER", "summary_table", "interval_table", "metric_by_dim_table",
                           "evaluation_figures", "parse_task"],
    "factembed.datasets": ["load_demo"],
    "factembed.sources": ["open_source"],
    "factembed.io": ["ExpressionData", "read_expression", "write_expression", "write_embedding_table"],
    "factembed.preprocessing": ["Preprocessing", "FittedPreprocessing", "align_genes", "GeneStats"],
    "factembed.cli": ["main"],
    "factembed.estimator": ["FactorizedEmbeddings", "sklearn_expected_failed_checks"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module):
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"
