"""The command lines: every `[project.scripts]` entry point resolves to a callable, every scripts/*.py answers
--help, and no script or test loads code by file path or edits `sys.path` (the scripts are thin CLIs over the
package, which tests import like any user)."""

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
SCRIPTS = sorted(ROOT.glob("scripts/*.py"))


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_point_resolves_to_a_callable(name):
    module, _, attribute = ENTRY_POINTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute)), ENTRY_POINTS[name]


def test_every_script_answers_help(tmp_path):
    """All at once (each start imports torch and transformers), from a folder outside the repository."""
    assert {p.stem for p in SCRIPTS} >= {"benchmark", "build_lm", "evaluate_model", "export_subnets", "plot_architecture",
                                        "push_to_hub", "reproduce", "synthesize_corpus"}
    procs = {path.name: subprocess.Popen([sys.executable, str(path), "--help"], cwd=tmp_path, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE) for path in SCRIPTS}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        assert out.startswith("usage:"), name


def test_no_script_or_test_loads_code_by_path():
    """`python scripts/X.py` and pytest find the package because it is installed (scripts/setup.sh), never by
    sys.path edits; a script folder on sys.path once shadowed the `evaluate` library."""
    pattern = re.compile(r"spec_from_file_location|sys\.path|runpy")
    files = [*SCRIPTS, *sorted((ROOT / "tests").glob("*.py")), ROOT / "training" / "train.py"]
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in files if path != Path(__file__).resolve()
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    assert not (ROOT / "scripts" / "evaluate.py").exists()
