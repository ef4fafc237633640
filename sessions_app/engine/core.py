"""Core memory (L1): the space-wide key/value data every session of the space shares.

Keys are short names (letters, digits, `_ . : -`); values any JSON. Each value and the whole
core have a size limit (their compact JSON, in UTF-8 bytes), checked before anything is
written. REST (`/spaces/{id}/core`), the admin and the agent's own tools (`core_memory_read`,
`core_memory_update`, when enabled) all change it through `CoreMemory`. The core is part of the
WebSocket bootstrap and, when enabled, of every prompt of the space (a `<core_memory>` block
after the system prompt).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import InvalidInput, NotFound
from .ports import SpaceStore
from .tools import Tool, ToolContext
from .types import dumps_compact

KEY = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
READ_TOOL = "core_memory_read"
UPDATE_TOOL = "core_memory_update"


class CoreKeyNotFound(NotFound):
    code = "CORE_KEY_NOT_FOUND"

    def __init__(self, key: str) -> None:
        super().__init__(f'Core key "{key[:200]}" not found')


def check_key(key: object) -> str:
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise InvalidInput("a core key must be 1-200 letters, digits or _ . : -")
    return key


def size_of(value: Any) -> int:
    return len(dumps_compact(value).encode("utf-8", "surrogatepass"))


class CoreMemory:
    """The core data of one space, with its limits."""

    def __init__(self, store: SpaceStore, *, max_value_bytes: int, max_total_bytes: int) -> None:
        self.store = store
        self.max_value_bytes = max_value_bytes
        self.max_total_bytes = max_total_bytes

    async def read(self) -> dict[str, Any]:
        return dict(await self.store.core_data())

    async def get(self, key: str) -> Any:
        # A malformed key is simply not set (like a malformed id is an unknown one).
        core = await self.read()
        if key not in core:
            raise CoreKeyNotFound(key)
        return core[key]

    async def replace(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The core becomes exactly `values`."""
        self._check(values, {})
        await self.store.write_core(values, clear=True)
        return dict(values)

    async def patch(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Set each key of `changes`; a null value removes the key."""
        current = await self.read()
        sets = {k: v for k, v in changes.items() if v is not None}
        gone = [k for k, v in changes.items() if v is None]
        for key in gone:
            check_key(key)
        result = {k: v for k, v in current.items() if k not in gone}
        result.update(sets)
        self._check(sets, result)
        await self.store.write_core(sets, delete=gone)
        return result

    async def set(self, key: str, value: Any) -> Any:
        current = await self.read()
        self._check({check_key(key): value}, {**current, key: value})
        await self.store.write_core({key: value})
        return value

    async def delete(self, key: str) -> None:
        if key not in await self.read():
            raise CoreKeyNotFound(key)
        await self.store.write_core({}, delete=[key])

    async def clear(self) -> None:
        await self.store.write_core({}, clear=True)

    def _check(self, values: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        for key, value in values.items():
            check_key(key)
            size = size_of(value)
            if size > self.max_value_bytes:
                raise InvalidInput(f'core value "{key}" is {size} bytes; at most '
                                   f"{self.max_value_bytes} are allowed")
        total = size_of(dict(result) or dict(values))
        if total > self.max_total_bytes:
            raise InvalidInput(f"the core would be {total} bytes; at most "
                               f"{self.max_total_bytes} are allowed")


def core_prompt_block(core: Mapping[str, Any]) -> str | None:
    """The core as the model sees it in a prompt; None when it is empty."""
    if not core:
        return None
    return f"<core_memory>\n{dumps_compact(dict(core))}\n</core_memory>"


def core_tools(core: CoreMemory) -> list[Tool]:
    """The agent's tools on the core: read it, and set or remove one key."""

    async def read(args: dict[str, Any], context: ToolContext) -> Any:
        return await core.read()

    async def update(args: dict[str, Any], context: ToolContext) -> str:
        key, value = args.get("key"), args.get("value")
        if value is None:
            await core.delete(check_key(key))
            return f'Removed "{key}" from core memory.'
        await core.set(check_key(key), value)
        return f'Saved "{key}" in core memory.'

    return [
        Tool(READ_TOOL, "Read the core memory: the facts shared by every session of this "
             "space, as a JSON object.", {"type": "object", "properties": {}}, read),
        Tool(UPDATE_TOOL, "Save a fact in the core memory shared by every session of this "
             "space (or remove it with a null value). Keep it short and durable.",
             {"type": "object", "properties": {
                 "key": {"type": "string", "description": "A short name: letters, digits "
                         "or _ . : -"},
                 "value": {"description": "Any JSON value; null removes the key."}},
              "required": ["key"]}, update),
    ]
