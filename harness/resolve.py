"""From a matrix's optimizer entry to concrete names (`expand_optimizer`) and to a factory (`resolve_optimizer`).

Names come in four forms:
- an import path, `bitsandbytes.optim.AdamW8bit`;
- a short torch name, `AdamW` (= `torch.optim.AdamW`);
- a module family, `bitsandbytes.optim:*8bit`: the module's exported optimizer classes matching the pattern;
- timm's registry, `timm:adamw` or `timm:*adam*` (a wildcard keeps only optimizers timm implements itself).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from harness.errors import HarnessError, UnknownOptimizerError
from harness.frameworks import FrameworkAdapter, framework_prefix, get_adapter
from harness.quiet import quiet_import
from harness.wording import quote, unknown

OPTIMIZER_PACKAGES = ("torch", "bitsandbytes", "grokadamw", "timm")
"""The optimizer packages whose versions every record's environment lists."""

_PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow"}
"""Import names whose pip name differs; any other top-level import name is its own pip name."""


class PackageImportError(HarnessError, ImportError):
    """A package an optimizer, a builder or a framework needs could not be imported; `package` is its pip name."""

    def __init__(self, message: str, *, package: str):
        super().__init__(message)
        self.package = package


class MissingDependency(PackageImportError):
    """The package an optimizer (or a builder) comes from is not installed: the cell is skipped."""


class BrokenImport(PackageImportError):
    """The package is installed but raises while importing (an `undefined symbol` after a torch upgrade, a
    dependency it needs that is gone): the cell fails with reason `import_error`, never `skipped`."""


