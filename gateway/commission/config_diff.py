"""``gateway config diff``: what differs between two configs, in the config's own terms (a semantic diff of the
loaded :class:`gateway.config.GatewayConfig`, not of the text: comments, key order, templates and defaults that
were spelled out make no difference).

:func:`diff_configs` is also what the daemon's reload uses to decide what to restart: each :class:`Change` has a
key path in the loader's notation (``links[feeders].devices[feeder1].points[Ia].scale``) and its ``section``
(``gateway``, ``links``, ``sinks``, ``storage``, ``panel``, ``protection``, ``protection_runtime``, ``analytics``).

Lists of named things (links, devices, points, sinks, bays, MQTT topics and fields) are matched by name, so a
moved entry is not a change; other lists compare as values. Secrets (``token``, ``password``) are never printed.

Pure functions; thread-safe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from gateway.config import GatewayConfig

__all__ = ["Change", "diff_configs", "format_changes"]

_SKIP: Final = frozenset({"source"})  # not settings
_GATEWAY_SCALARS: Final = frozenset({"id", "data_dir", "log_level"})
_SECRET: Final = frozenset({"token", "password"})
_KEYS: Final = ("name", "filter", "field")  # what identifies an entry of a list of tables


@dataclass(frozen=True, slots=True)
class Change:
    kind: Literal["added", "removed", "changed"]
    path: str  # key path, e.g. "links[feeders].devices[feeder1].points[Ia].scale" or "sinks[cloud]"
    old: Any = None  # the old value (changed), the removed entry (removed)
    new: Any = None  # the new value (changed), the added entry (added)

    @property
    def section(self) -> str:
        head = self.path.split(".", 1)[0]
        return head.split("[", 1)[0]

    def __str__(self) -> str:
        if self.kind == "added":
            return f"+ {self.path}{_summary(self.new)}"
        if self.kind == "removed":
            return f"- {self.path}{_summary(self.old)}"
        return f"~ {self.path}: {_show(self.path, self.old)} -> {_show(self.path, self.new)}"


def _summary(entry: Any) -> str:
    parts = []
    for f in ("protocol", "host", "port", "serial_port", "kind", "address", "url"):
        if dataclasses.is_dataclass(entry) and hasattr(entry, f):
            v = getattr(entry, f)
            if v not in ("", None):
                parts.append(f"{f}={v}")
    for f in ("devices", "points"):
        if dataclasses.is_dataclass(entry) and hasattr(entry, f):
            parts.append(f"{len(getattr(entry, f))} {f}")
    return f" ({', '.join(parts)})" if parts else ""


def _show(path: str, v: Any) -> str:
    if path.rsplit(".", 1)[-1] in _SECRET:
        return "(set)" if v else "(empty)"
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple | list) and v and all(dataclasses.is_dataclass(x) for x in v):
        return f"[{len(v)} entries]"
    return repr(v)


def _key_of(entry: Any) -> str | None:
    for k in _KEYS:
        v = getattr(entry, k, None)
        if isinstance(v, str):
            return v
    return None


def _named(items: Sequence[Any]) -> dict[str, Any] | None:
    """``{key: entry}`` when every entry is a dataclass with a unique key, else None (compare as a value)."""
    if not items or not all(dataclasses.is_dataclass(x) for x in items):
        return None
    out: dict[str, Any] = {}
    for x in items:
        k = _key_of(x)
        if k is None or k in out:
            return None
        out[k] = x
    return out


def _diff(a: Any, b: Any, path: str, out: list[Change]) -> None:
    if a == b:
        return
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        for f in dataclasses.fields(a):
            if f.name in _SKIP:
                continue
            _diff(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}" if path else f.name, out)
        return
    if isinstance(a, tuple) and isinstance(b, tuple):
        na, nb = _named(a), _named(b)
        if (na is not None or not a) and (nb is not None or not b) and (na or nb):
            na, nb = na or {}, nb or {}
            for k, entry in na.items():
                sub = f"{path}[{k}]"
                if k not in nb:
                    out.append(Change("removed", sub, old=entry))
                else:
                    _diff(entry, nb[k], sub, out)
            for k, entry in nb.items():
                if k not in na:
                    out.append(Change("added", f"{path}[{k}]", new=entry))
            return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in b:
                out.append(Change("removed", f"{path}.{k}", old=a[k]))
            elif k not in a:
                out.append(Change("added", f"{path}.{k}", new=b[k]))
            else:
                _diff(a[k], b[k], f"{path}.{k}", out)
        return
    out.append(Change("changed", path, a, b))


def diff_configs(a: GatewayConfig, b: GatewayConfig) -> list[Change]:
    """Every difference from ``a`` (old) to ``b`` (new), in config order; empty when they are equivalent."""
    out: list[Change] = []
    for f in dataclasses.fields(GatewayConfig):
        if f.name in _SKIP:
            continue
        path = f"gateway.{f.name}" if f.name in _GATEWAY_SCALARS else f.name
        _diff(getattr(a, f.name), getattr(b, f.name), path, out)
    return out


def format_changes(changes: Sequence[Change], old: str = "old", new: str = "new") -> str:
    """One line per change (``+`` added, ``-`` removed, ``~`` changed) and a count; "no differences" when none."""
    if not changes:
        return f"no differences between {old} and {new}"
    lines = [f"--- {old}", f"+++ {new}", *(str(c) for c in changes)]
    counts = {k: sum(c.kind == k for c in changes) for k in ("added", "removed", "changed")}
    lines.append(f"{len(changes)} change(s): {counts['added']} added, {counts['removed']} removed, "
                 f"{counts['changed']} changed")
    return "\n".join(lines)
