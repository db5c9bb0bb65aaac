"""SCL (IEC 61850-6) parser for ICD/CID/IID/SCD files: the data model of each IED, resolved.

What it gives, per IED: its access points and server, logical devices (``inst`` and MMS domain name =
IED name + inst), logical nodes (prefix, lnClass, inst), their data objects with CDC, sub data objects and
data attributes (FC, bType, enum type, trigger options dchg/qchg/dupd, default value), struct attributes
expanded from the DataTypeTemplates (LNodeType → DOType → DAType, recursively), data sets (FCDA members) and
report control blocks (buffered or not, datSet, rptID, confRev, trigger options, optional fields, instances).

Values given in the IED section (``DOI``/``SDI``/``DAI``/``Val``) override the template defaults (``Val`` under a
``DA``/``BDA``); :attr:`DataAttribute.value` holds the effective text.

The XML is read with :mod:`defusedxml` (no entity expansion, no external entities): SCL files come from
vendors' tools and are untrusted input. Every problem raises :class:`SclError` whose message names the file.

Pure functions on immutable dataclasses; no I/O beyond reading the given file; safe from any thread.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

__all__ = [
    "AccessPoint",
    "DataAttribute",
    "DataObject",
    "DataSet",
    "EnumType",
    "Fcda",
    "LogicalDevice",
    "LogicalNode",
    "ReportControl",
    "SclError",
    "SclIed",
    "SclModel",
    "parse_scl",
    "parse_scl_text",
]

_SCL_NS = "http://www.iec.ch/61850/2003/SCL"
_MAX_DEPTH = 16  # deepest DOType/DAType nesting accepted (guards against reference cycles)


class SclError(ValueError):
    """The SCL file is malformed, unsupported or refers to a type it does not define. Names the file."""


@dataclass(frozen=True, slots=True)
class EnumType:
    id: str
    values: dict[int, str]  # ord -> name

    def ord_of(self, name: str) -> int | None:
        """The ordinal of an enum value name, or None."""
        for k, v in self.values.items():
            if v == name:
                return k
        return None


@dataclass(frozen=True, slots=True)
class DataAttribute:
    name: str
    fc: str  # functional constraint (BDAs inherit their DA's)
    btype: str  # SCL basic type: BOOLEAN, INT32, FLOAT32, Enum, Dbpos, Quality, Timestamp, Struct, VisString255…
    type_id: str = ""  # DAType id (Struct) or EnumType id (Enum)
    dchg: bool = False
    qchg: bool = False
    dupd: bool = False
    count: int = 0  # array elements (0 = not an array)
    value: str | None = None  # effective initial value text (instance Val over template Val)
    children: tuple[DataAttribute, ...] = ()  # the BDAs of a Struct

    def leaves(self, prefix: str = "") -> Iterator[tuple[str, DataAttribute]]:
        """``(dotted path, leaf)`` for this attribute and every primitive below it."""
        path = f"{prefix}{self.name}"
        if self.children:
            for c in self.children:
                yield from c.leaves(path + ".")
        else:
            yield path, self


@dataclass(frozen=True, slots=True)
class DataObject:
    name: str
    cdc: str  # common data class, e.g. "MV", "CMV", "WYE", "DPC", "SPS"
    type_id: str
    attributes: tuple[DataAttribute, ...] = ()
    sub_objects: tuple[DataObject, ...] = ()
    count: int = 0  # array elements of an SDO (0 = not an array)

    def attribute(self, path: str) -> DataAttribute | None:
        """The attribute at a dotted path below this object (``cVal.mag.f``), or None."""
        first, _, rest = path.partition(".")
        for a in self.attributes:
            if a.name == first:
                node: DataAttribute | None = a
                for part in rest.split(".") if rest else ():
                    node = next((c for c in node.children if c.name == part), None) if node else None
                return node
        return None

    def sub(self, name: str) -> DataObject | None:
        return next((s for s in self.sub_objects if s.name == name), None)


@dataclass(frozen=True, slots=True)
class Fcda:
    """One data set member (functionally constrained data or attribute)."""

    ld_inst: str
    prefix: str
    ln_class: str
    ln_inst: str
    do_name: str  # may be dotted for sub data objects: "A.phsA"
    da_name: str  # "" for a whole data object
    fc: str

    @property
    def ln_name(self) -> str:
        return f"{self.prefix}{self.ln_class}{self.ln_inst}"

    def reference(self, ied_name: str) -> str:
        """ACSI reference ``IED1LD0/MMXU1.A.phsA`` (without FC)."""
        tail = f".{self.da_name}" if self.da_name else ""
        return f"{ied_name}{self.ld_inst}/{self.ln_name}.{self.do_name}{tail}"

    def mms_item(self) -> str:
        """MMS variable name inside the LD's domain: ``MMXU1$MX$A$phsA``."""
        parts = [self.ln_name, self.fc, *self.do_name.split(".")]
        if self.da_name:
            parts.extend(self.da_name.split("."))
        return "$".join(parts)


