"""What optimizer packages print at import is kept for the records' env, never shown on the terminal."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import quiet
from harness.execute import environment
from harness.measurements import Environment
from harness.resolve import resolve_optimizer

MODULES = Path(__file__).parent / "resources" / "modules"
SAID = [
    "noisy_optim: a banner on stdout",
    "noisy_optim: a note on stderr",
    "Failed to load CPU gemm_4bit_forward from kernels-community",
    "UserWarning: noisy_optim: an old API",
    "noisy_optim: from C",
]


@pytest.fixture
def noisy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(MODULES))
    monkeypatch.delitem(sys.modules, "noisy_optim", raising=False)
    monkeypatch.setattr(quiet, "_MESSAGES", {})


def test_resolving_a_noisy_optimizer_prints_nothing_and_keeps_every_message(noisy, capfd) -> None:
    resolved = resolve_optimizer("noisy_optim.NoisySGD")
    out, err = capfd.readouterr()

    assert resolved.cls.__name__ == "NoisySGD"
    assert (out, err) == ("", "")
    kept = quiet.import_messages()["noisy_optim"]
    for text in SAID:
        assert text in kept


def test_the_messages_land_in_the_records_env(noisy) -> None:
    assert "import_messages" not in environment("cpu", None).to_dict(), "a silent import adds nothing"

    quiet.quiet_import("noisy_optim")

    env = environment("cpu", None)
    assert env.import_messages is not None and "kernels-community" in env.import_messages["noisy_optim"]
    assert Environment.from_dict(env.to_dict()) == env  # the record's JSON carries them


def test_an_import_error_still_raises_and_restores_the_terminal(noisy, capfd) -> None:
    with pytest.raises(ModuleNotFoundError):
        quiet.quiet_import("noisy_optim_that_is_not_there")
    print("after")

    assert capfd.readouterr().out == "after\n"
