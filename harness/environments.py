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

An environment written with `isolated: true` is a full venv instead, which does not see the current
interpreter: pip installs torch (and torchvision, torchaudio) at the current versions, this harness (editable,
its dependencies held at the current versions) and the pins. Slower to build (torch is gigabytes), it is the
way out when a pin's dependencies cannot live beside the current interpreter's packages.

After a build, the environment is checked: `pip check` inside it (conflicts the current interpreter already
had are not the environment's) and an import of each pinned distribution's modules, named by the
distribution's own metadata. A conflict raises `EnvironmentBuildError` with one sentence naming both sides
and the fix (pin the other package too, or `isolated: true`), so no cell runs in a broken environment. A
reused environment is checked again only when the packages it sees changed since its last check.

Each venv lives under `$HARNESS_ENV_CACHE` (default `~/.cache/optimizer-matrix/envs`) in a folder
named by a hash of its pins and of the interpreter it layers over; a marker written last makes a
half-built folder count as absent (a built but inconsistent one stays, and is checked again when used).
The harness runs in an environment as `<its python> -m harness ...` with this checkout first on
`PYTHONPATH` and `HARNESS_ENVIRONMENT` naming it (records carry the name).
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
from typing import TYPE_CHECKING, Any

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
    isolated: bool = False
    """A full venv that does not see the current interpreter (torch, the harness and the pins installed)."""

    @property
    def is_current(self) -> bool:
        return not self.pins and not self.isolated

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
        pins = ", ".join(f"{p}=={v}" if not _SPECIFIER.match(v) else f"{p}{v}" for p, v in self.pins.items())
        if self.isolated:
            return f"{pins or 'no pins'}, isolated"
        return pins or "the current interpreter"


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
    for name, written in matrix.environments.items():
        where = f"{matrix.path}:{matrix.line_of('environments', name) or '?'}"
        pins = {package: str(version) for package, version in written.items() if package != "isolated"}
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
        found[name] = Environment(name, pins, isolated=written.get("isolated") is True)
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
    if environment.isolated:  # only when set, so the keys of layered environments built before stay valid
        base["isolated"] = True
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
    """The environment built, checked and ready: the current interpreter, a cached venv, or a venv built now.

    A pin that pip cannot install raises `EnvironmentBuildError` naming the environment and the pin; the
    half-built folder is removed. An environment whose packages conflict, or whose pins do not import,
    raises it with the conflict and its fix; the built folder stays and is checked again when next used.
    """
    if environment.is_current or (not environment.isolated and satisfied_here(environment)):
        return BuiltEnvironment(environment, Path(sys.executable), None, reused=True)
    try:
        path = environment_path(environment, root)
        lock = path.with_name(path.name + ".lock")
        with _locked(lock):
            if (path / _MARKER).is_file() and _venv_python(path).exists():
                _check_unless_seen(environment, path, log)
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
                "isolated": environment.isolated,
                "layered_over": None if environment.isolated else sys.prefix,
                "built_from": sys.executable,
                "build_s": round(seconds, 1),
            }
            _write_marker(path, marker)
            log(f"[env] built {environment.name} in {seconds:.1f} s")
            _check_unless_seen(environment, path, log)
            return BuiltEnvironment(environment, _venv_python(path), path, reused=False, build_s=seconds)
    except OSError as exc:
        raise EnvironmentBuildError(
            f"environment {environment.name!r}: cannot write its venv under {root or cache_root()} "
            f"({exc.strerror or exc}); set {CACHE_ENV} to a writable folder."
        ) from exc


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        found = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write_marker(path: Path, marker: Mapping[str, Any]) -> None:
    temporary = path / (_MARKER + ".tmp")
    temporary.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(temporary, path / _MARKER)


def _build(environment: Environment, path: Path) -> None:
    _create_venv(path)
    python = _venv_python(path)
    if environment.isolated:
        _install_isolated(environment, python)
        return
    # `site.addsitedir` (not a bare path line) so the base's own .pth files take effect in here too.
    lines = [f"import site; site.addsitedir({d!r})" for d in _site_dirs()]
    (_venv_site_packages(path) / "_harness_layer_over_base.pth").write_text("\n".join(lines) + "\n")
    requirements = environment.requirements()
    held: list[str] = []
    if environment.pins_torch:
        pinned = {canonical(p) for p in environment.pins}
        requirements += [c for c in TORCH_COMPANIONS if installed_version(c) and c not in pinned]
    elif installed_version("torch"):
        held = [f"torch=={installed_version('torch')}"]
    _pip_install(environment, python, requirements, constraints=held)


