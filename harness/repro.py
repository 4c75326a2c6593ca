"""Standalone reproduction scripts: `python -m harness repro ID` writes one for a cell of a results file.

The script imports torch and the optimizer's package only (a framework builder's framework too; a
`package.module:function` builder's module), and defines everything else inline, copied from this package's
own source so that it runs exactly what the matrix ran: the small GPT and its synthetic batch
(`harness.gpt`), the training loop and its judging (`harness.scenarios.base`, `harness.frameworks`'
conventions), the scenario's steps and invariant check (the scenario's whole module), and the builder's call
with the cell's exact kwargs (what the builder kept of them; a timm registry name with its registry defaults).

It prints the environment, then what happened, then its numbers against the record's. Its exit status is 0
when the outcome is `ok` and 1 for any other outcome (it prints the status word and the numbers); 3 when it
cannot run the cell faithfully here (a device this machine lacks, a third-party framework adapter, a
framework builder in another scenario than `train`, which the matrix skips too), saying so instead of faking it.

Determinism: `harness.execute.prepare`'s order (seed, thread count, model, batch, then the optimizer over the
scenario's parameters), so on the same platform and versions the numbers are the record's bit for bit. One
difference is known: the `safe` builder may probe a hint (`fused=True`) with one step on a stand-in tensor before
building; an optimizer that draws random numbers in `step()` would draw once more there than here.
"""

from __future__ import annotations

import ast
import inspect
import json
import pprint
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from harness.cells import DEFAULT_SCENARIO, Record, finite
from harness.errors import HarnessError
from harness.settings import Settings
from harness.vocabulary import BUILDERS, SCENARIOS
from harness.wording import close_matches, first_line, quote, unknown

SETTINGS_NAME = "settings.json"
"""Written beside `results.jsonl` by every run: the settings its cells ran under (what a repro needs)."""

CANNOT_REPRODUCE = 3
"""The script's exit status when it cannot run the cell faithfully where it is run."""

FRAMEWORKS = ("transformers", "litgpt", "timm")
"""The framework builders a script can build through (the built-in adapters)."""


# ---------------------------------------------------------------------------------------------- finding the cell


def find_record(records: Sequence[Record], cell_id: str, source: Path) -> Record:
    """The record of `cell_id`; an unknown id is one sentence naming the close matches (`HarnessError`, exit 2)."""
    by_id = {record.id: record for record in records}
    if cell_id in by_id:
        return by_id[cell_id]
    near = close_matches(cell_id, by_id, n=3, cutoff=0.5)
    choices = [*near, *(i for i in sorted(by_id) if i not in near)]  # the close ones are the ones listed
    raise HarnessError(unknown("cell", cell_id, choices, where=f" in {source}", n=3, cutoff=0.5, shown=len(near) or 3))


def save_settings(out_dir: Path, settings: Settings) -> Path:
    """Write the run's settings beside its results, where `repro` finds them."""
    from harness.report.files import write_atomically

    path = Path(out_dir) / SETTINGS_NAME
    write_atomically(path, settings.model_dump_json(indent=2) + "\n")
    return path


def settings_for(record: Record, results_dir: Path, matrix: Path | None) -> tuple[Settings, str]:
    """The settings the record's cell ran under, and where they came from.

    The run's own `settings.json` first; else the matrix file named (or `./matrix.yaml`). Either is checked
    against the record: the GPT it describes must have the record's parameter count, and its steps the record's
    step count, or the numbers could not match.
    """
    saved = results_dir / SETTINGS_NAME
    if saved.is_file():
        try:
            settings, source = Settings.model_validate_json(saved.read_text()), str(saved)
        except (OSError, ValueError) as exc:
            raise HarnessError(f"Cannot read {saved}, the run's settings: {first_line(str(exc))}.") from exc
    else:
        from harness.spec import load_matrix

        path = matrix or Path("matrix.yaml")
        if not path.is_file():
            raise HarnessError(
                f"{results_dir} has no {SETTINGS_NAME} (runs before this version wrote none) and {path} does not "
                "exist; pass the matrix the run used with --matrix FILE."
            )
        settings, source = load_matrix(path).settings, str(path)
    problem = _settings_problem(record, settings)
    if problem:
        raise HarnessError(f"The settings in {source} are not those cell {record.id} ran under: {problem}; "
                           "pass the matrix the run used with --matrix FILE.")  # fmt: skip
    return settings, source


