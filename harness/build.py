"""Build an optimizer the way a framework would: the cell's `builder` axis.

- `direct`: `factory(params, **kwargs)`, what a framework that always passes `fused` does;
- `signature`: drop every kwarg the factory's signature does not name (the common fix; it drops typos too);
- `safe`: `build_optimizer`, this project's fix (below);
- `package.module:function`: a framework's own helper, called as `function(optimizer_name, params, **kwargs)`.

`build_optimizer` drops only acceleration hints (`ACCELERATION_HINTS`) that the class or the parameters' device/dtype
cannot take, keeps what the class takes through `**kwargs` (reported as absorbed) and raises on any
other unknown kwarg, naming the nearest valid one, so a typo is never dropped silently.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.checks import check_builder
from harness.classify import classify_error
from harness.errors import HarnessError
from harness.frameworks import Conventions
from harness.resolve import ResolvedOptimizer, import_module, resolve_optimizer
from harness.vocabulary import ACCELERATION_HINTS
from harness.wording import quote, unknown

# The hints choose an implementation, not the maths, so dropping one changes only speed. `differentiable`
# is not one: it changes what autograd can see through `step()`, so it is never dropped.


class UnexpectedKwargError(HarnessError, TypeError):
    """A kwarg the optimizer does not take and that is no droppable hint (most often a typo)."""


class KwargTypeError(HarnessError, TypeError):
    """A kwarg given as a string where the optimizer's default is a number or a bool (e.g. YAML's `lr: 1e-3`)."""


class DroppedKwargsWarning(UserWarning):
    """`build_optimizer` dropped acceleration hints the optimizer or the device cannot take."""


@dataclass(frozen=True)
class Built:
    """An optimizer and what its builder did to the kwargs on the way."""

    optimizer: torch.optim.Optimizer
    dropped_kwargs: list[str] = field(default_factory=list)
    absorbed_kwargs: list[str] = field(default_factory=list)
    conventions: Conventions | None = None
    """How the framework that built it trains it (a framework adapter says); None: `default_conventions`."""


def build(
    builder: str,
    resolved: ResolvedOptimizer,
    params: Iterable[Any],
    kwargs: Mapping[str, Any],
    *,
    device: str,
) -> Built:
    """Build the optimizer `resolved` over `params` with `kwargs` through the named builder.

    `device` is where the parameters live; the safe builder checks hints against it when `params` is empty.
    """
    kwargs = dict(kwargs)
    if builder == "direct":
        _, absorbed = _split_by_signature(resolved.factory, kwargs)
        return Built(resolved.factory(params, **kwargs), absorbed_kwargs=absorbed)
    if builder == "signature":
        unnamed, absorbed = _split_by_signature(resolved.factory, kwargs)
        dropped = [] if absorbed else unnamed
        kept = {k: v for k, v in kwargs.items() if k not in dropped}
        return Built(resolved.factory(params, **kept), dropped_kwargs=dropped, absorbed_kwargs=absorbed)
    if builder == "safe":
        return _build_safe(resolved.factory, params, kwargs, fallback_device=device)
    function = load_builder(builder)
    optimizer = function(resolved.name, params, **kwargs)
    # A framework that builds through `build_optimizer` reports what it dropped: keep that.
    return Built(
        optimizer,
        dropped_kwargs=list(getattr(optimizer, "dropped_kwargs", [])),
        absorbed_kwargs=list(getattr(optimizer, "absorbed_kwargs", [])),
    )


def load_builder(builder: str) -> Callable[..., Any]:
    """The function a `package.module:function` builder names; a named builder or a bad path raises."""
    problem = check_builder(builder)
    if problem is not None:
        raise HarnessError(problem)
    module_name, _, function_name = builder.partition(":")
    try:
        module = import_module(module_name, what=f"of builder {quote(builder)}")
    except ModuleNotFoundError as exc:
        raise HarnessError(
            f"Builder {builder!r} names module {module_name!r}, which cannot be imported: {exc}."
        ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise HarnessError(
            f"builder {quote(builder)}: {unknown('function', function_name, names, where=f' in {module_name}')}"
        )
    return function


def build_optimizer(
    optimizer: type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] | str,
    params: Iterable[Any],
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build `optimizer` over `params` with `kwargs`, dropping only the acceleration hints it cannot take.

    `optimizer` is a class, a factory `f(params, **kwargs)`, or a name (`"bitsandbytes.optim.AdamW8bit"`,
    `"AdamW"`, `"timm:lion"`). A hint (`fused`, `foreach`, `capturable`) is dropped when the optimizer does
    not take it, or when it is set and the parameters' device or dtype cannot run it (the optimizer is tried
    on a one-tensor stand-in, so a hint torch only checks at the first `step()` is caught here). Dropped hints
    are reported by a `DroppedKwargsWarning` and in `optimizer.dropped_kwargs`; kwargs the optimizer takes
    only through `**kwargs` are kept and listed in `optimizer.absorbed_kwargs`. Any other kwarg the
    optimizer does not take raises `UnexpectedKwargError` (a `TypeError`) naming the nearest valid one.
    """
    factory = resolve_optimizer(optimizer).factory if isinstance(optimizer, str) else optimizer
    built = _build_safe(factory, params, kwargs, fallback_device=None)
    if built.dropped_kwargs:
        them = "them" if len(built.dropped_kwargs) > 1 else "it"
        warnings.warn(
            f"build_optimizer dropped {', '.join(built.dropped_kwargs)} for {_name(factory)}: "
            f"it cannot take {them}, at least not on these parameters' device and dtype.",
            DroppedKwargsWarning,
            stacklevel=2,
        )
    for attribute in ("dropped_kwargs", "absorbed_kwargs"):
        try:
            setattr(built.optimizer, attribute, getattr(built, attribute))
        except AttributeError:  # an optimizer with __slots__: the warning still reports the drop
            pass
    return built.optimizer


