"""Where a record came from: its `Environment`, as the record's `env` JSON holds it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.measurements._read import mapping, text

_ENV_STR_KEYS = (
    "python",
    "torch",
    "device_name",
    "device",
    "optimizer_package",
    "optimizer_package_version",
    "framework",
    "framework_version",
)


@dataclass(frozen=True)
class Environment:
    """Where a record came from: python, torch, the optimizer packages' versions and the device's name.

    A runner that died leaves a reduced one, written by the parent process: python, torch and `device`.
    """

    python: str | None = None
    torch: str | None = None
    """torch's version, local suffix included (`2.14.1+cu130`)."""
    packages: Mapping[str, str | None] | None = None
    """Every known optimizer package's version, None where not installed."""
    device_name: str | None = None
    device: str | None = None
    """Only in a reduced environment: the cell's device."""
    optimizer_package: str | None = None
    optimizer_package_version: str | None = None
    import_messages: Mapping[str, str] | None = None
    """What optimizer packages printed while they were imported, by module (`harness.quiet`)."""
    framework: str | None = None
    """The distribution of the framework adapter that built the optimizer (`transformers`), if one did."""
    framework_version: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys of the JSON this version does not know, kept as read."""

    @property
    def torch_release(self) -> str:
        """torch's version without its local suffix (`2.11.0+cu130` -> `2.11.0`), or `unknown`."""
        return (self.torch or "").split("+", 1)[0].strip() or "unknown"

    @property
    def is_reduced(self) -> bool:
        """Whether this is all a parent process could tell of a cell whose runner died."""
        full = (
            self.packages,
            self.device_name,
            self.optimizer_package,
            self.optimizer_package_version,
            self.import_messages,
            self.framework,
        )
        told = (self.python, self.torch, self.device)
        return all(value is None for value in full) and not self.extra and any(v is not None for v in told)

    def machine(self) -> dict[str, Any]:
        """The JSON of what every cell on one machine shares: without the keys that vary per cell."""
        per_cell = ("optimizer_package", "optimizer_package_version", "device", "framework", "framework_version")
        return {key: value for key, value in self.to_dict().items() if key not in per_cell}

    def to_dict(self) -> dict[str, Any]:
        env: dict[str, Any] = {}
        if self.python is not None or self.torch is not None:  # every writer writes both, null or not
            env.update(python=self.python, torch=self.torch)
        if self.packages is not None:
            env["packages"] = dict(self.packages)
        if self.device_name is not None:
            env["device_name"] = self.device_name
        if self.device is not None:
            env["device"] = self.device
        if self.optimizer_package is not None:
            env.update(
                optimizer_package=self.optimizer_package, optimizer_package_version=self.optimizer_package_version
            )
        if self.import_messages:
            env["import_messages"] = dict(self.import_messages)
        if self.framework is not None:
            env.update(framework=self.framework, framework_version=self.framework_version)
        return {**env, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Environment:
        data = mapping(data, "env")
        packages = data.get("packages")
        messages = data.get("import_messages")
        texts = {key: text(data.get(key), f"env.{key}") for key in _ENV_STR_KEYS}
        return cls(
            **texts,
            packages=None
            if packages is None
            else {
                str(name): text(version, f"env.packages.{name}")
                for name, version in mapping(packages, "env.packages").items()
            },
            import_messages=None
            if messages is None
            else {str(name): str(said) for name, said in mapping(messages, "env.import_messages").items()},
            extra={
                key: value for key, value in data.items() if key not in {*_ENV_STR_KEYS, "packages", "import_messages"}
            },
        )
