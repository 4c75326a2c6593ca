"""LitGPT's optimizer helper under the harness's builder convention `function(optimizer_path, params, **kwargs)`.

`litgpt.utils.instantiate_torch_optimizer(optimizer, model_parameters, **kwargs)` takes either a
torch.optim class name or, as LitGPT's pretrain config writes it, `{"class_path": ..., "init_args":
{...}}`. Releases before 0.4.13 look a plain string up in `torch.optim` only, so the dotted path of a
bitsandbytes optimizer is handed over in the config form: the form LitGPT's own scripts use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def instantiate(optimizer_path: str, params: Iterable[Any], **kwargs: Any) -> Any:
    from litgpt.utils import instantiate_torch_optimizer

    return instantiate_torch_optimizer({"class_path": optimizer_path, "init_args": {}}, params, **kwargs)
