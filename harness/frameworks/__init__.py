"""Framework adapters: a framework's own vocabulary, its own way of building an optimizer from a model, and the
conventions it trains with, so that a matrix tests exactly the framework's code.

An adapter is any object with the attributes of `FrameworkAdapter` (a Protocol: nothing to inherit). The built-in
ones are `transformers` (Hugging Face's `Trainer.create_optimizer()`), `litgpt` (LitGPT's
`instantiate_torch_optimizer`) and `timm` (`timm.optim.create_optimizer_v2`). A third party registers its own
in its `pyproject.toml`, the way pytest finds plugins (`pytest11`)::

    [project.entry-points."harness.frameworks"]
    myframework = "myframework.harness_adapter:ADAPTER"

A matrix then names the adapter as a builder (`builders: [myframework]`) and, where the framework has a
vocabulary of its own, its names as optimizers (`myframework:*`, `myframework:NAME`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from harness.errors import HarnessError
from harness.wording import unknown

if TYPE_CHECKING:  # listing a matrix's cells never imports torch
    import torch

ENTRY_POINT_GROUP = "harness.frameworks"
"""The entry-point group third-party adapters register under."""

BUILT_IN: dict[str, str] = {
    "transformers": "harness.frameworks.transformers:ADAPTER",
    "litgpt": "harness.frameworks.litgpt:ADAPTER",
    "timm": "harness.frameworks.timm:ADAPTER",
}
"""The adapters this package ships, by builder name, as `module:attribute` (imported only when used)."""

StepFunction = Callable[[Any, Any], None]
"""A framework's own step: given the optimizer and the loss (not yet backpropagated), update the parameters."""


@dataclass(frozen=True)
class Conventions:
    """How a framework trains with an optimizer: what the harness's loop does around each step.

    - `train_eval`: call `optimizer.train()` before training and `optimizer.eval()` before evaluating or saving
      (schedule-free optimizers keep two sets of weights);
    - `closure`: pass `step()` a closure that recomputes the loss (LBFGS needs one; frameworks pass none);
    - `layerwise`: the optimizer updates each parameter in a gradient hook during `backward()` (GaLore's and
      APOLLO's layerwise variants), so `step()` is the framework's no-op;
    - `step`: a step function of the framework's own that replaces `backward()` and `step()` (LOMO's
      `fused_backward`).
    """

    train_eval: bool = False
    closure: bool = False
    layerwise: bool = False
    step: StepFunction | None = field(default=None, compare=False)

    def describe(self) -> list[str]:
        """The conventions in words, for the record (`built["conventions"]`)."""
        words = []
        if self.train_eval:
            words.append("optimizer.train()/eval()")
        words.append("closure" if self.closure else "no closure")
        if self.layerwise:
            words.append("layerwise updates in gradient hooks")
        if self.step is not None:
            words.append(f"framework step {getattr(self.step, '__name__', 'function')}")
        return words


@dataclass(frozen=True)
class FrameworkBuild:
    """What an adapter built: the optimizer, the conventions the framework trains it with, and kwargs it dropped."""

    optimizer: torch.optim.Optimizer
    conventions: Conventions = Conventions()
    dropped_kwargs: list[str] = field(default_factory=list)
    absorbed_kwargs: list[str] = field(default_factory=list)


@runtime_checkable
class FrameworkAdapter(Protocol):
    """What the harness needs to know of a framework to test its optimizer code."""

    name: str
    """The builder name a matrix uses (`transformers`); also the prefix of its own optimizer names."""
    distribution: str
    """The pip distribution (`transformers`): its version goes in every record's env; `bisect --package` takes it."""
    module: str
    """The module to import once per warm runner (`transformers`): its absence skips the cells."""

    def names(self) -> list[str]:
        """Every optimizer name the installed framework accepts (`OptimizerNames`), for `NAME:*`; [] if it has none."""
        ...

    def accepts(self, optimizer: str) -> bool:
        """Whether this framework builds the matrix's optimizer name (`transformers:adamw_torch`, a class path)."""
        ...

    def build(self, optimizer: str, model: torch.nn.Module, settings: Mapping[str, Any]) -> FrameworkBuild:
        """Build `optimizer` for `model` the framework's own way, from the framework's configuration keys."""
        ...


def is_framework(builder: str) -> bool:
    """Whether a builder name is a framework adapter (built in, or registered by entry point)."""
    return builder in BUILT_IN or builder in _entry_points()


def framework_names() -> list[str]:
    """Every adapter's builder name: the built-in ones, then those registered by entry point."""
    return [*BUILT_IN, *(name for name in sorted(_entry_points()) if name not in BUILT_IN)]


def pairs(optimizer: str, builder: str) -> bool:
    """Whether a matrix makes a cell of this optimizer and builder: a framework's own names (`transformers:NAME`)
    only with that framework's builder, and a framework's builder only with the names it accepts."""
    prefix = framework_prefix(optimizer)
    if prefix is not None:
        return builder == prefix
    if not is_framework(builder):
        return True
    try:
        return get_adapter(builder).accepts(optimizer)
    except HarnessError:
        return True  # an adapter that cannot load: its cells say why when they run


def framework_prefix(optimizer: str) -> str | None:
    """`transformers` for `transformers:adamw_torch` when that is an adapter's own vocabulary; else None.

    `timm:NAME` stays timm's registry, which every builder can build; a module family (`torch.optim:*`) is no
    adapter's.
    """
    prefix, colon, _ = optimizer.partition(":")
    if not colon or prefix == "timm" or "." in prefix:
        return None
    return prefix if is_framework(prefix) else None


def get_adapter(name: str) -> FrameworkAdapter:
    """The adapter a builder names; its framework not installed raises `MissingDependency` (the cell is skipped)."""
    target = BUILT_IN.get(name) or _entry_points().get(name)
    if target is None:
        raise HarnessError(unknown("framework adapter", name, framework_names()))
    return _load(name, target)


@functools.cache
def _load(name: str, target: str) -> FrameworkAdapter:
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HarnessError(f"The framework adapter {name!r} ({target}) cannot be imported: {exc}") from exc
    adapter = getattr(module, attribute, None)
    if inspect.isclass(adapter):
        adapter = adapter()
    if not isinstance(adapter, FrameworkAdapter):
        raise HarnessError(
            f"The framework adapter {name!r} ({target}) is not one: it needs the attributes name, distribution, "
            "module, names(), accepts() and build() (see harness.frameworks.FrameworkAdapter)."
        )
    return adapter


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, str]:
    return {entry.name: entry.value for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def default_conventions(optimizer: torch.optim.Optimizer) -> Conventions:
    """The conventions a framework follows with an optimizer it did not build itself.

    A closure only where `step()` needs one (a required `closure` argument, or LBFGS, which re-evaluates the loss);
    `train()`/`eval()` where the optimizer has both (schedule-free optimizers).
    """
    return Conventions(train_eval=has_train_eval(optimizer), closure=needs_closure(optimizer))


def has_train_eval(optimizer: Any) -> bool:
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `step()` must be given a closure: LBFGS, or a step whose `closure` argument has no default."""
    import torch

    if isinstance(optimizer, torch.optim.LBFGS):
        return True
    try:
        parameter = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty


def class_path(obj: Any) -> str:
    """`torch.optim.adamw.AdamW`: where the class of `obj` is defined."""
    cls = obj if inspect.isclass(obj) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's effective settings without its tensors: what the record's `built["kwargs"]` holds."""
    return [{key: _plain(value) for key, value in group.items() if key != "params"} for group in optimizer.param_groups]


def _plain(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)[:200]