@dataclass(frozen=True, slots=True)
class DataSet:
    name: str
    members: tuple[Fcda, ...]


@dataclass(frozen=True, slots=True)
class ReportControl:
    name: str
    dat_set: str  # data set name inside the same LN ("" = none)
    rpt_id: str
    conf_rev: int
    buffered: bool
    buf_time_ms: int
    intg_pd_ms: int
    trg_ops: frozenset[str]  # of "dchg", "qchg", "dupd", "period", "gi"
    opt_fields: frozenset[str]  # of "seqNum", "timeStamp", "dataSet", "reasonCode", "dataRef", "entryID", …
    max_instances: int = 1  # RptEnabled max
    indexed: bool = True  # instances are named <name>01, <name>02, …

    def instance_names(self) -> tuple[str, ...]:
        if not self.indexed:
            return (self.name,)
        return tuple(f"{self.name}{i:02d}" for i in range(1, max(1, self.max_instances) + 1))


@dataclass(frozen=True, slots=True)
class LogicalNode:
    prefix: str
    ln_class: str
    inst: str
    ln_type: str
    desc: str = ""
    data_objects: tuple[DataObject, ...] = ()
    data_sets: tuple[DataSet, ...] = ()
    report_controls: tuple[ReportControl, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.ln_class}{self.inst}"

    def data_object(self, path: str) -> DataObject | None:
        """The data object at a dotted path (``A.phsA``), or None."""
        first, *rest = path.split(".")
        node = next((d for d in self.data_objects if d.name == first), None)
        for part in rest:
            node = node.sub(part) if node else None
        return node


@dataclass(frozen=True, slots=True)
class LogicalDevice:
    inst: str
    domain: str  # MMS domain = IED name + inst (or ldName where given)
    desc: str = ""
    logical_nodes: tuple[LogicalNode, ...] = ()

    def ln(self, name: str) -> LogicalNode | None:
        return next((n for n in self.logical_nodes if n.name == name), None)


@dataclass(frozen=True, slots=True)
class AccessPoint:
    name: str
    logical_devices: tuple[LogicalDevice, ...] = ()  # of its Server ("" when the AP has none)


@dataclass(frozen=True, slots=True)
class SclIed:
    name: str
    manufacturer: str = ""
    type: str = ""
    access_points: tuple[AccessPoint, ...] = ()
    addresses: dict[str, str] = field(default_factory=dict)  # access point name -> IP from Communication

    @property
    def logical_devices(self) -> tuple[LogicalDevice, ...]:
        return tuple(ld for ap in self.access_points for ld in ap.logical_devices)

    def ld(self, inst: str) -> LogicalDevice | None:
        return next((d for d in self.logical_devices if d.inst == inst), None)


@dataclass(frozen=True, slots=True)
class SclModel:
    source: str  # file name (or "<text>") for messages
    ieds: tuple[SclIed, ...]
    enum_types: dict[str, EnumType]

    def ied(self, name: str) -> SclIed:
        for i in self.ieds:
            if i.name == name:
                return i
        names = ", ".join(i.name for i in self.ieds) or "none"
        raise SclError(f"{self.source}: no IED named {name!r} (IEDs in the file: {names})")


# ----------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _kids(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _kid(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _val(el: ET.Element) -> str | None:
    v = _kid(el, "Val")
    return None if v is None else (v.text or "").strip()


def _bool(text: str | None, default: bool = False) -> bool:
    if text is None:
        return default
    return text.strip().lower() in ("true", "1")


