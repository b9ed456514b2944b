"""Reading YAML strictly: PyYAML's safe loader, but a key written twice in one mapping is an error.

``yaml.safe_load`` keeps the last of two equal keys without a word, so a service or image declared
twice in suite.yaml (or a container field written twice in a manifest) silently loses one of them.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping with the same key twice: where (``services.web``), the key and both lines (1-based)."""

    def __init__(self, path: str, key: str, first_line: int, second_line: int, document: int = 0) -> None:
        self.path = path
        self.key = key
        self.first_line = first_line
        self.second_line = second_line
        self.document = document
        super().__init__(f"{path or 'top level'}: key {key!r} appears twice (lines {first_line} and {second_line})")


def _check(node: yaml.Node, path: str, document: int) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                _check(value_node, path, document)
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                where = f"{path}.{key}" if path else key
                raise DuplicateKeyError(where, key, seen[key], line, document)
            seen[key] = line
            _check(value_node, f"{path}.{key}" if path else key, document)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check(item, f"{path}[{i}]", document)


def load(text: str) -> Any:
    """One document, refusing duplicate keys (:class:`DuplicateKeyError`)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _check(node, "", 0)
    return yaml.safe_load(text)


def load_all(text: str) -> list[Any]:
    """Every document, refusing duplicate keys (:class:`DuplicateKeyError` carries the document index)."""
    for index, node in enumerate(yaml.compose_all(text, Loader=yaml.SafeLoader)):
        _check(node, "", index)
    return list(yaml.safe_load_all(text))
