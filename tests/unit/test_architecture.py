"""The package's shape, enforced: import-linter contracts (pyproject.toml) hold for mmfm when ``lint-imports`` runs
bare at the repository root (as import-linter users run it), and the same contracts break on a small package that
has each defect (so the check itself can fail)."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install -e '.[dev]')")


def _lint(cwd: Path, pythonpath: list[Path], config: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    args = [LINT, "--no-cache"] + ([str(config)] if config else [])
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_mmfm_keeps_its_import_contracts_with_lint_imports_run_bare():
    r = _lint(ROOT, [])         # no PYTHONPATH: lint-imports puts the root on sys.path (mmfm, import_contracts)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 kept, 0 broken" in r.stdout


def test_the_contracts_catch_a_cycle_an_upward_import_and_a_private_import(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/config/__init__.py": "",
        "pkg/config/core.py": "from pkg.models.net import build\n",          # upward: config -> models
        "pkg/models/__init__.py": "",
        "pkg/models/net.py": "from pkg.config.core import *\nfrom pkg.data.io import _secret\n\ndef build(): pass\n",
        "pkg/data/__init__.py": "",
        "pkg/data/io.py": "import pkg.models.net\n_secret = 1\n",             # cycle data <-> models
        "pkg/models/a.py": "def f():\n    from pkg.models import b\n",       # cycle a <-> b inside models,
        "pkg/models/b.py": "def g():\n    from pkg.models import a\n",       # through lazy imports only
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    cfg = tmp_path / "contracts.toml"
    cfg.write_text(textwrap.dedent("""
        [tool.importlinter]
        root_package = "pkg"
        contract_types = ["no_private_imports: import_contracts.NoPrivateImports"]
        [[tool.importlinter.contracts]]
        name = "layers"
        type = "layers"
        layers = ["pkg.models", "pkg.data", "pkg.config"]
        [[tool.importlinter.contracts]]
        name = "acyclic"
        type = "acyclic_siblings"
        ancestors = ["pkg"]
        depth = 0
        [[tool.importlinter.contracts]]
        name = "private"
        type = "no_private_imports"
        [[tool.importlinter.contracts]]
        name = "modules of models"
        type = "acyclic_siblings"
        ancestors = ["pkg.models"]
    """))
    r = _lint(tmp_path, [ROOT, tmp_path], cfg)          # ROOT: where import_contracts.py lives
    assert r.returncode != 0
    assert "0 kept, 4 broken" in r.stdout, r.stdout
    assert "pkg.models.net -> pkg.data.io: _secret" in r.stdout
    assert "No cycles are allowed in pkg.models." in r.stdout and (".a -> .b" in r.stdout or ".b -> .a" in r.stdout)
