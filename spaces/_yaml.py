"""Reading and writing study files.

PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a *string*; a study file is
full of such numbers, so the loader reads them as floats. A key given twice in one
mapping is an error (PyYAML would keep the last one silently).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from stllr_engine.errors import StllrError

__all__ = ["read_yaml", "parse_scalar", "dump_yaml"]

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


def read_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (the content of ``source``) with the study loader."""
    loader = _Loader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "its syntax"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StllrError(f"{source}: {where}: not valid YAML ({problem}); fix the indentation or quoting there") from None
    finally:
        loader.dispose()


def parse_scalar(value: Any) -> Any:
    """A ``--set`` value that arrived as text (``"1e-3"``) as the study loader would read it."""
    if not isinstance(value, str):
        return value
    try:
        return read_yaml(value, "--set")
    except StllrError:
        return value


def dump_yaml(data: Any) -> str:
    """Block-style YAML in the given key order."""
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100))
