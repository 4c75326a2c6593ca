"""Read a YAML file as plain data and keep the line of every key and list item.

A matrix file is data, never code: any tag beyond YAML's plain types is refused before anything is
constructed, and a key written twice in one mapping is an error (YAML would silently keep the last).
Errors are `MatrixError`s that name the file and line.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from harness.errors import MatrixError
from harness.wording import dotted, quote

KeyPath = tuple[str | int, ...]
"""Where a key or list item sits in the document: `("include", 0, "device")`."""

_PLAIN_TAGS = frozenset(
    "tag:yaml.org,2002:" + name for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge")
)
"""What JSON can carry to a cell's process: a date, bytes or a set would be lost on the way, so they are refused."""
MAX_VALUES = 100_000
"""The most values a document may expand to once its aliases are followed (an alias bomb stops here)."""


def read_yaml(path: Path) -> tuple[yaml.Node | None, Any, dict[KeyPath, int]]:
    """The root node (None for an empty file), its plain data, and the 1-based line of each key path."""
    node, data = parse_yaml(read_text(path), path)
    return node, data, ({} if node is None else key_lines(node, path))


def read_text(path: Path) -> str:
    """The file's text; a missing, unreadable or non-UTF-8 file is a `MatrixError` saying what to pass."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise MatrixError(
            f"no matrix file here (looked for {path.resolve()}); pass the path of a YAML matrix file.", path=path
        ) from exc
    except IsADirectoryError as exc:
        raise MatrixError("this is a directory, not a matrix file; pass the path of a YAML file.", path=path) from exc
    except UnicodeDecodeError as exc:
        raise MatrixError(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start}).", path=path) from exc
    except OSError as exc:
        raise MatrixError(f"cannot read the matrix file: {exc.strerror or exc}.", path=path) from exc


def parse_yaml(text: str, path: Path) -> tuple[yaml.Node | None, Any]:
    """Compose the document (to keep lines) and construct plain data from it, never running a tag."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _refuse_tags(node, path)
        _bound_aliases(node, path)
        return node, loader.construct_document(node)
    except RecursionError as exc:
        raise MatrixError(
            "the document is nested too deeply to read (hundreds of brackets or indents); "
            "a matrix file needs a few levels only.",
            path=path,
        ) from exc
    except yaml.MarkedYAMLError as exc:
        raise MatrixError(_yaml_problem(exc), path=path, line=_yaml_line(exc)) from exc
    except yaml.YAMLError as exc:
        raise MatrixError(f"this is not valid YAML: {exc}.", path=path) from exc
    finally:
        loader.dispose()


def key_lines(root: yaml.Node, path: Path) -> dict[KeyPath, int]:
    """The line of every key and list item by path; a key written twice in one mapping is an error."""
    lines: dict[KeyPath, int] = {(): root.start_mark.line + 1}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, KeyPath]] = [(root, ())]
    while stack:
        node, where = stack.pop()
        if id(node) in seen:  # an alias: its lines are those of its anchor
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_at: dict[str, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag.endswith(":merge"):
                    continue
                line = key.start_mark.line + 1
                if key.value in first_at:
                    owner = f"`{dotted(where)}`" if where else "the top level"
                    raise MatrixError(
                        f"the key {quote(key.value)} is written twice in {owner} "
                        f"(first at line {first_at[key.value]}); "
                        "YAML would silently keep only the last one, so rename or remove one of them.",
                        path=path,
                        line=line,
                    )
                first_at[key.value] = line
                key_path = (*where, key.value)
                lines[key_path] = line
                stack.append((value, key_path))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                item_path = (*where, index)
                lines[item_path] = item.start_mark.line + 1
                stack.append((item, item_path))
    return lines


def line_of(lines: Mapping[KeyPath, int], path: tuple[Any, ...]) -> int | None:
    """The line of the key or item at `path`, or of its nearest written ancestor; None without lines."""
    path = tuple(part if isinstance(part, int) else str(part) for part in path)
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    problem, context = exc.problem or "", exc.context or ""
    if problem.startswith("but ") and context:  # PyYAML splits "expected X, but found Y" in two
        problem, context = f"{context}, {problem}", ""
    mark, start = exc.problem_mark, exc.context_mark
    if context and start is not None and mark is not None and start.line != mark.line:
        context = f" ({context} started at line {start.line + 1})"
    elif context:
        context = f" ({context})"
    column = f" at column {mark.column + 1}" if mark is not None else ""
    return (
        f"this is not valid YAML: {problem or 'it cannot be parsed'}{context}{column}. "
        "Check the indentation, colons, brackets and quotes on this line and the ones above."
    )


def _yaml_line(exc: yaml.MarkedYAMLError) -> int | None:
    mark = exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark is not None else None


def _walk(node: yaml.Node) -> Iterator[yaml.Node]:
    """Every node once (aliases are shared nodes, so a document of nested aliases stays cheap)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, yaml.MappingNode):
            for key, value in reversed(current.value):
                stack.extend((value, key))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(reversed(current.value))


def _bound_aliases(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose aliases expand it past `MAX_VALUES` values, or into itself."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in visiting:
                raise MatrixError(
                    "an alias refers to a node that contains it, so the document never ends; write the values out.",
                    path=path,
                    line=node.start_mark.line + 1,
                )
            visiting.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)
            continue
        visiting.discard(id(node))
        sizes[id(node)] = min(1 + sum(sizes[id(child)] for child in children), MAX_VALUES + 1)
        if sizes[id(node)] > MAX_VALUES:
            raise MatrixError(
                f"its aliases (*name) expand the document to more than {MAX_VALUES} values; "
                "a matrix needs far fewer, so write the values out or use fewer aliases.",
                path=path,
                line=node.start_mark.line + 1,
            )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _refuse_tags(root: yaml.Node, path: Path) -> None:
    for node in _walk(root):
        if node.tag == "tag:yaml.org,2002:timestamp":
            raise MatrixError(
                f"{quote(node.value)} reads as a date in YAML, which no optimizer takes; write a number, "
                f'or quote it ("{node.value}") if you mean a string.',
                path=path,
                line=node.start_mark.line + 1,
            )
        if node.tag not in _PLAIN_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise MatrixError(
                f"the tag {quote(tag)} is not allowed: a matrix file holds plain data only (strings, numbers, "
                "booleans, lists and mappings). Remove the tag.",
                path=path,
                line=node.start_mark.line + 1,
            )