def _install_isolated(environment: Environment, python: Path) -> None:
    """torch and its companions at the current versions (unless torch is pinned), this harness, the pins.

    The harness is installed editable from its checkout, so the environment runs this very code; its
    dependencies are held at the current interpreter's versions, so the harness behaves as it does here.
    """
    source = checkout_root()
    if not (source / "pyproject.toml").is_file():
        raise EnvironmentBuildError(
            f"environment {environment.name!r} is isolated, which installs this harness from its source, but "
            f"{source} holds no pyproject.toml; run the harness from a checkout (`pip install -e <checkout>`), "
            "or drop `isolated: true` for a venv layered over this interpreter."
        )
    pinned = {canonical(p) for p in environment.pins}
    requirements = environment.requirements()
    held: list[str] = []
    if environment.pins_torch:
        requirements += [c for c in TORCH_COMPANIONS if installed_version(c) and c not in pinned]
    else:
        for package in ("torch", *TORCH_COMPANIONS):
            version = installed_version(package)
            if version and canonical(package) not in pinned:
                # `===` where the current build has no local label, as `Environment.requirements` does
                requirements.append(f"{package}{'==' if '+' in version else '==='}{version}")
                held.append(f"{package}=={version}")
    requirements += ["-e", str(source)]
    for package in _harness_dependencies():
        version = installed_version(package)
        if version and canonical(package) not in pinned | {"torch", *TORCH_COMPANIONS}:
            held.append(f"{package}=={version}")
    _pip_install(environment, python, requirements, constraints=held)


def _harness_dependencies() -> list[str]:
    """The names of what the installed harness distribution requires (extras left out)."""
    from packaging.requirements import InvalidRequirement, Requirement

    names: list[str] = []
    for distribution in dict.fromkeys(metadata.packages_distributions().get("harness", [])):
        for written in metadata.requires(distribution) or []:
            try:
                parsed = Requirement(written)
            except InvalidRequirement:
                continue
            if parsed.marker is None:
                names.append(parsed.name)
    return names


def _venv_site_packages(path: Path) -> Path:
    """The venv's own site-packages (POSIX layout: lib/pythonX.Y/site-packages)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return path / "lib" / version / "site-packages"


# --- the consistency check ------------------------------------------------------------------------------

_HAS_REQUIREMENT = re.compile(
    r"(?P<dist>\S+) (?P<version>\S+) has requirement (?P<wanted>.+), "
    r"but you have (?P<dep>\S+) (?P<dep_version>\S+?)\.?$"
)
_NOT_INSTALLED = re.compile(r"(?P<dist>\S+) (?P<version>\S+) requires (?P<dep>\S+), which is not installed\.?$")
_ISOLATE = "or set isolated: true for a venv that does not see the base"
_IMPORTED = "HARNESS-IMPORTS "
_IMPORTING = "HARNESS-IMPORTING "
_NOT_MODULES = frozenset({"tests", "test", "docs", "examples", "benchmarks", "scripts"})
"""Top-level folders some wheels ship by mistake: not what a distribution is imported as."""

_IMPORT_SCRIPT = f"""\
import importlib, importlib.metadata as md, json, re, sys
def canonical(name): return re.sub(r"[-_.]+", "-", name).lower()
modules_of = {{}}
for module, distributions in md.packages_distributions().items():
    for distribution in distributions: modules_of.setdefault(canonical(distribution), set()).add(module)
done = {{"imported": [], "failed": None}}
for distribution in json.loads(sys.argv[1]):
    try: version = md.version(distribution)
    except md.PackageNotFoundError:
        done["failed"] = {{"distribution": distribution, "version": "", "module": "", "error": "not installed"}}
        break
    found = sorted(m for m in modules_of.get(canonical(distribution), ())
                   if m.isidentifier() and not m.startswith("_") and m not in {sorted(_NOT_MODULES)!r})
    own = [m for m in found if canonical(m) == canonical(distribution)]
    for module in own or found:
        print({_IMPORTING!r} + json.dumps([distribution, version, module]), flush=True)
        try: importlib.import_module(module)
        except BaseException as exc:
            text = " ".join(f"{{type(exc).__name__}}: {{exc}}".split())
            done["failed"] = {{"distribution": distribution, "version": version, "module": module, "error": text}}
            break
        done["imported"].append(module)
    if done["failed"]: break
print({_IMPORTED!r} + json.dumps(done), flush=True)
"""
"""Run by the environment's python: imports each distribution's modules, as its own metadata names them."""


@dataclass(frozen=True)
class Installed:
    """A distribution installed in an environment's own folder: what shadows the base, and what it requires."""

    name: str
    version: str
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportFailure:
    """A pinned distribution whose module does not import in the environment."""

    distribution: str
    version: str
    module: str
    error: str


