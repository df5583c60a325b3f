"""The import contracts that ``make lint`` checks (``[tool.importlinter]`` in pyproject.toml).

Each case copies the checked packages and pyproject.toml into a temporary directory, adds one
deliberate bad import to one module, and runs ``lint-imports`` there on the contract it breaks:
the check must fail. The untouched copy passes every contract, so each failure is the added
import's doing, and a contract that stopped checking anything would fail its case.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CHECKED = ("broker", "sandbox", "bench", "pyproject.toml")

# (module file, the import added to it, the id of the contract it breaks)
VIOLATIONS = {
    "the sandbox's inside imports the broker": (
        "sandbox/worker.py",
        "import broker.config",
        "sandbox-inside",
    ),
    "the broker imports the worker's own code": (
        "broker/runtimes/sandbox/launcher.py",
        "import sandbox.worker",
        "sandbox-protocol",
    ),
    "policy imports enforce": (
        "broker/policy/cache.py",
        "from broker.enforce import keys",
        "policy-never-enforce",
    ),
    "audit imports a runtime": (
        "broker/audit/query.py",
        "import broker.runtimes.base",
        "audit-never-runtimes-or-server",
    ),
    "audit imports the servicers": (
        "broker/audit/query.py",
        "import broker.server",
        "audit-never-runtimes-or-server",
    ),
    "classify imports a runtime": (
        "broker/classify/walk.py",
        "import broker.runtimes.base",
        "classify-never-runtimes",
    ),
    "a core package imports the servicers": (
        "broker/calls/decide.py",
        "import broker.server",
        "core-never-servicers",
    ),
    "a lower layer imports a higher one": ("broker/storage/db.py", "import broker.calls", "layers"),
    "an unplaced package under broker/": ("broker/newcomer/__init__.py", "", "layers"),
    "an import circle inside a package": (
        "broker/policy/bundle.py",
        "import broker.policy.store",
        "acyclic",
    ),
}


def _lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    command = [str(LINT_IMPORTS), "--no-cache", "--no-logo"]
    for contract in contracts:
        command += ["--contract", contract]
    return subprocess.run(
        command, cwd=root, capture_output=True, text=True, check=False, timeout=120
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what ``lint-imports`` reads; it keeps every contract."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (make install)")
    root = tmp_path_factory.mktemp("contracts") / "repo"
    for name in CHECKED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            root.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, root / name)
    result = _lint_imports(root)
    assert result.returncode == 0, result.stdout[-3000:]
    return root


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_a_deliberate_violation_fails_the_check(case: str, pristine: Path, tmp_path: Path) -> None:
    module, statement, contract = VIOLATIONS[case]
    root = tmp_path / "repo"
    shutil.copytree(pristine, root)
    target = root / module
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as file:
        file.write(f"\n{statement}  # deliberate violation\n" if statement else "")
    result = _lint_imports(root, contract)
    assert result.returncode != 0, f"{case}: not caught by {contract}\n{result.stdout[-2000:]}"
    assert "BROKEN" in result.stdout


def test_make_lint_runs_the_contracts() -> None:
    """The check is wired into ``make lint``, which CI runs: a check never run checks nothing."""
    lint = (REPO / "Makefile").read_text(encoding="utf-8").split("\nlint:", 1)[1].split("\n\n")[0]
    assert "$(BIN)/lint-imports" in lint