class _Parser:
    def __init__(self, source: str, root: ET.Element) -> None:
        self.src = source
        self.root = root
        if _local(root.tag) != "SCL":
            raise SclError(f"{source}: not an SCL file (root element is <{_local(root.tag)}>, expected <SCL>)")
        dtt = _kid(root, "DataTypeTemplates")
        self.lnode_types: dict[str, ET.Element] = {}
        self.do_types: dict[str, ET.Element] = {}
        self.da_types: dict[str, ET.Element] = {}
        self.enums: dict[str, EnumType] = {}
        if dtt is not None:
            for el in dtt:
                kind, tid = _local(el.tag), el.get("id", "")
                if kind == "LNodeType":
                    self.lnode_types[tid] = el
                elif kind == "DOType":
                    self.do_types[tid] = el
                elif kind == "DAType":
                    self.da_types[tid] = el
                elif kind == "EnumType":
                    vals: dict[int, str] = {}
                    for ev in _kids(el, "EnumVal"):
                        try:
                            vals[int(ev.get("ord", ""))] = (ev.text or "").strip()
                        except ValueError:
                            bad = ev.get("ord")
                            raise self.err(f"EnumType {tid!r}: EnumVal ord {bad!r} is not an integer") from None
                    self.enums[tid] = EnumType(tid, vals)

    def err(self, msg: str) -> SclError:
        return SclError(f"{self.src}: {msg}")

    def _int(self, text: str | None, what: str, default: int = 0) -> int:
        if text is None or text == "":
            return default
        try:
            return int(text)
        except ValueError:
            raise self.err(f"{what}: {text!r} is not an integer") from None

    # --- types ---------------------------------------------------------------------------------------

    def bdas(self, type_id: str, fc: str, trg: tuple[bool, bool, bool], depth: int, where: str
             ) -> tuple[DataAttribute, ...]:
        if depth > _MAX_DEPTH:
            raise self.err(f"{where}: types nested deeper than {_MAX_DEPTH} (a reference cycle?)")
        el = self.da_types.get(type_id)
        if el is None:
            raise self.err(f"{where}: DAType {type_id!r} is not defined in DataTypeTemplates")
        out = []
        for b in _kids(el, "BDA"):
            out.append(self.attr(b, fc, trg, depth + 1, f"{where}.{b.get('name', '?')}"))
        return tuple(out)

    def attr(self, el: ET.Element, fc: str, trg: tuple[bool, bool, bool], depth: int, where: str) -> DataAttribute:
        name = el.get("name")
        btype = el.get("bType")
        if not name or not btype:
            raise self.err(f"{where}: a DA/BDA needs name and bType")
        tid = el.get("type", "")
        children: tuple[DataAttribute, ...] = ()
        if btype == "Struct":
            if not tid:
                raise self.err(f"{where}: Struct attribute without type")
            children = self.bdas(tid, fc, trg, depth, where)
        elif btype == "Enum" and tid and tid not in self.enums:
            raise self.err(f"{where}: EnumType {tid!r} is not defined in DataTypeTemplates")
        return DataAttribute(
            name=name, fc=fc, btype=btype, type_id=tid, dchg=trg[0], qchg=trg[1], dupd=trg[2],
            count=self._int(el.get("count"), f"{where} count"), value=_val(el), children=children,
        )

    def do_type(self, type_id: str, name: str, depth: int, where: str, count: int = 0) -> DataObject:
        if depth > _MAX_DEPTH:
            raise self.err(f"{where}: types nested deeper than {_MAX_DEPTH} (a reference cycle?)")
        el = self.do_types.get(type_id)
        if el is None:
            raise self.err(f"{where}: DOType {type_id!r} is not defined in DataTypeTemplates")
        attrs: list[DataAttribute] = []
        subs: list[DataObject] = []
        for c in el:
            kind = _local(c.tag)
            cname = c.get("name", "?")
            if kind == "DA":
                fc = c.get("fc")
                if not fc:
                    raise self.err(f"{where}.{cname}: DA without fc")
                trg = (_bool(c.get("dchg")), _bool(c.get("qchg")), _bool(c.get("dupd")))
                attrs.append(self.attr(c, fc, trg, depth + 1, f"{where}.{cname}"))
            elif kind == "SDO":
                sub_type = c.get("type", "")
                subs.append(self.do_type(sub_type, cname, depth + 1, f"{where}.{cname}",
                                         self._int(c.get("count"), f"{where}.{cname} count")))
        return DataObject(name, el.get("cdc", ""), type_id, tuple(attrs), tuple(subs), count)

    # --- instance values (DOI/SDI/DAI) -----------------------------------------------------------------

    def apply_values(self, dobj: DataObject, el: ET.Element) -> DataObject:
        """``dobj`` with the Val texts of a DOI (or SDI) element applied."""
        attrs = {a.name: a for a in dobj.attributes}
        subs = {s.name: s for s in dobj.sub_objects}
        for c in el:
            kind, cname = _local(c.tag), c.get("name", "")
            if kind == "DAI" and cname in attrs:
                v = _val(c)
                if v is not None:
                    attrs[cname] = _with_value(attrs[cname], v)
            elif kind == "SDI" and cname in attrs:
                attrs[cname] = self.apply_attr_values(attrs[cname], c)
            elif kind == "SDI" and cname in subs:
                subs[cname] = self.apply_values(subs[cname], c)
        return DataObject(dobj.name, dobj.cdc, dobj.type_id, tuple(attrs[a.name] for a in dobj.attributes),
                          tuple(subs[s.name] for s in dobj.sub_objects), dobj.count)

    def apply_attr_values(self, attr: DataAttribute, el: ET.Element) -> DataAttribute:
        kids = {k.name: k for k in attr.children}
        for c in el:
            kind, cname = _local(c.tag), c.get("name", "")
            if cname not in kids:
                continue
            if kind == "DAI":
                v = _val(c)
                if v is not None:
                    kids[cname] = _with_value(kids[cname], v)
            elif kind == "SDI":
                kids[cname] = self.apply_attr_values(kids[cname], c)
        return DataAttribute(attr.name, attr.fc, attr.btype, attr.type_id, attr.dchg, attr.qchg, attr.dupd,
                             attr.count, attr.value, tuple(kids[k.name] for k in attr.children))

    # --- IED section ---------------------------------------------------------------------------------

    def ln(self, el: ET.Element, where: str) -> LogicalNode:
        ln_class = el.get("lnClass", "")
        ln_type = el.get("lnType", "")
        if not ln_class or not ln_type:
            raise self.err(f"{where}: logical node without lnClass or lnType")
        prefix = el.get("prefix", "")
        inst = el.get("inst", "")
        name = f"{prefix}{ln_class}{inst}"
        t = self.lnode_types.get(ln_type)
        if t is None:
            raise self.err(f"{where}/{name}: LNodeType {ln_type!r} is not defined in DataTypeTemplates")
        dos: dict[str, DataObject] = {}
        for d in _kids(t, "DO"):
            dname = d.get("name", "")
            dos[dname] = self.do_type(d.get("type", ""), dname, 0, f"{where}/{name}.{dname}",
                                      self._int(d.get("count"), f"{where}/{name}.{dname} count"))
        for doi in _kids(el, "DOI"):
            dname = doi.get("name", "")
            if dname in dos:
                dos[dname] = self.apply_values(dos[dname], doi)
        data_sets = tuple(self.data_set(ds, f"{where}/{name}") for ds in _kids(el, "DataSet"))
        rcbs = tuple(self.report_control(rc, f"{where}/{name}") for rc in _kids(el, "ReportControl"))
        ds_names = {d.name for d in data_sets}
        for rc in rcbs:
            if rc.dat_set and rc.dat_set not in ds_names:
                raise self.err(f"{where}/{name}: ReportControl {rc.name!r} refers to data set {rc.dat_set!r}, "
                               f"which this LN does not define")
        return LogicalNode(prefix, ln_class, inst, ln_type, el.get("desc", ""), tuple(dos.values()), data_sets, rcbs)

    def data_set(self, el: ET.Element, where: str) -> DataSet:
        name = el.get("name", "")
        if not name:
            raise self.err(f"{where}: DataSet without name")
        members = []
        for f in _kids(el, "FCDA"):
            fc = f.get("fc", "")
            if not fc or not f.get("lnClass") or not f.get("doName"):
                raise self.err(f"{where}.{name}: FCDA needs lnClass, doName and fc")
            members.append(Fcda(f.get("ldInst", ""), f.get("prefix", ""), f.get("lnClass", ""), f.get("lnInst", ""),
                                f.get("doName", ""), f.get("daName", ""), fc))
        return DataSet(name, tuple(members))

    def report_control(self, el: ET.Element, where: str) -> ReportControl:
        name = el.get("name", "")
        if not name:
            raise self.err(f"{where}: ReportControl without name")
        w = f"{where}.{name}"
        trg = _kid(el, "TrgOps")
        opt = _kid(el, "OptFields")
        ena = _kid(el, "RptEnabled")
        trg_ops = frozenset(k for k in ("dchg", "qchg", "dupd", "period", "gi")
                            if trg is not None and _bool(trg.get(k)))
        opt_fields = frozenset(k for k, v in (opt.attrib.items() if opt is not None else ()) if _bool(v))
        return ReportControl(
            name=name, dat_set=el.get("datSet", ""), rpt_id=el.get("rptID", ""),
            conf_rev=self._int(el.get("confRev"), f"{w} confRev"), buffered=_bool(el.get("buffered")),
            buf_time_ms=self._int(el.get("bufTime"), f"{w} bufTime"),
            intg_pd_ms=self._int(el.get("intgPd"), f"{w} intgPd"), trg_ops=trg_ops, opt_fields=opt_fields,
            max_instances=self._int(ena.get("max") if ena is not None else None, f"{w} RptEnabled max", 1),
            indexed=_bool(el.get("indexed"), True),
        )

    def ieds(self) -> tuple[SclIed, ...]:
        addresses: dict[tuple[str, str], str] = {}
        comm = _kid(self.root, "Communication")
        for sn in _kids(comm, "SubNetwork") if comm is not None else ():
            for cap in _kids(sn, "ConnectedAP"):
                addr = _kid(cap, "Address")
                for p in _kids(addr, "P") if addr is not None else ():
                    if p.get("type") == "IP":
                        addresses[(cap.get("iedName", ""), cap.get("apName", ""))] = (p.text or "").strip()
        out = []
        for ied in _kids(self.root, "IED"):
            iname = ied.get("name", "")
            if not iname:
                raise self.err("an IED without name")
            aps = []
            for ap in _kids(ied, "AccessPoint"):
                server = _kid(ap, "Server")
                lds = []
                for ld in _kids(server, "LDevice") if server is not None else ():
                    inst = ld.get("inst", "")
                    if not inst:
                        raise self.err(f"IED {iname}: LDevice without inst")
                    where = f"{iname}{inst}"
                    lns = []
                    ln0 = _kid(ld, "LN0")
                    if ln0 is not None:
                        lns.append(self.ln(ln0, where))
                    lns.extend(self.ln(n, where) for n in _kids(ld, "LN"))
                    lds.append(LogicalDevice(inst, ld.get("ldName") or f"{iname}{inst}", ld.get("desc", ""),
                                             tuple(lns)))
                aps.append(AccessPoint(ap.get("name", ""), tuple(lds)))
            ied_addr = {ap: ip for (n, ap), ip in addresses.items() if n == iname}
            out.append(SclIed(iname, ied.get("manufacturer", ""), ied.get("type", ""), tuple(aps), ied_addr))
        return tuple(out)


def _with_value(a: DataAttribute, value: str) -> DataAttribute:
    return DataAttribute(a.name, a.fc, a.btype, a.type_id, a.dchg, a.qchg, a.dupd, a.count, value, a.children)


def _parse_root(root: ET.Element, source: str) -> SclModel:
    p = _Parser(source, root)
    ieds = p.ieds()
    if not ieds:
        raise SclError(f"{source}: no <IED> in the file")
    return SclModel(source, ieds, dict(p.enums))


def parse_scl_text(text: str | bytes, source: str = "<text>") -> SclModel:
    """Parse SCL from a string. Raises :class:`SclError` (message starts with ``source``)."""
    try:
        root = DET.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as e:
        raise SclError(f"{source}: refused unsafe XML ({type(e).__name__})") from None
    except ET.ParseError as e:
        raise SclError(f"{source}: not well-formed XML: {e}") from None
    return _parse_root(root, source)


def parse_scl(path: str | Path) -> SclModel:
    """Read and parse an SCL file. Raises :class:`SclError` naming the file for any problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise SclError(f"{p}: cannot read file: {e.strerror or e}") from None
    return parse_scl_text(data, str(p))