def _check_unless_seen(environment: Environment, path: Path, log: Log) -> None:
    """Check the environment unless it passed a check while seeing exactly the packages it sees now."""
    marker = _read_marker(path)
    seen = _packages_seen(environment, path)
    if marker.get("checked") == seen:
        return
    started = time.perf_counter()
    imported = check_environment(environment, path)
    seconds = time.perf_counter() - started
    _write_marker(path, {**marker, "checked": seen, "check_s": round(seconds, 1)})
    modules = f", imported {', '.join(imported)}" if imported else ""
    log(f"[env] checked {environment.name} in {seconds:.1f} s: pip check clean{modules}")


def _packages_seen(environment: Environment, path: Path) -> str:
    """A fingerprint of the distributions the environment sees (its own and, if layered, the base's)."""
    folders = [_venv_site_packages(path)] + ([] if environment.isolated else [Path(d) for d in _site_dirs()])
    names: list[str] = []
    for folder in folders:
        with contextlib.suppress(OSError):
            names += [f"{folder}/{n}" for n in os.listdir(folder) if n.endswith((".dist-info", ".egg-info", ".pth"))]
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def check_environment(environment: Environment, path: Path) -> list[str]:
    """`pip check` inside the built environment, then an import of each pinned distribution; the modules imported.

    A conflict `pip check` finds (and the current interpreter does not have itself) or a pin that does not
    import raises `EnvironmentBuildError`: one sentence naming both sides and the fix.
    """
    python = _venv_python(path)
    own = installed_in(_venv_site_packages(path))
    base: Callable[[str], str | None] = (lambda _: None) if environment.isolated else installed_version
    conflicts = _pip_check(python)
    if conflicts and not environment.isolated:
        already = set(_pip_check(Path(sys.executable)))
        conflicts = [line for line in conflicts if line not in already]
    if conflicts:
        raise EnvironmentBuildError(conflict_sentence(environment, conflicts, own, base, python=python))
    imported, failure = _import_distributions(python, _distributions_to_import(environment))
    if failure is not None:
        raise EnvironmentBuildError(import_sentence(environment, failure, own, base))
    return imported


def installed_in(site_packages: Path) -> dict[str, Installed]:
    """The distributions in one folder, by canonical name."""
    found: dict[str, Installed] = {}
    for distribution in metadata.distributions(path=[str(site_packages)]):
        name = distribution.metadata["Name"]
        if name:
            found[canonical(name)] = Installed(name, distribution.version, tuple(distribution.requires or ()))
    return found