def _build_safe(
    factory: Callable[..., Any], params: Iterable[Any], kwargs: Mapping[str, Any], *, fallback_device: str | None
) -> Built:
    params = list(params)
    signature = _signature(factory)
    named = _named_parameters(signature)
    takes_var_kwargs = signature is None or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    absorbed: list[str] = []
    for key, value in kwargs.items():
        if key in named:
            _check_type(factory, key, value, signature)
            kept[key] = value
        elif key in ACCELERATION_HINTS and not takes_var_kwargs:
            dropped.append(key)
        elif takes_var_kwargs:
            kept[key] = value
            absorbed.append(key)
        else:
            raise UnexpectedKwargError(_unexpected_message(factory, key, named))
    others = {k: v for k, v in kept.items() if k not in ACCELERATION_HINTS}
    for hint in ACCELERATION_HINTS:
        if hint in named and kept.get(hint) and not _hint_runs(factory, hint, others, params, fallback_device):
            del kept[hint]
            dropped.append(hint)
    return Built(factory(params, **kept), dropped_kwargs=dropped, absorbed_kwargs=absorbed)


def _hint_runs(
    factory: Callable[..., Any],
    hint: str,
    others: Mapping[str, Any],
    params: list[Any],
    fallback_device: str | None,
) -> bool:
    """Whether `hint=True` works on every (device, dtype) the parameters use.

    torch checks fused/capturable support only at the first `step()`, and which devices and dtypes each
    class supports differs across torch versions, so the class itself is asked: it takes one step with the
    hint (and the other kwargs) on a one-tensor stand-in of each (device, dtype). The hint is dropped only
    when that step fails naming the device or dtype and the same step without the hint works.
    """
    kinds = _device_dtypes(params) or {(torch.device(fallback_device or "cpu"), torch.get_default_dtype())}
    for device, dtype in kinds:
        if _known_unsupported(factory, hint, device, dtype):
            return False
        failure = _probe(factory, {**others, hint: True}, device, dtype)
        if failure is None:
            continue
        reason = classify_error(failure, device=device.type, dtype=str(dtype).removeprefix("torch."))
        if reason in ("unsupported_device", "unsupported_dtype") and _probe(factory, others, device, dtype) is None:
            return False
    return True


