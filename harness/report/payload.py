"""The data the HTML page's script reads: every cell's details, long strings and environments stored once.

It travels as JSON in a `<script type="application/json">` block (`formatting.script_json`), and the
page writes every string of it with `textContent` only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from harness.cells import Record
from harness.report.formatting import STATUS_SYMBOLS, finite, keep_tail, round6
from harness.verdict import Verdict


class _Strings:
    """Long strings (messages, tracebacks) stored once and referred to by index."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def ref(self, text: str | None, *, tail_only: bool = False) -> int | None:
        """The index of `text`; a traceback (`tail_only`) keeps only its end, where the error is."""
        if not text:
            return None
        text = keep_tail(text) if tail_only else text  # a record's texts are capped already (`safe_text`)
        if text not in self._index:
            self._index[text] = len(self.items)
            self.items.append(text)
        return self._index[text]


def payload(records: Sequence[Record], verdict_of: Mapping[str, Verdict]) -> dict[str, Any]:
    """Each cell as the detail view shows it; empty fields left out, as the page treats them alike."""
    strings = _Strings()
    envs: list[dict[str, Any]] = []
    env_index: dict[str, int] = {}
    cells = []
    for record in records:
        env = record.env.to_dict()
        env_key = json.dumps(finite(env), sort_keys=True)
        if env_key not in env_index:
            env_index[env_key] = len(envs)
            envs.append(env)
        cell: dict[str, Any] = {
            "id": record.id,
            "optimizer": record.optimizer,
            "device": record.device,
            "dtype": record.dtype,
            "variant": record.variant,
            "builder": record.builder,
            "scenario": record.scenario,
            "family": record.family,
            "status": record.status,
            "reason": record.reason,
            "error_type": record.error_type,
            "message": strings.ref(record.error_message),
            "traceback": strings.ref(record.traceback, tail_only=True),
            "kwargs": record.kwargs,
            "dropped": record.dropped_kwargs,
            "absorbed": record.absorbed_kwargs,
            "process_changes": record.process_changes,
            "built": record.built,
            "measurement_errors": record.measurement_errors,
            "framework": record.env.framework
            and f"{record.env.framework} {record.env.framework_version or ''}".strip(),
            "losses": [round6(x) for x in record.losses],
            "initial_loss": round6(record.initial_loss),
            "final_loss": round6(record.final_loss),
            "judgement": record.judgement,
            "construct_s": round6(record.construct_s),
            "steps_s": round6(record.steps_s),
            "duration_s": round6(record.duration_s),
            "num_params": record.num_params,
            "state_bytes": record.state_bytes,
            "state_bytes_per_param": round6(record.state_bytes_per_param),
            "peak_memory_bytes": record.peak_memory_bytes,
            "bench": None if record.bench is None else record.bench.to_dict(),
            "extra": record.extra,
            "env": env_index[env_key],
        }
        verdict = verdict_of.get(record.id)
        if verdict is not None:
            cell["verdict"] = {"verdict": verdict.verdict, "was": verdict.was, "detail": verdict.detail}
        cells.append({k: v for k, v in cell.items() if v not in (None, [], {}, "")})
    return {"cells": cells, "strings": strings.items, "envs": envs, "symbols": STATUS_SYMBOLS}
