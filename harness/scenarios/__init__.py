"""Scenarios: what a framework does around the optimizer, one module each, every one with an invariant.

- `train`: the plain loop (the default): the loss falls;
- `groups`: decay / no-decay / lr-0 param groups: the lr-0 group stays put, each group uses its own settings;
- `resume`: state_dict -> torch.save -> torch.load(weights_only=True) -> a fresh optimizer -> the same result;
- `amp`: autocast (+ GradScaler) with an inf-gradient step that must change nothing;
- `schedule`: warm-up + cosine through lr 0: the lr-0 steps change nothing, the lr follows the schedule;
- `compile`: the step under `torch.compile`, its compile time recorded apart;
- `frozen`: parameters with `requires_grad=False` (grad None) inside the groups stay bit-identical, weight decay too;
- `unfreeze`: `add_param_group` mid-run leaves the existing group's trajectory unchanged, steps the new group,
  and survives a state_dict round trip.

A scenario is imported only when a cell runs it, so listing cells never imports torch's compiler.
"""

from __future__ import annotations

import importlib

from harness.errors import HarnessError
from harness.scenarios.base import Context, Outcome, Scenario
from harness.vocabulary import SCENARIOS

__all__ = ["Context", "Outcome", "Scenario", "get_scenario"]


def get_scenario(name: str) -> Scenario:
    """The scenario called `name` (one of `harness.vocabulary.SCENARIOS`)."""
    if name not in SCENARIOS:
        raise HarnessError(f"Unknown scenario {name!r}; the scenarios are {', '.join(SCENARIOS)}.")
    scenario: Scenario = importlib.import_module(f"harness.scenarios.{name}").SCENARIO
    return scenario