def _probe(
    factory: Callable[..., Any], kwargs: Mapping[str, Any], device: torch.device, dtype: torch.dtype
) -> Exception | None:
    """The error one step on a small stand-in parameter raises, or None when the step works."""
    try:
        stand_in = torch.zeros(2, 2, device=device, dtype=dtype, requires_grad=True)
        stand_in.grad = torch.zeros_like(stand_in)
        factory([stand_in], **kwargs).step()
    except Exception as exc:  # asking the class: its error is the answer, not a failure
        return exc
    return None


def _known_unsupported(factory: Callable[..., Any], hint: str, device: torch.device, dtype: torch.dtype) -> bool:
    """torch's own lists, for torch's classes: a device type it has no fused/capturable kernel for."""
    cls = _underlying_class(factory)
    if cls is None or not cls.__module__.startswith("torch.optim"):
        return False
    from torch.optim import optimizer as torch_optimizer

    if hint == "fused":
        if not torch.is_floating_point(torch.empty(0, dtype=dtype)):
            return True
        supported = getattr(torch_optimizer, "_get_fused_kernels_supported_devices", None)
        return supported is not None and device.type not in supported()
    if hint == "capturable":
        supported = getattr(torch_optimizer, "_get_capturable_supported_devices", None)
        return supported is not None and device.type not in supported()
    return False


def _device_dtypes(params: list[Any]) -> set[tuple[torch.device, torch.dtype]]:
    found = set()
    for item in params:
        group = item.get("params", []) if isinstance(item, Mapping) else item
        if isinstance(group, torch.Tensor):
            group = [group]
        tensors = list(group) if isinstance(group, (list, tuple)) else []
        for tensor in tensors:
            if isinstance(tensor, tuple) and len(tensor) == 2:  # named parameters: (name, tensor)
                tensor = tensor[1]
            if isinstance(tensor, torch.Tensor):
                found.add((tensor.device, tensor.dtype))
    return found


def _split_by_signature(factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(kwargs the signature does not name, the same when the factory takes `**kwargs` else [])."""
    signature = _signature(factory)
    if signature is None:
        return [], list(kwargs)
    unnamed = [k for k in kwargs if k not in _named_parameters(signature)]
    takes_var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return unnamed, unnamed if takes_var_kwargs else []


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # no introspectable signature: treat as taking **kwargs
        return None


def _named_parameters(signature: inspect.Signature | None) -> list[str]:
    if signature is None:
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [name for name, p in signature.parameters.items() if p.kind not in variadic]


def _check_type(factory: Callable[..., Any], key: str, value: Any, signature: inspect.Signature | None) -> None:
    default = signature.parameters[key].default if signature is not None else inspect.Parameter.empty
    if isinstance(value, str) and isinstance(default, (bool, int, float)) and default is not None:
        raise KwargTypeError(
            f"Keyword argument {key}={value!r} for {_name(factory)} is a string, but its default {default!r} is a "
            f"{type(default).__name__}; write it as a number or bool (YAML reads 1e-3 as a string: write 1.0e-3)."
        )


def _unexpected_message(factory: Callable[..., Any], key: str, named: list[str]) -> str:
    candidates = [n for n in named if n not in ("self", "params")]
    return unknown("keyword argument", key, candidates, where=f" for {_name(factory)}")


def _underlying_class(factory: Callable[..., Any]) -> type | None:
    while not inspect.isclass(factory) and hasattr(factory, "func"):  # functools.partial
        factory = factory.func
    return factory if inspect.isclass(factory) else None


def _name(factory: Callable[..., Any]) -> str:
    target = _underlying_class(factory) or factory
    return getattr(target, "__name__", repr(target))