def _settings_problem(record: Record, settings: Settings) -> str | None:
    import torch

    from harness.gpt import GPT

    with torch.device("meta"):  # counts the parameters without allocating them
        count = sum(p.numel() for p in GPT(settings.model).parameters())
    if record.num_params and record.num_params != count:
        return f"their GPT has {count} parameters, the record's {record.num_params}"
    numbers = record.scenario_numbers or {}
    if "steps_before_save" in numbers:
        steps = int(numbers["steps_before_save"]) + int(numbers.get("steps_after_load", 0))
        if steps != settings.train.steps:
            return f"they take {settings.train.steps} steps, the record {steps}"
    elif record.scenario == DEFAULT_SCENARIO and record.status in ("ok", "no_learning", "mismatch"):  # noqa: SIM102
        if record.losses and len(record.losses) != settings.train.steps:
            return f"they take {settings.train.steps} steps, the record {len(record.losses)}"
    return None


# ------------------------------------------------------------------------------------------ copying the source


def _module(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(name)


def _nodes(module: ModuleType) -> tuple[list[str], dict[str, str]]:
    """A module's top-level imports (not of `harness`) and its other definitions' source, by name."""
    source = inspect.getsource(module)
    tree = ast.parse(source)
    lines = source.splitlines()
    imports: list[str] = []
    definitions: dict[str, str] = {}
    for index, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if not any(name == "harness" or name.startswith("harness.") for name in names):
                imports.append(ast.unparse(node))
            continue
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the module docstring
        start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        end = node.end_lineno or node.lineno
        following = tree.body[index + 1] if index + 1 < len(tree.body) else None
        if following is not None and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            end = following.end_lineno or end  # an attribute's docstring goes with it
        name = _defined_name(node)
        if name:
            definitions[name] = "\n".join(lines[start - 1 : end])
    return imports, definitions


def _defined_name(node: ast.stmt) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


_COPIED: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("harness.frameworks", ("Conventions", "has_train_eval", "needs_closure", "default_conventions")),
    ("harness.gpt", ("CausalSelfAttention", "Block", "GPT", "build_gpt", "synthetic_batch")),
    ("harness.scenarios.params", None),
    (
        "harness.scenarios.base",
        (
            "Outcome",
            "take_steps",
            "final_loss",
            "second_order_context",
            "judge_loss",
            "conclude",
            "learning_rate",
            "fmt",
        ),
    ),
)
"""What every script copies, module by module (None: every definition)."""


