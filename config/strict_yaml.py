"""YAML for config files, refusing a key given twice in one mapping (plain YAML loaders keep the last
one silently, so a second ``devices:`` block would hide the first).

>>> load("a: 1\\nb: 2")
{'a': 1, 'b': 2}
>>> load("devices: [x]\\ndevices: [y]")
Traceback (most recent call last):
...
yaml.constructor.ConstructorError: while constructing a mapping
found duplicate key 'devices'
  in "<unicode string>", line 2, column 1:
    devices: [y]
    ^
"""

from __future__ import annotations

from typing import Any

import yaml


class StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError("while constructing a mapping", None,
                                                        f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)
