"""The user's working directory must not break a run: a module file there that Python would import first.

Python puts the working directory first on the path of `python -m harness` and of every cell runner it starts, so
a `harness/` package, a `torch.py` or a `yaml.py` there is imported in place of the real one: the run breaks in a
runner, or after the cells ran. `shadowing_sentence` says so before any cell runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CORE_MODULES = ("harness", "torch", "yaml", "jinja2", "pydantic", "pytest", "xdist", "numpy", "typing_extensions")
"""What every run imports, beside the optimizer and framework packages a matrix names."""


def shadowing_sentence(folder: Path, modules: Iterable[str] = ()) -> str | None:
    """A sentence naming the files in `folder` that would be imported in place of these modules, or None."""
    found = []
    for name in dict.fromkeys([*CORE_MODULES, *modules]):
        for candidate in (folder / name / "__init__.py", folder / f"{name}.py"):
            if candidate.is_file() and not _is_the_module(candidate, name):
                found.append((name, candidate.relative_to(folder)))
                break
    if not found:
        return None
    files = ", ".join(
        f"{f'{path.parent}/' if path.name == '__init__.py' else path} (for {name})" for name, path in found
    )
    return (
        f"The working directory {folder} holds {files}, which Python would import in place of the real "
        f"{'package' if len(found) == 1 else 'packages'} (it puts the working directory first on the path of every "
        "cell runner); rename it, or run from another folder."
    )


def _is_the_module(candidate: Path, name: str) -> bool:
    """Whether `candidate` is this very harness (run from its own checkout); any other module file there shadows."""
    return name == "harness" and candidate.resolve() == (Path(__file__).resolve().parent / "__init__.py")


def check_working_directory(folder: Path | None = None) -> None:
    """Raise `HarnessError` with `shadowing_sentence` for the working directory, checking the optimizer and framework
    packages the harness knows besides the core ones."""
    from harness.errors import HarnessError
    from harness.frameworks import BUILT_IN
    from harness.resolve import OPTIMIZER_PACKAGES

    problem = shadowing_sentence(folder or Path.cwd(), [*OPTIMIZER_PACKAGES, *BUILT_IN])
    if problem is not None:
        raise HarnessError(problem)