def is_installed(import_name: str) -> bool:
    """Whether the top-level package of `import_name` can be found (a distribution or a module on the path),
    without importing it."""
    top = import_name.split(".")[0]
    if package_version(pip_name(top)) is not None:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def import_module(module_name: str, *, what: str = "") -> ModuleType:
    """Import a module, telling an absent package (`MissingDependency`) from an installed one that raises while
    importing (`BrokenImport`); what it prints goes to the records' env, not the terminal.

    `what` names who needs the module in the messages ("of builder 'litgpt.utils:f'"). A `ModuleNotFoundError`
    for a submodule of an installed package propagates for the caller to word.
    """
    top = module_name.split(".")[0]
    package = pip_name(top)
    of = f" ({what})" if what else ""
    try:
        return quiet_import(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or top
        if missing == top and not is_installed(top):
            raise MissingDependency(f"{package}{of} is not installed: pip install {package}", package=package) from exc
        if module_name == missing or module_name.startswith(missing + "."):
            raise  # a module the installed package does not have: a name to correct, not a broken import
        raise BrokenImport(_broken(package, of, exc), package=package) from exc
    except Exception as exc:
        raise BrokenImport(_broken(package, of, exc), package=package) from exc


def load_framework(builder: str) -> FrameworkAdapter:
    """The adapter a builder names, its framework imported: `MissingDependency` when the framework is not
    installed, `BrokenImport` when it is but raises while importing."""
    adapter = get_adapter(builder)
    import_module(adapter.module, what=f"the framework of builder {quote(builder)}")
    return adapter


def _broken(package: str, of: str, exc: BaseException) -> str:
    version = package_version(package)
    installed = f"{package} {version}" if version else package
    if isinstance(exc, ModuleNotFoundError) and exc.name and not is_installed(exc.name):
        needed = pip_name(exc.name)
        return (
            f"{installed}{of} is installed but cannot be imported: it needs {needed}, which is not installed "
            f"(pip install {needed}): {exc}"
        )
    return f"{installed}{of} is installed but raises while importing: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class ResolvedOptimizer:
    """A concrete optimizer: `factory(params, **kwargs)` builds it."""

    name: str
    factory: Callable[..., Any]
    cls: type
    package: str
    version: str | None


def pip_name(import_name: str) -> str:
    """The pip name of the distribution that provides the top-level module of `import_name`."""
    top = import_name.split(".")[0]
    return _PIP_NAMES.get(top, top)


def package_version(package: str) -> str | None:
    """The installed version of a pip package, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def optimizer_package_versions() -> dict[str, str | None]:
    """Versions of the known optimizer packages (None where not installed), without importing them."""
    return {package: package_version(package) for package in OPTIMIZER_PACKAGES}


def expand_optimizer(name: str) -> list[str]:
    """The concrete optimizer names a matrix entry stands for (see the module docstring for the forms).

    A family whose package is not installed expands to `[name]`, so its cell is skipped at run time with
    `missing_dependency`; a name or pattern that matches nothing in an installed package raises
    `UnknownOptimizerError` with the close matches and the available names.
    """
    if ":" in name:
        module_name, pattern = name.split(":", 1)
        if framework_prefix(name) is not None:
            return _expand_framework(name, module_name, pattern)
        if not module_name or not pattern:
            raise UnknownOptimizerError(
                f"Optimizer family {name!r} needs the form 'module:PATTERN', e.g. 'torch.optim:*' or 'timm:*adam*'."
            )
        if module_name == "timm":
            return _expand_timm(name, pattern)
        return _expand_module(name, module_name, pattern)
    if "." not in name:
        return [_torch_short_name(name)]
    try:
        resolve_optimizer(name)
    except PackageImportError:
        pass  # its cells record it at run time: `skipped` when absent, `import_error` when broken
    return [name]


def resolve_optimizer(name: str) -> ResolvedOptimizer:
    """Import the optimizer a concrete name stands for.

    Raises `MissingDependency` (with the pip name) when its package is not installed, and
    `UnknownOptimizerError` (with close matches) when the package has no such optimizer.
    """
    if name.startswith("timm:"):
        return _resolve_timm(name)
    if ":" in name:
        _import(name.split(":", 1)[0])  # a family stands unexpanded when its package is absent or broken: say so
        raise UnknownOptimizerError(
            f"Optimizer {name!r} is a family, not one optimizer; expand it with expand_optimizer() first."
        )
    if "." not in name:
        name = _torch_short_name(name)
    module_name, class_name = name.rsplit(".", 1)
    module = _import(module_name)
    obj = getattr(module, class_name, None)
    if obj is None:
        candidates = _optimizer_classes(module)
        raise UnknownOptimizerError(_unknown(class_name, candidates, where=f"module {module_name!r}"))
    if not inspect.isclass(obj):
        raise UnknownOptimizerError(
            f"Optimizer {name!r} is a {type(obj).__name__}, not an optimizer class; "
            f"name a class such as {module_name}.{(_optimizer_classes(module) or ['SGD'])[0]}."
        )
    package = pip_name(module_name)
    return ResolvedOptimizer(name=name, factory=obj, cls=obj, package=package, version=_version(package, module))


def _torch_short_name(name: str) -> str:
    import torch.optim

    if name in _optimizer_classes(torch.optim):
        return f"torch.optim.{name}"
    raise UnknownOptimizerError(_unknown(name, _optimizer_classes(torch.optim), where="torch.optim"))


def _expand_module(name: str, module_name: str, pattern: str) -> list[str]:
    try:
        module = _import(module_name)
    except PackageImportError:
        return [name]
    classes = _optimizer_classes(module)
    matched = [c for c in classes if fnmatch.fnmatchcase(c, pattern)]
    if not matched:
        raise UnknownOptimizerError(_unknown(pattern, classes, where=f"module {module_name!r}"))
    return [f"{module_name}.{c}" for c in matched]


def _expand_framework(name: str, prefix: str, pattern: str) -> list[str]:
    """`transformers:*`: the names the installed framework accepts; an explicit name stands as written (a release
    that does not know it fails its cells, which is what `bisect` over the framework's releases looks for)."""
    if not _has_wildcard(pattern):
        return [name]
    adapter = get_adapter(prefix)
    try:
        import_module(adapter.module)
    except PackageImportError:
        return [name]  # its cells are skipped (absent) or fail with import_error (broken) when they run
    available = adapter.names()
    matched = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
    if not matched:
        raise UnknownOptimizerError(_unknown(pattern, available, where=f"{prefix}'s optimizer names"))
    return [f"{prefix}:{n}" for n in matched]


def _expand_timm(name: str, pattern: str) -> list[str]:
    try:
        timm_optim = _import("timm.optim")
    except PackageImportError:
        return [name]
    names: list[str] = timm_optim.list_optimizers(pattern)
    if _has_wildcard(pattern):
        names = [n for n in names if _timm_class_path(timm_optim.get_optimizer_info(n)).startswith("timm.")]
    if not names:
        raise UnknownOptimizerError(_unknown(pattern, timm_optim.list_optimizers(), where="timm's registry"))
    return [f"timm:{n}" for n in names]


def _resolve_timm(name: str) -> ResolvedOptimizer:
    timm_optim = _import("timm.optim")
    registry_name = name.split(":", 1)[1]
    available: list[str] = timm_optim.list_optimizers()
    if registry_name.lower() not in available:
        raise UnknownOptimizerError(_unknown(registry_name, available, where="timm's registry"))
    info = timm_optim.get_optimizer_info(registry_name)
    if isinstance(info.opt_class, str):
        # timm asserts CUDA before importing apex/bitsandbytes classes; import them here so a
        # missing package skips the cell and a missing device fails in the optimizer, as elsewhere.
        module_name, class_name = info.opt_class.rsplit(".", 1)
        cls = getattr(_import(module_name), class_name)
        factory: Callable[..., Any] = functools.partial(cls, **info.defaults) if info.defaults else cls
    else:
        cls = info.opt_class
        factory = timm_optim.get_optimizer_class(registry_name, bind_defaults=True)
    return ResolvedOptimizer(name=name, factory=factory, cls=cls, package="timm", version=package_version("timm"))


def _timm_class_path(info: Any) -> str:
    cls = info.opt_class
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


def _import(module_name: str) -> ModuleType:
    """Import an optimizer's module: `MissingDependency` for an absent package, `BrokenImport` for one that raises
    while importing, `UnknownOptimizerError` for a module an installed package does not have."""
    try:
        return import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UnknownOptimizerError(_unknown_module(exc.name or module_name)) from exc


def _unknown_module(missing: str) -> str:
    parent_name, _, child = missing.rpartition(".")
    try:
        parent = importlib.import_module(parent_name)
    except ImportError:
        return f"Module {quote(missing)} does not exist."
    found = pkgutil.iter_modules(getattr(parent, "__path__", []))
    children = sorted(m.name for m in found if not m.name.startswith("_"))
    return unknown("module", child, children, where=f" in {parent_name}")


def _optimizer_classes(module: ModuleType) -> list[str]:
    """Sorted names of the `torch.optim.Optimizer` subclasses a module exports (its `__all__`, else its names)."""
    import torch.optim

    exported = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    names = []
    for attr in exported:
        obj = getattr(module, attr, None)
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            names.append(attr)
    return sorted(names)


def _version(package: str, module: ModuleType) -> str | None:
    version = package_version(package)
    if version is None:
        top = importlib.import_module(module.__name__.split(".")[0])
        version = getattr(top, "__version__", None)
    return version


def _has_wildcard(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _unknown(name: str, available: list[str], *, where: str) -> str:
    """`unknown optimizer 'AdamW8' in ...: did you mean 'AdamW8bit'? Available: ...`."""
    return unknown("optimizer", name, available, where=f" in {where}", n=3)
