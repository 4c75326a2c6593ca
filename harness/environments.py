"""Named environments: sets of package pins, each built once into a cached virtualenv and reused.

A matrix's `environments:` maps a name to pins (`{bnb-0.49: {bitsandbytes: "0.49.2"}}`); one that pins
nothing, or only what is installed already, is the current interpreter. Building is made for speed:
every environment is a *layered* venv, an empty venv whose site-packages sees the current
interpreter's through a `.pth` line, with only the pinned packages installed into it by the current
interpreter's pip (`pip --python`, so every index pip is configured with works). Packages in the layer
shadow the ones below it.

- A pin of anything but torch holds torch at its current version (a constraint), so a bitsandbytes,
  timm, grokadamw or framework pin installs in seconds and never reinstalls torch; a pin that needs
  another torch is an error naming it.
- A torch pin brings along the packages built against torch (torchvision) for pip to resolve again,
  so timm runs there too; the CUDA libraries below are shared. A bare torch version means the same
  build as the current one (`===2.13.0`, not a `+cpu` wheel some index also offers).

Each venv lives under `$HARNESS_ENV_CACHE` (default `~/.cache/optimizer-matrix/envs`) in a folder
named by a hash of its pins and of the interpreter it layers over; a marker written last makes a
half-built folder count as absent. The harness runs in an environment as `<its python> -m harness ...`
with this checkout first on `PYTHONPATH` and `HARNESS_ENVIRONMENT` naming it (records carry the name).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.spec import Matrix

CACHE_ENV = "HARNESS_ENV_CACHE"
"""Where built environments are kept (default `~/.cache/optimizer-matrix/envs`)."""

NAME_ENV = "HARNESS_ENVIRONMENT"
"""Set for a harness running inside a named environment; the plugin stamps it on every record."""

TORCH_COMPANIONS = ("torchvision", "torchaudio")
"""Packages compiled against one torch release: a torch pin has pip resolve them again (timm needs torchvision)."""

FORMAT = 1
"""Bumped when the layout of a built environment changes, so old cache folders are not reused."""

_MARKER = "harness-environment.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_PACKAGE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_SPECIFIER = re.compile(r"(==|!=|<=|>=|~=|<|>|===)")


class EnvironmentBuildError(HarnessError):
    """An environment that cannot be found or built; the message names it and the pin at fault."""


@dataclass(frozen=True)
class Environment:
    """A named set of pins (package -> version); no pins means the current interpreter."""

    name: str
    pins: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_current(self) -> bool:
        return not self.pins

    @property
    def pins_torch(self) -> bool:
        return "torch" in {canonical(package) for package in self.pins}

    def requirements(self) -> list[str]:
        """The pins as pip requirements: a bare version means `==`, a specifier is kept as written.

        A bare torch version means the build flavour of the current torch: `===2.13.0` when the current
        one carries no local label, so an index's `2.13.0+cpu` (which `==` prefers) is not picked
        beside CUDA-built companions.
        """
        found = []
        for package, version in sorted(self.pins.items()):
            current = installed_version("torch") or ""
            if canonical(package) == "torch" and not _SPECIFIER.match(version) and current and "+" not in current:
                found.append(f"{package}==={str(version).strip()}")
            else:
                found.append(requirement(package, version))
        return found

    def describe(self) -> str:
        return ", ".join(f"{p}=={v}" if not _SPECIFIER.match(v) else f"{p}{v}" for p, v in self.pins.items()) or (
            "the current interpreter"
        )


@dataclass(frozen=True)
class BuiltEnvironment:
    """An environment ready to run: its interpreter, where it lives, and whether the cache had it."""

    environment: Environment
    python: Path
    path: Path | None
    reused: bool
    build_s: float = 0.0

    def process_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment variables for a harness process in here: this checkout first, the name set."""
        env = dict(os.environ if base is None else base)
        root = str(checkout_root())
        parts = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
        env["PYTHONPATH"] = os.pathsep.join(parts)
        env[NAME_ENV] = self.environment.name
        return env

    def run_harness(self, args: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
        """`python -m harness ARGS` inside this environment; its exit status."""
        return subprocess.run([str(self.python), "-m", "harness", *args], env=self.process_env(env)).returncode


# --- names and pins -----------------------------------------------------------------------------------


def canonical(package: str) -> str:
    """PEP 503's normalised name (`Bits_And.Bytes` -> `bits-and-bytes`)."""
    return re.sub(r"[-_.]+", "-", package).lower()


def requirement(package: str, version: str) -> str:
    version = str(version).strip()
    return f"{package}{version}" if _SPECIFIER.match(version) else f"{package}=={version}"


def environments_of(matrix: Matrix) -> dict[str, Environment]:
    """The matrix's environments, in the order written, each checked (a bad name or pin raises)."""
    found: dict[str, Environment] = {}
    for name, pins in matrix.environments.items():
        where = f"{matrix.path}:{matrix.line_of('environments', name) or '?'}"
        if not _NAME.fullmatch(name):
            raise EnvironmentBuildError(
                f"{where}: the environment name {name!r} may hold only letters, digits, '.', '_', '+' and '-'; "
                "it names a folder and appears in every record."
            )
        for package, version in pins.items():
            if not _PACKAGE.fullmatch(package) or not str(version).strip():
                raise EnvironmentBuildError(
                    f"{where}: environment {name!r} pins {package!r} to {version!r}; write a package name and "
                    'a version, e.g. `bitsandbytes: "0.49.2"`.'
                )
        found[name] = Environment(name, dict(pins))
    return found


def find_environment(matrix: Matrix, name: str) -> Environment:
    """The environment `name` of the matrix; an unknown name raises, naming the close match."""
    import difflib

    known = environments_of(matrix)
    if name in known:
        return known[name]
    near = difflib.get_close_matches(name, list(known), n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    listed = ", ".join(known) or "none (add an `environments:` section)"
    raise EnvironmentBuildError(f"{matrix.path}: no environment {name!r}.{hint} Environments: {listed}.")


def installed_version(package: str) -> str | None:
    """The version of `package` in the current interpreter, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def satisfied_here(environment: Environment) -> bool:
    """Whether the current interpreter already has exactly these pins (then nothing needs building)."""
    for package, version in environment.pins.items():
        have = installed_version(package)
        if have is None or _SPECIFIER.match(version):
            return False
        if _public(have) != _public(version):
            return False
    return True


def _public(version: str) -> str:
    return version.strip().split("+", 1)[0]


# --- the cache ------------------------------------------------------------------------------------------


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "optimizer-matrix" / "envs"


def checkout_root() -> Path:
    """The folder holding this `harness` package (put first on an environment's PYTHONPATH)."""
    return Path(__file__).resolve().parent.parent


def cache_key(environment: Environment) -> str:
    """A hash of the pins, of how the venv is built and of the interpreter it is built over."""
    base = {
        "format": FORMAT,
        "pins": sorted((canonical(p), str(v).strip()) for p, v in environment.pins.items()),
        "python": sys.version,
        # a layered venv sees this interpreter's packages: it is only valid over the same ones
        "prefix": sys.prefix,
        "torch": installed_version("torch") or "",
    }
    return hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()[:16]


def environment_path(environment: Environment, root: Path | None = None) -> Path:
    return (root or cache_root()) / cache_key(environment)


def _venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per environment at a time (two runs wanting it wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def ensure_environment(environment: Environment, *, root: Path | None = None, log: Log = _stderr) -> BuiltEnvironment:
    """The environment built and ready: the current interpreter, a cached venv, or a venv built now.

    A pin that pip cannot install raises `EnvironmentBuildError` naming the environment and the pin; the
    half-built folder is removed.
    """
    if environment.is_current or satisfied_here(environment):
        return BuiltEnvironment(environment, Path(sys.executable), None, reused=True)
    try:
        path = environment_path(environment, root)
        lock = path.with_name(path.name + ".lock")
        with _locked(lock):
            if (path / _MARKER).is_file() and _venv_python(path).exists():
                return BuiltEnvironment(environment, _venv_python(path), path, reused=True)
            started = time.perf_counter()
            log(f"[env] building {environment.name} ({environment.describe()}) in {path}")
            shutil.rmtree(path, ignore_errors=True)
            try:
                _build(environment, path)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            seconds = time.perf_counter() - started
            marker = {
                "name": environment.name,
                "pins": dict(environment.pins),
                "layered_over": sys.prefix,
                "built_from": sys.executable,
                "build_s": round(seconds, 1),
            }
            (path / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            log(f"[env] built {environment.name} in {seconds:.1f} s")
            return BuiltEnvironment(environment, _venv_python(path), path, reused=False, build_s=seconds)
    except OSError as exc:
        raise EnvironmentBuildError(
            f"environment {environment.name!r}: cannot write its venv under {root or cache_root()} "
            f"({exc.strerror or exc}); set {CACHE_ENV} to a writable folder."
        ) from exc


def _build(environment: Environment, path: Path) -> None:
    _create_venv(path)
    python = _venv_python(path)
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # `site.addsitedir` (not a bare path line) so the base's own .pth files take effect in here too.
    lines = [f"import site; site.addsitedir({d!r})" for d in _site_dirs()]
    (site_packages / "_harness_layer_over_base.pth").write_text("\n".join(lines) + "\n")
    requirements = environment.requirements()
    held: list[str] = []
    if environment.pins_torch:
        pinned = {canonical(p) for p in environment.pins}
        requirements += [c for c in TORCH_COMPANIONS if installed_version(c) and c not in pinned]
    elif installed_version("torch"):
        held = [f"torch=={installed_version('torch')}"]
    _pip_install(environment, python, requirements, constraints=held)
    if environment.pins_torch:  # another torch: its companions must load beside it (a torch import costs seconds)
        _check_imports(environment, python)


def _check_imports(environment: Environment, python: Path) -> None:
    """torch and its companions (torchvision) must import in an environment that pins torch."""
    modules = ["torch"] + [c for c in TORCH_COMPANIONS if installed_version(c)]
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    result = subprocess.run([str(python), "-c", code, *modules], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise EnvironmentBuildError(
            f"environment {environment.name!r} ({environment.describe()}) installed, but "
            f"{' and '.join(modules)} cannot be imported there: {last}. Pin versions built for one another "
            "(e.g. the torchvision released with that torch)."
        )


def _site_dirs() -> list[str]:
    """The current interpreter's site-packages folders (a layered venv sees their packages)."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def _create_venv(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise EnvironmentBuildError(f"cannot create a venv at {path}: {_last_error(result.stderr)}")


def _pip_install(
    environment: Environment, python: Path, requirements: Sequence[str], *, constraints: Sequence[str] | None
) -> None:
    """Install into the venv of `python` with this interpreter's pip and configuration (any index)."""
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--disable-pip-version-check"]
    command += ["--no-input", "--progress-bar", "off", "-q"]
    if constraints:
        held = python.parent.parent / "harness-constraints.txt"
        held.write_text("\n".join(constraints) + "\n")
        command += ["-c", str(held)]
    result = subprocess.run([*command, *requirements], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EnvironmentBuildError(_install_failure(environment, result.stderr, constraints or []))


def _install_failure(environment: Environment, stderr: str, constraints: Sequence[str]) -> str:
    """One line: the environment, the pin pip could not install, and pip's own reason."""
    reason = _last_error(stderr)
    culprit = next(
        (requirement(p, v) for p, v in environment.pins.items() if re.search(rf"\b{re.escape(p)}\b", stderr, re.I)),
        environment.describe(),
    )
    held = (
        f" beside {constraints[0]} (a pin of a package other than torch never reinstalls torch)" if constraints else ""
    )
    return (
        f"environment {environment.name!r}: the pin {culprit} cannot be installed{held}: {reason} "
        "Check the version with `pip index versions <package>`, or fix the pin in the matrix's `environments:`."
    )


def _last_error(stderr: str) -> str:
    errors = [line.removeprefix("ERROR: ").strip() for line in stderr.splitlines() if line.startswith("ERROR:")]
    useful = [e for e in errors if not e.startswith("ResolutionImpossible")] or errors
    text = (useful[0] if useful else (stderr.strip().splitlines() or ["pip failed"])[-1]).strip()
    text = re.sub(r"\(from versions: ([^)]{120})[^)]*\)", r"(from versions: \1…)", text)
    return text if text.endswith(".") else text + "."


def current_environment_name() -> str:
    """The name of the environment this process runs in ("" for the current interpreter)."""
    return os.environ.get(NAME_ENV, "")


def without_env_option(argv: Sequence[str]) -> list[str]:
    """The command line minus `--env NAME` / `--env=NAME` (the environment's harness runs the rest)."""
    kept: list[str] = []
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--":
            kept += argv[index:]
            break
        if arg == "--env":
            skip = True
            continue
        if arg.startswith("--env="):
            continue
        kept.append(arg)
    return kept