def _copied_source(scenario: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(import lines, [(section title, source)]) of everything the script copies for `scenario`."""
    imports: list[str] = []
    sections: list[tuple[str, str]] = []
    for module_name, names in (*_COPIED, (f"harness.scenarios.{scenario}", None)):
        module_imports, definitions = _nodes(_module(module_name))
        imports += module_imports
        chosen = [n for n in (names or definitions) if n not in ("SCENARIO", "__all__", "Params", "StepHook")]
        body = "\n\n\n".join(definitions[name] for name in chosen)
        sections.append((module_name, body))
    return imports, sections


def _ordered_imports(lines: Sequence[str], body: str) -> list[str]:
    """The import lines merged by module, keeping only the names `body` uses: stdlib first, then torch."""
    plain: set[str] = set()
    froms: dict[str, set[str]] = {}
    for line in lines:
        node = ast.parse(line).body[0]
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                bound = alias.asname or alias.name
                if node.module == "__future__" or re.search(rf"\b{re.escape(bound)}\b", body):
                    froms.setdefault(node.module, set()).add(
                        f"{alias.name} as {alias.asname}" if alias.asname else alias.name
                    )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                if re.search(rf"\b{re.escape(bound)}\b", body):
                    plain.add(f"import {alias.name} as {alias.asname}" if alias.asname else f"import {alias.name}")
    imports = [f"from {module} import {', '.join(sorted(names))}" for module, names in froms.items()]
    future = [line for line in imports if " __future__ " in line]
    rest = sorted([*plain, *(line for line in imports if line not in future)], key=_import_order)
    stdlib = [line for line in rest if not _is_torch(line)]
    torch_lines = [line for line in rest if _is_torch(line)]
    return [*future, "", *stdlib, "", *torch_lines]


def _is_torch(line: str) -> bool:
    return line.split()[1].split(".")[0] == "torch"


def _import_order(line: str) -> tuple[bool, str]:
    return line.startswith("from "), line.split()[1]


# ------------------------------------------------------------------------------------------ the builder's call


def _literal(value: Any) -> str:
    return pprint.pformat(value, width=100, sort_dicts=False)


def _kept_kwargs(record: Record) -> dict[str, Any]:
    """The kwargs the builder passed on: the cell's, less what it dropped (`signature`, `safe`)."""
    return {k: v for k, v in record.kwargs.items() if k not in record.dropped_kwargs}


def _class_import(optimizer: str) -> tuple[str, str, dict[str, Any]]:
    """(import line, the name it binds, registry defaults) of the optimizer class a name stands for."""
    if optimizer.startswith("timm:"):
        try:
            from timm.optim import get_optimizer_info
        except ImportError as exc:
            raise HarnessError(f"{optimizer} is a name in timm's registry; reading it needs timm installed.") from exc
        info = get_optimizer_info(optimizer.split(":", 1)[1])
        cls = info.opt_class
        module, name = cls.rsplit(".", 1) if isinstance(cls, str) else (cls.__module__, cls.__qualname__)
        return f"from {module} import {name}", name, dict(info.defaults or {})
    path = optimizer if "." in optimizer else f"torch.optim.{optimizer}"
    module, name = path.rsplit(".", 1)
    return f"from {module} import {name}", name, {}


def _builder_section(record: Record) -> tuple[list[str], str, str | None]:
    """(import lines, the script's `make_optimizer` source, why it cannot reproduce or None)."""
    builder, kwargs = record.builder, _kept_kwargs(record)
    if builder in FRAMEWORKS:
        return _framework_section(record)
    if ":" in builder:  # a framework's own helper, `package.module:function`
        module, function = builder.split(":", 1)
        kwargs = dict(record.kwargs)  # the helper is given every kwarg; what it drops is its own business
        lines = [f"from {module} import {function}"]
        body = f'''
OPTIMIZER = {record.optimizer!r}
KWARGS = {_literal(kwargs)}


def make_optimizer(params, overrides=None):
    """The optimizer as the builder `{builder}` builds it: `{function}(name, params, **kwargs)`."""
    return {function}(OPTIMIZER, params, **{{**KWARGS, **(overrides or {{}})}})
'''
        return lines, body, None
    if builder not in BUILDERS:  # a third party's framework adapter
        why = f"builder {builder!r} is a third-party framework adapter; this script can only build the built-in ones"
        return [], "", why
    line, name, defaults = _class_import(record.optimizer)
    dropped = record.dropped_kwargs
    note = {
        "direct": "the cell's kwargs as they are: `cls(params, **kwargs)`",
        "signature": "the cell's kwargs that the class's signature names (`signature` drops the rest)",
        "safe": "the cell's kwargs less the acceleration hints the class or device cannot take (`safe` builder)",
    }[builder]
    if dropped:
        note += f"; the builder dropped {', '.join(dropped)}"
    if defaults:
        note += f"; {name}'s defaults in timm's registry ({record.optimizer}) come first"
    merged = "{**DEFAULTS, **KWARGS, **(overrides or {})}" if defaults else "{**KWARGS, **(overrides or {})}"
    body = f'''
{"DEFAULTS = " + _literal(defaults) + chr(10) if defaults else ""}KWARGS = {_literal(kwargs)}
"""{note}."""


def make_optimizer(params, overrides=None):
    """{name} over `params`, built as the `{builder}` builder built it (`overrides` for the scenario's probes)."""
    return {name}(params, **{merged})
'''
    return [line], body, None


def _framework_section(record: Record) -> tuple[list[str], str, str | None]:
    builder, kwargs = record.builder, dict(record.kwargs)
    if record.scenario != DEFAULT_SCENARIO:
        return [], "", f"the {builder} builder builds from the model and runs the train scenario only (it was skipped)"
    if builder == "timm":
        body = f'''
OPTIMIZER = {record.optimizer.removeprefix("timm:")!r}
KWARGS = {_literal(kwargs)}


def make_framework_optimizer(model):
    """timm's factory, as the `timm` builder calls it: `create_optimizer_v2(model, opt=NAME, **kwargs)`."""
    optimizer = create_optimizer_v2(model, opt=OPTIMIZER, **KWARGS)
    return optimizer, default_conventions(optimizer)
'''
        return ["from timm.optim import create_optimizer_v2"], body, None
    if builder == "litgpt":
        path = record.optimizer if "." in record.optimizer else f"torch.optim.{record.optimizer}"
        body = f'''
CLASS_PATH = {path!r}
INIT_ARGS = {_literal(kwargs)}


def make_framework_optimizer(model):
    """LitGPT's `instantiate_torch_optimizer`, with LitGPT's own `fused` (True on CUDA) unless the cell sets one."""
    init_args = dict(INIT_ARGS)
    fused = init_args.pop("fused", next(model.parameters()).device.type == "cuda")
    config = {{"class_path": CLASS_PATH, "init_args": init_args}}
    optimizer = instantiate_torch_optimizer(config, model.parameters(), fused=fused)
    return optimizer, default_conventions(optimizer)
'''
        return ["from litgpt.utils import instantiate_torch_optimizer"], body, None
    name = record.optimizer.removeprefix("transformers:")
    body = f'''
OPTIM = {name!r}
TRAINING_ARGUMENTS = {_literal(kwargs)}


def make_framework_optimizer(model):
    """Hugging Face's `Trainer.create_optimizer()`, and the conventions the Trainer trains it with."""
    import tempfile

    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="repro-hf-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, optim=OPTIM, report_to="none", use_cpu=device.type == "cpu", **TRAINING_ARGUMENTS
        )
        optimizer = Trainer(model=model, args=args).create_optimizer()
    step = None
    if OPTIM in ("lomo", "adalomo"):  # the update happens inside the backward pass, as accelerate's lomo_backward
        def step(optimizer, loss):
            optimizer.fused_backward(loss, args.learning_rate)
    conventions = Conventions(
        train_eval=has_train_eval(optimizer), closure=False, layerwise=OPTIM.endswith("_layerwise"), step=step
    )
    return optimizer, conventions
'''
    return ["from transformers import Trainer, TrainingArguments"], body, None


# ---------------------------------------------------------------------------------------------- the script


_CELL = """
# ---------------------------------------------------------------------------------------------- the cell

MODEL = ModelSettings(**{model})
STEPS = {steps}
SEED = {seed}
BATCH_SIZE = {batch_size}
THREADS = {threads}
MIN_REL_DROP = {min_rel_drop}
TOLERANCES = {tolerances}
DEVICE = {device!r}
DTYPE = torch.{dtype}
PACKAGES = {packages!r}
{builder}
"""


_MAIN = '''
# ---------------------------------------------------------------------------------------------- running it

RECORDED = {recorded}
"""What the matrix recorded for this cell: its outcome and the numbers this script compares with its own."""
CANNOT_REPRODUCE = {cannot!r}
"""Set when this script cannot run the cell faithfully: it says why and exits 3."""


class Context:
    """What the scenario is given (`harness.scenarios.base.Context`): the model, the optimizer built over
    it, the batch, the losses so far, and ways to build another optimizer and another model like them."""

    steps = STEPS
    dtype = DTYPE
    device_type = torch.device(DEVICE).type
    cell = SimpleNamespace(device=DEVICE)
    settings = SimpleNamespace(
        train=SimpleNamespace(steps=STEPS, seed=SEED, min_rel_drop=MIN_REL_DROP),
        bench=SimpleNamespace(tolerances={{k: SimpleNamespace(**v) for k, v in TOLERANCES.items()}}),
    )

    def __init__(self, model, optimizer, inputs, targets, conventions=None):
        self.model, self.optimizer, self.inputs, self.targets = model, optimizer, inputs, targets
        self.conventions = conventions
        self.losses = []

    def rebuild(self, params, overrides=None):
        return make_optimizer(params, overrides)

    def fresh_model(self):
        return build_gpt(MODEL, seed=SEED, device=DEVICE, dtype=DTYPE)


def print_environment():
    print("environment:")
    print(f"  python {{platform.python_version()}} on {{platform.platform()}}")
    print(f"  torch {{torch.__version__}}, {{THREADS}} thread(s)")
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        print(f"  {{name}} {{version}}")
    kind = torch.device(DEVICE).type
    machine = torch.cuda.get_device_name(DEVICE) if kind == "cuda" and torch.cuda.is_available() else cpu_model()
    print(f"  device {{DEVICE}} ({{machine or 'unknown'}}), dtype {{str(DTYPE).removeprefix('torch.')}}")
    print(f"  recorded with: {{RECORDED['environment']}}")


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    except OSError:
        return platform.processor()


def plain_numbers(value):
    """Numbers as the record keeps them: non-finite floats as text ('inf', 'nan'), tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {{str(k): plain_numbers(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return [plain_numbers(v) for v in value]
    return value


def leaves(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{{path}}.{{key}}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, f"{{path}}[{{index}}]")
    else:
        yield path, value


def same_number(a, b):
    if a is None or b is None:  # the results file keeps NaN as null
        return a is b or (isinstance(a, str) and a == "nan") or (isinstance(b, str) and b == "nan")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def compare_with_record(status, observed):
    """Print this run's outcome and numbers beside the record's; True when they are the same."""
    recorded = RECORDED["numbers"]
    mine = dict(leaves(plain_numbers(observed)))
    theirs = dict(leaves(recorded))
    shared = [key for key in theirs if key in mine]
    differ = [key for key in shared if not same_number(mine[key], theirs[key])]
    same = "the same" if status == RECORDED["status"] else "recorded " + RECORDED["status"]
    print(f"against the record: status {{same}}", end="")
    if not shared:
        print("; no number to compare")
        return status == RECORDED["status"]
    if not differ:
        print(f"; all {{len(shared)}} numbers identical")
        return status == RECORDED["status"]
    worst, largest = None, -1.0
    for key in differ:
        a, b = mine[key], theirs[key]
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            gap = abs(a - b) / max(abs(b), 1e-30)
            if gap > largest:
                worst, largest = key, gap
    print(f"; {{len(differ)}} of {{len(shared)}} numbers differ", end="")
    print(f" (largest relative difference {{largest:.3g}}, at {{worst}})" if worst else f" (first at {{differ[0]}})")
    for key in differ[:5]:
        print(f"  {{key}}: here {{mine[key]!r}}, recorded {{theirs[key]!r}}")
    return False


def finish(status, sentence, observed):
    """Say what happened, compare it with the record, and return the exit status (0 only for ok)."""
    print(f"outcome: {{status}}")
    print(f"  {{sentence}}")
    shown = {{k: v for k, v in plain_numbers(observed).items() if k != "losses"}}
    if shown:
        print("numbers: " + json.dumps(shown, indent=2, ensure_ascii=False).replace("\\n", "\\n  "))
    losses = observed.get("losses") or []
    if losses:
        print(f"losses ({{len(losses)}}): " + ", ".join(f"{{x:.6g}}" for x in losses))
    compare_with_record(status, observed)
    return 0 if status == "ok" else 1


def error_numbers(exc, losses):
    return {{"error_type": type(exc).__name__, "error_first_line": (str(exc).strip().splitlines() or [""])[0],
            "losses": list(losses)}}


def main():
    print(__doc__.strip().splitlines()[0])
    print_environment()
    if CANNOT_REPRODUCE:
        print(f"cannot reproduce: {{CANNOT_REPRODUCE}}")
        return 3
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print(f"cannot reproduce: device {{DEVICE}} is not present on this machine")
        return 3
    if IMPORT_ERROR is not None:
        exc = IMPORT_ERROR
        return finish("construct_error", f"importing the optimizer's package raised {{type(exc).__name__}}: {{exc}}",
                      error_numbers(exc, []))
    # As the matrix prepares a cell: seed, threads, the seeded model, the batch, then the optimizer.
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)
    model = build_gpt(MODEL, seed=SEED, device=DEVICE, dtype=DTYPE)
    inputs, targets = synthetic_batch(MODEL, BATCH_SIZE, SEED, DEVICE)
    try:
        {construct}
    except BaseException as exc:  # noqa: BLE001  (an optimizer raising SystemExit in __init__ is an outcome too)
        traceback.print_exc()
        return finish("construct_error", f"{{type(exc).__name__}}: {{exc}}", error_numbers(exc, []))
    ctx = Context(model, optimizer, inputs, targets, conventions)
    try:
        outcome = run(ctx)
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        return finish("step_error", f"{{type(exc).__name__}}: {{exc}}", error_numbers(exc, ctx.losses))
    observed = {{"losses": ctx.losses, "final_loss": outcome.final_loss, **outcome.numbers}}
    return finish(outcome.status, outcome.judgement, observed)


if __name__ == "__main__":
    sys.exit(main())
'''


def _docstring_text(text: str) -> str:
    """`text` safe inside the script's triple-quoted docstring."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _recorded(record: Record) -> dict[str, Any]:
    """The record's outcome and the numbers the script compares with its own."""
    env = record.env
    versions = ", ".join(f"{k} {v}" for k, v in (env.packages or {}).items() if v and k != "torch")
    numbers: dict[str, Any]
    if record.status in ("step_error", "construct_error"):
        numbers = {
            "error_type": record.error_type,
            "error_first_line": (record.error_message or "").strip().splitlines()[0] if record.error_message else "",
            "losses": list(record.losses),
        }
    elif record.status in ("ok", "no_learning", "nonfinite", "mismatch"):
        numbers = {"losses": list(record.losses), "final_loss": record.final_loss, **record.scenario_numbers}
        numbers.pop("compile_s", None)  # times are the machine's, not the optimizer's
        numbers.pop("step_ms_compiled", None)
    else:
        numbers = {}
    return {
        "status": record.status,
        "reason": record.reason,
        "judgement": record.judgement or (f"{record.error_type}: {first_line(record.error_message)}"
                                          if record.error_type else ""),
        "environment": f"python {env.python}, torch {env.torch}" + (f", {versions}" if versions else ""),
        "numbers": finite(json.loads(json.dumps(finite(numbers), default=str))),
    }  # fmt: skip


def _packages(record: Record) -> list[str]:
    names = ["torch"]
    package = record.env.optimizer_package or record.family
    if record.builder in FRAMEWORKS:
        names.append(record.env.framework or record.builder)
    elif ":" in record.builder:
        names.append(record.builder.split(".", 1)[0].split(":", 1)[0])
    if package and package not in names:
        names.append(package)
    return names


def repro_script(record: Record, settings: Settings, *, command: str = "") -> str:
    """The standalone script that reproduces `record`'s cell under `settings` (see the module docstring)."""
    if record.scenario not in SCENARIOS:
        raise HarnessError(unknown("scenario", record.scenario, SCENARIOS, where=f" of cell {quote(record.id)}"))
    imports, sections = _copied_source(record.scenario)
    package_lines, builder, cannot = _builder_section(record)
    framework = record.builder in FRAMEWORKS
    if framework:
        construct = "optimizer, conventions = make_framework_optimizer(model)"
    else:
        construct = "optimizer, conventions = make_optimizer(scenario_params(model)), None"
    from harness.scenarios import get_scenario  # torch: only when a script is written

    given = get_scenario(record.scenario).params  # the scenario's own function (copied above), or the default
    scenario_params = "model.parameters()" if given.__name__ == "<lambda>" else f"{given.__name__}(model)"
    if record.reason == "import_error":
        guarded = "\n".join(f"    {line}" for line in package_lines) or "    pass"
        package_block = f"try:\n{guarded}\nexcept Exception as exc:  # installed, but raises while importing\n" \
                        "    IMPORT_ERROR = exc\nelse:\n    IMPORT_ERROR = None"  # fmt: skip
    else:
        package_block = "\n".join(package_lines) + "\n\nIMPORT_ERROR = None"
    numbers = _recorded(record)
    summary = numbers["judgement"] or record.status
    recorded = f"The matrix recorded `{record.status}`" + (f" ({record.reason})" if record.reason else "")
    about = (
        f"Scenario `{record.scenario}`, the {record.builder} builder, kwargs {dict(record.kwargs)}, {record.dtype} on "
        f"{record.device}. Needs only {', '.join(_packages(record))}. Exit status: 0 when the outcome is ok; 1 for "
        "any other outcome (the status word and the numbers are printed); 3 when it cannot run the cell "
        f"faithfully here. Written by {command or 'python -m harness repro'}."
    )
    docstring = "\n\n".join(
        [
            f"Reproduce optimizer-matrix cell {record.id}.",
            textwrap.fill(f"{recorded}: {textwrap.shorten(summary, 600)}", 116),
            textwrap.fill(about, 116),
        ]
    )
    header = f'#!/usr/bin/env python3\n"""{_docstring_text(docstring)}\n"""\n'

    base_imports = [
        "from __future__ import annotations",
        "import importlib.metadata",
        "import json",
        "import math",
        "import platform",
        "import sys",
        "import traceback",
        "from dataclasses import dataclass",
        "from types import SimpleNamespace",
        "import torch",
    ]
    parts = [header]
    parts.append("{imports}")
    parts.append("\n# the optimizer's package" + (" and the framework" if framework else "") + "\n" + package_block)
    parts.append(
        '''
@dataclass(frozen=True)
class ModelSettings:
    """The small GPT's shape (`harness.settings.ModelSettings`)."""

    vocab_size: int
    seq_len: int
    d_model: int
    n_layers: int
    n_heads: int'''
    )
    tolerances = {k: v.model_dump() for k, v in settings.bench.tolerances.items()}
    parts.append(
        _CELL.format(
            model=_literal(settings.model.model_dump()),
            steps=settings.train.steps,
            seed=settings.train.seed,
            batch_size=settings.train.batch_size,
            threads=settings.train.threads,
            min_rel_drop=settings.train.min_rel_drop,
            tolerances=_literal(tolerances),
            device=record.device,
            dtype=record.dtype,
            packages=_packages(record)[1:],
            builder=builder,
        )
    )
    for module_name, body in sections:
        title = f"# {'-' * 60} copied from {module_name}"
        parts.append(f"\n{title}\n\n{body}")
    parts.append(f"\n\ndef scenario_params(model):\n    return {scenario_params}")
    parts.append(_MAIN.format(recorded=_literal(numbers), cannot=cannot, construct=construct))
    text = "\n\n\n".join(part.strip("\n") for part in parts) + "\n"
    imports_text = "\n".join(_ordered_imports([*base_imports, *imports], text))
    return re.sub(r"\n{4,}", "\n\n\n", text.replace("{imports}", imports_text, 1))


def write_repro(
    results: Path, cell_id: str, *, out: Path | None = None, matrix: Path | None = None, command: str = ""
) -> tuple[str, Path | None]:
    """The script for `cell_id` of the results at `results` (a file or its folder); written to `out` when given."""
    from harness.records import readable_records, results_path

    path = results_path(results)
    if not path.is_file():
        raise HarnessError(
            f"{path} does not exist; pass the folder a run wrote with --results DIR (the default is reports)."
        )
    record = find_record(readable_records(path), cell_id, path)
    settings, _ = settings_for(record, path.parent, matrix)
    script = repro_script(record, settings, command=command)
    compile(script, f"<repro of {cell_id}>", "exec")  # a script that does not parse is this module's bug: say so now
    if out is not None:
        from harness.report.files import write_atomically

        write_atomically(out, script)
        out.chmod(0o755)
    return script, out


def recorded_numbers(record: Record) -> Mapping[str, Any]:
    """The numbers a repro script compares with its own (for tests and reports)."""
    return _recorded(record)["numbers"]
