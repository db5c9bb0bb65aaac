"""``gateway probe iec61850``: browse an IED's model over MMS (logical devices, nodes, data objects, attributes)
and read values.

The model comes from open61850's ``discover`` (GetNameList per logical device), the same client library and
connection settings as :mod:`protocols.iec61850` (``MmsClient.connect`` with a timeout). open61850 is alpha and
pinned; this module and :mod:`protocols.iec61850` are its only users.

Threads: blocking calls in the caller's thread (the CLI's main thread). open61850 runs a receive thread per
association, joined by :meth:`MmsClient.close` (always called before returning).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from open61850.data import StructureData
from open61850.display import format_leaf, format_value
from open61850.mms import DataAccessError, MmsClient, MmsError
from open61850.mms.model import LogicalNode, ServerModel, discover
from open61850.mms.reference import Reference

__all__ = ["BrowseNode", "Iec61850ProbeError", "browse", "format_tree", "open_client", "read_refs", "tree"]


class Iec61850ProbeError(Exception):
    """The server could not be reached, or a reference is wrong; the message is for the operator."""


@contextmanager
def open_client(host: str, port: int = 102, timeout_s: float = 3.0) -> Iterator[MmsClient]:
    """An MMS association to ``host:port``, closed on exit. Raises :class:`Iec61850ProbeError`."""
    try:
        client = MmsClient.connect(host, port, timeout=timeout_s)
    except (MmsError, OSError) as exc:
        raise Iec61850ProbeError(f"no MMS association with {host}:{port}: {exc}") from None
    try:
        client.request_timeout = timeout_s
        yield client
    finally:
        client.close()


def browse(client: MmsClient) -> ServerModel:
    try:
        return discover(client)
    except (MmsError, OSError) as exc:
        raise Iec61850ProbeError(f"browsing the model failed: {exc}") from None


@dataclass
class BrowseNode:
    """One line of the tree: a logical device, logical node, data object or attribute."""

    name: str
    detail: str = ""  # FCs of a data object, "[FC]" of an attribute, counts for LDs/LNs
    children: list[BrowseNode] = field(default_factory=list)


def _do_tree(ln: LogicalNode) -> list[BrowseNode]:
    """Data objects of a logical node with their attributes below them (FC on each attribute)."""
    by_do: dict[str, BrowseNode] = {}
    fcs: dict[str, list[str]] = {}
    for ref in ln.references():
        do, *rest = ref.path
        node = by_do.setdefault(do, BrowseNode(do))
        fc = ref.fc or ""
        if fc not in fcs.setdefault(do, []):
            fcs[do].append(fc)
        if rest:
            node.children.append(BrowseNode(".".join(rest), f"[{fc}]"))
    for do, node in by_do.items():
        node.detail = ",".join(fcs[do])
    return list(by_do.values())


def tree(model: ServerModel) -> list[BrowseNode]:
    out: list[BrowseNode] = []
    for ld_name, ld in model.logical_devices.items():
        ld_node = BrowseNode(ld_name, f"{len(ld.logical_nodes)} logical nodes")
        for ln_name, ln in ld.logical_nodes.items():
            dos = _do_tree(ln)
            extra = []
            cbs = ln.control_blocks()
            if cbs:
                extra.append("control blocks: " + ", ".join(f"{c.path[0]}[{c.fc}]" for c in cbs))
            if ln.data_sets:
                extra.append("data sets: " + ", ".join(ln.data_sets))
            ld_node.children.append(BrowseNode(ln_name, "; ".join([f"{len(dos)} data objects", *extra]), dos))
        out.append(ld_node)
    return out


def format_tree(nodes: list[BrowseNode], depth: int = 3) -> str:
    """Indented tree down to ``depth`` levels (1 = logical devices, 2 = + logical nodes, 3 = + data objects,
    4 = + attributes)."""
    lines: list[str] = []

    def walk(ns: list[BrowseNode], level: int) -> None:
        for n in ns:
            pad = "  " * (level - 1)
            lines.append(f"{pad}{n.name}" + (f"  ({n.detail})" if n.detail and level < 4 else
                                              f"  {n.detail}" if n.detail else ""))
            if level < depth:
                walk(n.children, level + 1)

    walk(nodes, 1)
    return "\n".join(lines)


def read_refs(client: MmsClient, model: ServerModel | None, refs: list[str]) -> list[tuple[str, str]]:
    """``(reference with FC, value text)`` for each reference (``LD/LN.DO[.DA]`` with or without ``[FC]``; without,
    the FC is looked up in ``model``). Errors are values: ``error: ...``."""
    out: list[tuple[str, str]] = []
    for text in refs:
        try:
            ref = Reference.parse(text)
            if ref.fc is None and ref.path:
                if model is None:
                    raise ValueError("give the functional constraint, e.g. IED1LD0/MMXU1.Hz.mag.f[MX]")
                ref = model.resolve(ref)
        except (KeyError, ValueError) as exc:
            out.append((text, f"error: {str(exc).strip(chr(39))}"))
            continue
        try:
            value = client.read(ref)
        except DataAccessError as exc:
            out.append((str(ref), f"error: {exc}"))
            continue
        except (MmsError, OSError) as exc:
            raise Iec61850ProbeError(f"reading {ref}: {exc}") from None
        try:
            mms_type = client.get_type(ref)
        except (MmsError, OSError):
            mms_type = None
        if ref.path and not isinstance(value, StructureData):  # one leaf: q, Dbpos, time shown by their names
            out.append((str(ref), format_leaf(ref.path[-1], value)))
        else:
            out.append((str(ref), format_value(value, mms_type)))
    return out