def _pip_check(python: Path) -> list[str]:
    """What `pip check` says is broken among the distributions `python` sees (empty when nothing is)."""
    command = [sys.executable, "-m", "pip", "--python", str(python), "check", "--disable-pip-version-check"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return []
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return lines or [_last_error(result.stderr)]


def _distributions_to_import(environment: Environment) -> list[str]:
    wanted = list(environment.pins)
    if environment.pins_torch or environment.isolated:
        wanted += [p for p in ("torch", *TORCH_COMPANIONS) if installed_version(p) or canonical(p) in environment.pins]
    return list(dict.fromkeys(wanted))


def _import_distributions(python: Path, distributions: Sequence[str]) -> tuple[list[str], ImportFailure | None]:
    """Import each distribution's modules inside the environment: what imported, and the first failure."""
    if not distributions:
        return [], None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(checkout_root()), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    )
    result = subprocess.run(
        [str(python), "-c", _IMPORT_SCRIPT, json.dumps(list(distributions))],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    lines = result.stdout.splitlines()
    done = next((json.loads(line[len(_IMPORTED) :]) for line in reversed(lines) if line.startswith(_IMPORTED)), None)
    if done is not None:
        failed = done["failed"]
        return list(done["imported"]), ImportFailure(**failed) if failed else None
    # the interpreter died while importing (a crash in compiled code): the last module it announced
    started = [json.loads(line[len(_IMPORTING) :]) for line in lines if line.startswith(_IMPORTING)]
    distribution, version, module = started[-1] if started else (distributions[0], "", distributions[0])
    return [], ImportFailure(distribution, version, module, f"the interpreter died ({_exit_status(result)})")


def _exit_status(result: subprocess.CompletedProcess[str]) -> str:
    last = (result.stderr.strip().splitlines() or [""])[-1].strip()
    code = f"signal {-result.returncode}" if result.returncode < 0 else f"exit status {result.returncode}"
    return f"{code}: {last}" if last else code


def conflict_sentence(
    environment: Environment,
    conflicts: Sequence[str],
    own: Mapping[str, Installed],
    base: Callable[[str], str | None] = installed_version,
    *,
    python: Path | None = None,
) -> str:
    """One sentence for what `pip check` found: both sides of the first conflict, and the fix."""
    what, fix = _one_conflict(environment, conflicts[0], own, base)
    more = ""
    if len(conflicts) > 1:
        listed = f"`pip --python {python} check` lists them" if python else "`pip check` lists them"
        more = f" ({len(conflicts) - 1} more conflict{'s' if len(conflicts) > 2 else ''}: {listed})"
    return f"environment {environment.name!r}: {what}{more}; {fix}."


def _one_conflict(
    environment: Environment, line: str, own: Mapping[str, Installed], base: Callable[[str], str | None]
) -> tuple[str, str]:
    """What one line of `pip check` means here, and what fixes it."""

    def here(name: str) -> bool:
        return environment.isolated or canonical(name) in own

    has = _HAS_REQUIREMENT.fullmatch(line)
    if has:
        dist, version, wanted, dep, dep_version = has.group("dist", "version", "wanted", "dep", "dep_version")
        if here(dist) and here(dep):
            return (
                f"{dist} {version} needs {wanted} but this environment has {dep} {dep_version}",
                f"pin {dep} in this environment to a release matching {wanted}",
            )
        if here(dep):  # the environment's copy shadows the base's, which a package of the base needs
            below = base(dep)
            over = f" over the base's {below}" if below else ""
            return (
                f"{_who_brought(dep, environment, own)}this environment holds {dep} {dep_version}{over}, "
                f"but the base's {dist} {version} needs {wanted}",
                f"pin {dist} in this environment too, to a release that accepts {dep} {dep_version}, {_ISOLATE}",
            )
        if here(dist):
            return (
                f"{dist} {version} needs {wanted} but the base has {dep} {dep_version}",
                f"pin {dep} in this environment too, to a release matching {wanted}, {_ISOLATE}",
            )
        return (
            f"the base's {dist} {version} needs {wanted} but the base has {dep} {dep_version}",
            f"fix the base ({sys.executable} -m pip check), {_ISOLATE}",
        )
    missing = _NOT_INSTALLED.fullmatch(line)
    if missing:
        dist, version, dep = missing.group("dist", "version", "dep")
        where = "in this environment" if environment.isolated else "in this environment or the base"
        return f"{dist} {version} needs {dep}, which is not installed {where}", f"pin {dep} in this environment too"
    also = "" if environment.isolated else f", {_ISOLATE}"
    return f"`pip check` inside it says: {line.rstrip('.')}", f"pin the packages it names in this environment too{also}"


def _who_brought(dep: str, environment: Environment, own: Mapping[str, Installed]) -> str:
    """`litgpt 0.5.13 needs huggingface-hub<1.4,>=0.30, so ` for the environment's package that wanted `dep`."""
    from packaging.requirements import InvalidRequirement, Requirement

    pinned = {canonical(p) for p in environment.pins}
    for _, installed in sorted(own.items(), key=lambda item: (item[0] not in pinned, item[0])):
        for written in installed.requires:
            try:
                parsed = Requirement(written)
            except InvalidRequirement:
                continue
            if canonical(parsed.name) != canonical(dep):
                continue
            if parsed.marker is not None and not parsed.marker.evaluate({"extra": ""}):
                continue
            return f"{installed.name} {installed.version} needs {parsed.name}{parsed.specifier}, so "
    return ""


def import_sentence(
    environment: Environment,
    failure: ImportFailure,
    own: Mapping[str, Installed],
    base: Callable[[str], str | None] = installed_version,
) -> str:
    """One sentence for a pinned distribution that does not import: the error, what shadows what, the fix."""
    error = failure.error if len(failure.error) <= 300 else failure.error[:299] + "…"
    installed = f"{failure.distribution} {failure.version}".strip()
    what = f"{installed} is installed but `import {failure.module}` fails ({error.rstrip('.')})"
    if failure.error == "not installed":
        what = f"{failure.distribution} is not installed after pip installed the pins"
    shadows = [
        f"this environment's {d.name} {d.version} shadows the base's {below}"
        for d in own.values()
        if (below := base(d.name))
        and _public(below) != _public(d.version)
        and canonical(d.name).replace("-", "_") in failure.error.lower()
    ]
    if shadows:
        what += ", where " + " and ".join(shadows)
    if canonical(failure.distribution) in ("torch", *TORCH_COMPANIONS) and environment.pins_torch:
        fix = "pin versions built for one another (e.g. the torchvision released with that torch)"
    elif environment.isolated:
        fix = "pin versions that work together in this environment (the error names the package at fault)"
    else:
        fix = f"pin the package it names in this environment too, {_ISOLATE}"
    return f"environment {environment.name!r}: {what}; {fix}."


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
