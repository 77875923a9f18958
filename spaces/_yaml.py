"""Reading and writing study files.

PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a *string*; a study file is
full of such numbers, so the loader reads them as floats. A key given twice in one
mapping is an error (PyYAML would keep the last one silently).

Input limits (each refusal is one :class:`~stllr_engine.errors.StllrError` line naming the
file and the limit): at most :data:`MAX_FILE_BYTES` of text, :data:`MAX_ALIASES` alias uses
(``*name``), :data:`MAX_NODES` values once every alias is expanded (the "billion laughs"
bomb: a few lines that expand to 10^9 values), collections nested at most
:data:`MAX_DEPTH` deep (aliases expanded), and no alias inside the collection it names.
The checks run on the composed node graph, before anything is constructed or copied.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from stllr_engine.errors import StllrError

__all__ = ["read_yaml", "parse_scalar", "dump_yaml", "MAX_FILE_BYTES", "MAX_ALIASES", "MAX_NODES", "MAX_DEPTH"]

#: Largest study file (bytes of UTF-8 text); the presets are about 2 KiB.
MAX_FILE_BYTES = 1 << 20
#: Most alias uses (``*name``) in one document.
MAX_ALIASES = 100
#: Most values (scalars and collections) in a document with every alias expanded.
MAX_NODES = 100_000
#: Deepest nesting of mappings and lists (aliases expanded); a study file nests about 4.
MAX_DEPTH = 50


class LimitError(StllrError):
    """An input limit was reached (a study file or ``--set`` value too large, too deep or a bomb)."""

_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    """SafeLoader + ``1e-3`` as a float + duplicate keys refused."""

    source = "<study file>"
    _aliases = 0
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise LimitError(f"{self.source}: line {event.start_mark.line + 1}: more than {MAX_ALIASES} YAML "
                                 "aliases (*name) in one file; write the values out instead of repeating aliases")
            return super().compose_node(parent, index)
        nested = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise LimitError(_too_deep(self.source, event.start_mark.line + 1))
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise StllrError(f"{self.source}: line {line}: key {key!r} is given twice in one mapping; "
                                 "keep one of them")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _too_deep(source: str, line: int) -> str:
    return (f"{source}: line {line}: mappings and lists nest deeper than {MAX_DEPTH} levels (aliases expanded); "
            "a study file nests a few levels: flatten it")


def _too_many(source: str, line: int) -> str:
    return (f"{source}: line {line}: the YAML aliases expand to more than {MAX_NODES} values (an alias bomb?); "
            "write each value out once instead of nesting aliases of aliases")


def _check_graph(root: Any, source: str) -> None:
    """Refuse a composed document whose expansion is too large, too deep or cyclic.

    The node graph shares aliased nodes, so this counts in time linear in the graph's
    size (memoised per node) and stops at the first limit.
    """
    memo: dict[int, tuple[int, int]] = {}  # node -> (values, nesting) of its expansion
    visiting: set[int] = set()

    def children(node: Any) -> list[Any]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    def measure(node: Any, depth: int, used_at: int) -> tuple[int, int]:
        key = id(node)
        line = node.start_mark.line + 1
        if key in memo:  # an alias of a collection already measured: where it is used counts
            size, height = memo[key]
            if depth + height > MAX_DEPTH:
                raise LimitError(_too_deep(source, used_at))
            return size, height
        if key in visiting:
            raise LimitError(f"{source}: line {line}: an alias names a collection that contains it (a recursive "
                             "structure); a study file cannot hold one: write the values out")
        kids = children(node)
        if not kids:
            nested = isinstance(node, (yaml.SequenceNode, yaml.MappingNode))
            memo[key] = (1, 1 if nested else 0)
            return memo[key]
        if depth + 1 > MAX_DEPTH:
            raise LimitError(_too_deep(source, line))
        visiting.add(key)
        size, height = 1, 1
        for kid in kids:
            s, h = measure(kid, depth + 1, line)
            size += s
            height = max(height, h + 1)
            if size > MAX_NODES:
                raise LimitError(_too_many(source, line))
        visiting.discard(key)
        memo[key] = (size, height)
        return size, height

    measure(root, 0, 1)


def read_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (the content of ``source``) with the study loader, within the input limits.

    Raises:
        StllrError: one line: invalid YAML, a key given twice, or a limit
            (:data:`MAX_FILE_BYTES`, :data:`MAX_ALIASES`, :data:`MAX_NODES`, :data:`MAX_DEPTH`).
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        raise LimitError(f"{source}: {size} bytes is more than a study file may hold ({MAX_FILE_BYTES} bytes = "
                         f"{MAX_FILE_BYTES >> 20} MiB); a study file is a few dozen lines: check the file")
    try:
        loader = _Loader(text)  # the reader checks the characters here
    except yaml.reader.ReaderError as exc:
        line = text[:exc.position].count("\n") + 1
        raise StllrError(f"{source}: line {line}: not valid YAML ({str(exc).splitlines()[0]}); remove that "
                         "character (a study file is plain text)") from None
    loader.source = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, source)
        return loader.construct_document(node)
    except RecursionError:
        raise LimitError(_too_deep(source, 1)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "its syntax"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StllrError(f"{source}: {where}: not valid YAML ({problem}); fix the indentation or quoting there") from None
    finally:
        loader.dispose()


def parse_scalar(value: Any, source: str = "--set") -> Any:
    """A ``--set`` value as the study loader would read it from the file.

    Text (``"1e-3"``, ``"[0, 1]"``) is read with the study loader; text that is not valid
    YAML stays text. A value already parsed elsewhere (e.g. by ``yaml.safe_load``, which
    follows YAML 1.1 and leaves ``1e-3`` a string inside a list or mapping) is normalised
    the same way: its number-like strings become floats. Either way the input limits
    apply (:data:`MAX_NODES`, :data:`MAX_DEPTH`, no cycles).

    >>> parse_scalar("1e-3"), parse_scalar("[0, 1e3]"), parse_scalar({"low": "1e-4", "log": True})
    (0.001, [0, 1000.0], {'low': 0.0001, 'log': True})
    >>> parse_scalar("a: b: c")
    'a: b: c'

    Raises:
        StllrError: a limit is reached (one line naming ``source``).
    """
    if isinstance(value, str):
        try:
            return read_yaml(value, source)
        except LimitError:
            raise
        except StllrError:
            return value
    return _normalise(value, source)


def _normalise(value: Any, source: str) -> Any:
    """A copy of plain data with number-like strings read as floats, within the limits."""
    count = 0
    visiting: set[int] = set()

    def walk(v: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise LimitError(_too_many(source, 1))
        if isinstance(v, str):
            return read_yaml(v, source) if _FLOAT.match(v) else v
        if not isinstance(v, (dict, list, tuple)):
            return v
        if depth + 1 > MAX_DEPTH:
            raise LimitError(_too_deep(source, 1))
        if id(v) in visiting:
            raise LimitError(f"{source}: a value contains itself (a recursive structure); write the values out")
        visiting.add(id(v))
        try:
            if isinstance(v, dict):
                return {k: walk(x, depth + 1) for k, x in v.items()}
            return [walk(x, depth + 1) for x in v]
        finally:
            visiting.discard(id(v))

    return walk(value, 0)


def dump_yaml(data: Any) -> str:
    """Block-style YAML in the given key order."""
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100))
