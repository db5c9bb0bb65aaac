"""A simulated IEC 61850 IED: a libiec61850 1.5 MMS server (``pyiec61850``, GPLv3 — TEST ONLY, never imported
by the product packages) whose data model is built from an SCL file through :mod:`protocols.scl`.

libiec61850 cannot read ICD files; this module walks the parsed SCL model and builds the server model with the
dynamic model API (``IedModel_create``, ``LogicalDevice_create``, ``LogicalNode_create``, ``DataObject_create``,
``DataAttribute_create``, ``DataSet_create``/``DataSetEntry_create``, ``ReportControlBlock_create``), then sets the
initial values the SCL gives (``Val``: ctlModel, sboTimeout, units, Beh…).

What a test can do with it:

- set values, quality and timestamps (with time quality) of any data attribute (:meth:`Iec61850Server.set_float`,
  :meth:`~Iec61850Server.set_dbpos`, :meth:`~Iec61850Server.set_bool`, :meth:`~Iec61850Server.set_quality`,
  :meth:`~Iec61850Server.update`: value + q + t of one data object at once, atomically for reports);
- make controls succeed, refuse them at the check stage with an AddCause (blocked by interlocking, by switching
  hierarchy…), fail them during execution (negative CommandTermination), or make them slow
  (:meth:`~Iec61850Server.control_behaviour`); see which controls arrived (:attr:`~Iec61850Server.operations`);
- drop every client association from the server side (:meth:`~Iec61850Server.drop_connections`: the MMS server is
  stopped and started again on the same port; buffered report control blocks keep their buffers);
- read the selection state of an SBO object (``stSeld``) to wait for a selection to expire.

Threads: libiec61850 runs its own server thread (started by :meth:`start`, joined by :meth:`stop`); control
callbacks run on it and take the Python GIL through the SWIG directors. Every public method may be called from
any thread; value updates take the data-model lock so a report never carries a half-updated object.

Known limitation of the bindings: pyiec61850 keeps control subscribers in a process-wide table keyed by object
reference that is never cleared, and a subscriber must outlive every server it was registered with. The control
subscribers and handlers are therefore kept for the life of the process (a few hundred bytes per server), and the
handlers route each callback to the server it belongs to.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyiec61850.iec61850 as lib

from hil_tests.net import free_port
from protocols.scl import DataAttribute, DataObject, LogicalNode, SclIed, SclModel, parse_scl

__all__ = ["DEFAULT_ICD", "DIRECTOR_ERRORS", "ControlBehaviour", "Iec61850Server", "Operation"]

log = logging.getLogger(__name__)

DEFAULT_ICD: Final = Path(__file__).resolve().parent.parent / "tests" / "data" / "ied1.icd"

# SCL bType -> libiec61850 DataAttributeType
_BTYPES: Final[dict[str, int]] = {
    "BOOLEAN": lib.IEC61850_BOOLEAN,
    "INT8": lib.IEC61850_INT8,
    "INT16": lib.IEC61850_INT16,
    "INT24": lib.IEC61850_INT32,
    "INT32": lib.IEC61850_INT32,
    "INT64": lib.IEC61850_INT64,
    "INT128": lib.IEC61850_INT128,
    "INT8U": lib.IEC61850_INT8U,
    "INT16U": lib.IEC61850_INT16U,
    "INT24U": lib.IEC61850_INT24U,
    "INT32U": lib.IEC61850_INT32U,
    "FLOAT32": lib.IEC61850_FLOAT32,
    "FLOAT64": lib.IEC61850_FLOAT64,
    "Enum": lib.IEC61850_ENUMERATED,
    "Dbpos": lib.IEC61850_CODEDENUM,
    "Tcmd": lib.IEC61850_CODEDENUM,
    "Quality": lib.IEC61850_QUALITY,
    "Timestamp": lib.IEC61850_TIMESTAMP,
    "VisString32": lib.IEC61850_VISIBLE_STRING_32,
    "VisString64": lib.IEC61850_VISIBLE_STRING_64,
    "VisString65": lib.IEC61850_VISIBLE_STRING_65,
    "VisString129": lib.IEC61850_VISIBLE_STRING_129,
    "ObjRef": lib.IEC61850_VISIBLE_STRING_129,
    "VisString255": lib.IEC61850_VISIBLE_STRING_255,
    "Unicode255": lib.IEC61850_UNICODE_STRING_255,
    "Octet64": lib.IEC61850_OCTET_STRING_64,
    "Octet6": lib.IEC61850_OCTET_STRING_6,
    "Octet8": lib.IEC61850_OCTET_STRING_8,
    "EntryID": lib.IEC61850_OCTET_STRING_8,
    "Check": lib.IEC61850_CHECK,
    "EntryTime": lib.IEC61850_ENTRY_TIME,
    "PhyComAddr": lib.IEC61850_PHYCOMADDR,
    "Currency": lib.IEC61850_CURRENCY,
    "OptFlds": lib.IEC61850_OPTFLDS,
    "TrgOps": lib.IEC61850_TRGOPS,
    "Struct": lib.IEC61850_CONSTRUCTED,
}
_FCS: Final[dict[str, int]] = {
    name: getattr(lib, f"IEC61850_FC_{name}")
    for name in ("ST", "MX", "SP", "SV", "CF", "DC", "SG", "SE", "SR", "OR", "BL", "EX", "CO")
}
_TRG_OPS: Final[dict[str, int]] = {
    "dchg": lib.TRG_OPT_DATA_CHANGED, "qchg": lib.TRG_OPT_QUALITY_CHANGED, "dupd": lib.TRG_OPT_DATA_UPDATE,
    "period": lib.TRG_OPT_INTEGRITY, "gi": lib.TRG_OPT_GI,
}
_OPT_FIELDS: Final[dict[str, int]] = {
    "seqNum": lib.RPT_OPT_SEQ_NUM, "timeStamp": lib.RPT_OPT_TIME_STAMP, "reasonCode": lib.RPT_OPT_REASON_FOR_INCLUSION,
    "dataSet": lib.RPT_OPT_DATA_SET, "dataRef": lib.RPT_OPT_DATA_REFERENCE, "bufOvfl": lib.RPT_OPT_BUFFER_OVERFLOW,
    "entryID": lib.RPT_OPT_ENTRY_ID, "configRef": lib.RPT_OPT_CONF_REV,
}
_DBPOS: Final = {0: lib.DBPOS_INTERMEDIATE_STATE, 1: lib.DBPOS_OFF, 2: lib.DBPOS_ON, 3: lib.DBPOS_BAD_STATE}
# time-quality octet bits (IEC 61850-8-1): leap seconds known, clock failure, clock not synchronised
TQ_LEAP_SECONDS_KNOWN: Final = 0x80
TQ_CLOCK_FAILURE: Final = 0x40
TQ_CLOCK_NOT_SYNCHRONISED: Final = 0x20


@dataclass
class ControlBehaviour:
    """How the server answers controls on one object. Change it any time (read on the server thread)."""

    refuse_add_cause: int = 0  # != 0: the check refuses select/operate with this AddCause (10 = interlocking)
    fail_add_cause: int = 0  # != 0: execution fails (negative CommandTermination) with this AddCause
    slow_s: float = 0.0  # the execution takes this long (the handler answers "waiting" until then)
    update_position: bool = True  # a successful operate moves stVal (DPC: ctlVal True -> on, False -> off)


@dataclass(frozen=True)
class Operation:
    """A control that reached the execution stage."""

    object_ref: str  # "IED1LD0/CSWI1.Pos"
    ctl_val: Any  # bool for BOOLEAN ctlVal, else None
    or_cat: int  # originator category
    ctl_num: int


@dataclass(eq=False)
class _ControlState:
    ref: str
    node: Any  # DataObject*
    behaviour: ControlBehaviour = field(default_factory=ControlBehaviour)
    started: float | None = None  # time.monotonic() when the current execution began


# ----------------------------------------------------------------------------------------------------
# Control callbacks: SWIG directors, kept for the process's life (see the module docstring).
# ----------------------------------------------------------------------------------------------------

_ROUTES: dict[str, Iec61850Server] = {}  # object ref -> the running server that owns it
_ROUTES_LOCK = threading.Lock()
_KEEP: list[Any] = []  # subscribers and handlers that must never be freed


def _route(ref: str) -> tuple[Iec61850Server, _ControlState] | None:
    with _ROUTES_LOCK:
        srv = _ROUTES.get(ref)
    if srv is None:
        return None
    st = srv._controls.get(ref)
    return (srv, st) if st is not None else None


DIRECTOR_ERRORS: list[str] = []  # exceptions raised inside control callbacks (a test may assert it is empty)


def _director_error(ref: str, exc: BaseException) -> None:
    msg = f"{ref}: {type(exc).__name__}: {exc}"
    DIRECTOR_ERRORS.append(msg)
    log.error("control callback failed: %s", msg)


class _Check(lib.CheckHandlerForPython):
    def __init__(self, ref: str) -> None:
        lib.CheckHandlerForPython.__init__(self)
        self.ref = ref

    def trigger(self) -> None:
        # An exception escaping a director aborts the process: log it and refuse instead.
        try:
            self._check()
        except Exception as exc:
            _director_error(self.ref, exc)
            self._libiec61850_check_handler_result = lib.CONTROL_HARDWARE_FAULT

    def _check(self) -> None:
        r = _route(self.ref)
        action = self._libiec61850_control_action
        if r is None:
            self._libiec61850_check_handler_result = lib.CONTROL_OBJECT_UNDEFINED
            return
        _, st = r
        cause = st.behaviour.refuse_add_cause
        if cause:
            lib.ControlAction_setAddCause(action, cause)
            self._libiec61850_check_handler_result = lib.CONTROL_OBJECT_ACCESS_DENIED
            return
        self._libiec61850_check_handler_result = lib.CONTROL_ACCEPTED


class _Execute(lib.ControlHandlerForPython):
    def __init__(self, ref: str) -> None:
        lib.ControlHandlerForPython.__init__(self)
        self.ref = ref

    def trigger(self) -> None:
        try:
            self._execute()
        except Exception as exc:
            _director_error(self.ref, exc)
            self._libiec61850_control_handler_result = lib.CONTROL_RESULT_FAILED

    def _execute(self) -> None:
        r = _route(self.ref)
        if r is None:
            self._libiec61850_control_handler_result = lib.CONTROL_RESULT_FAILED
            return
        srv, st = r
        action = self._libiec61850_control_action
        b = st.behaviour
        now = time.monotonic()
        if st.started is None:
            st.started = now
        if now - st.started < b.slow_s:
            self._libiec61850_control_handler_result = lib.CONTROL_RESULT_WAITING
            return
        st.started = None
        value = self._libiec61850_mms_value
        ctl_val: Any = lib.MmsValue_getBoolean(value) if lib.MmsValue_getTypeString(value) == "boolean" else None
        srv._record(Operation(st.ref, ctl_val, lib.ControlAction_getOrCat(action), lib.ControlAction_getCtlNum(action)))
        if b.fail_add_cause:
            lib.ControlAction_setAddCause(action, b.fail_add_cause)
            self._libiec61850_control_handler_result = lib.CONTROL_RESULT_FAILED
            return
        if b.update_position and isinstance(ctl_val, bool):
            srv._set_dbpos_unlocked(st.ref, 2 if ctl_val else 1)
        self._libiec61850_control_handler_result = lib.CONTROL_RESULT_OK


# ----------------------------------------------------------------------------------------------------


class Iec61850Server:
    """One simulated IED built from ``scl`` (an :class:`SclModel` or a path), served on ``host:port``.

    ``port=0`` picks a free port (see :attr:`port`). Use as a context manager or call :meth:`start`/:meth:`stop`.
    """

    def __init__(self, scl: SclModel | str | Path = DEFAULT_ICD, ied: str | None = None, *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        model = scl if isinstance(scl, SclModel) else parse_scl(scl)
        self.scl_ied: SclIed = model.ied(ied) if ied else model.ieds[0]
        self._enums = model.enum_types
        self.host = host
        self.port = port or free_port()
        self._lock = threading.RLock()
        self._ops_lock = threading.Lock()
        self.operations: list[Operation] = []  # controls that reached execution, in order
        self._controls: dict[str, _ControlState] = {}
        self._model: Any = None
        self._server: Any = None
        self._running = False
        self._build()

    # --- model ----------------------------------------------------------------------------------------

    def _build(self) -> None:
        ied = self.scl_ied
        self._model = lib.IedModel_create(ied.name)
        initial: list[tuple[Any, DataAttribute]] = []
        controllable: list[tuple[str, Any]] = []
        for ld in ied.logical_devices:
            ld_node = lib.LogicalDevice_create(ld.inst, self._model)
            for ln in ld.logical_nodes:
                ln_node = lib.LogicalNode_create(ln.name, ld_node)
                for do in ln.data_objects:
                    self._build_do(do, lib.toModelNode(ln_node), initial, controllable, f"{ld.domain}/{ln.name}")
                self._build_data_sets(ln, ln_node)
        for node, attr in initial:
            mv = self._initial_value(attr)
            if mv is not None:
                lib.DataAttribute_setValue(node, mv)
                lib.MmsValue_delete(mv)
        self._server = lib.IedServer_create(self._model)
        for ref, node in controllable:
            self._install_control(ref, node)

    def _build_do(self, do: DataObject, parent: Any, initial: list[tuple[Any, DataAttribute]],
                  controllable: list[tuple[str, Any]], path: str) -> None:
        node = lib.DataObject_create(do.name, parent, do.count)
        mparent = lib.toModelNode(node)
        for a in do.attributes:
            self._build_da(a, mparent, initial)
        for s in do.sub_objects:
            self._build_do(s, mparent, initial, controllable, f"{path}.{do.name}")
        if any(a.name == "Oper" and a.fc == "CO" for a in do.attributes):
            controllable.append((f"{path}.{do.name}", node))

    def _build_da(self, a: DataAttribute, parent: Any, initial: list[tuple[Any, DataAttribute]]) -> None:
        btype = _BTYPES.get(a.btype)
        if btype is None:
            raise ValueError(f"{self.scl_ied.name}: bType {a.btype!r} of {a.name} is not supported by the test server")
        trg = (lib.TRG_OPT_DATA_CHANGED if a.dchg else 0) | (lib.TRG_OPT_QUALITY_CHANGED if a.qchg else 0) | (
            lib.TRG_OPT_DATA_UPDATE if a.dupd else 0)
        node = lib.DataAttribute_create(a.name, parent, btype, _FCS[a.fc], trg, a.count, 0)
        if a.children:
            as_parent = lib.ModelNode_getChild(parent, a.name)  # the bindings cannot cast DataAttribute*
            for c in a.children:
                self._build_da(c, as_parent, initial)
        elif a.value is not None:
            initial.append((node, a))

    def _build_data_sets(self, ln: LogicalNode, ln_node: Any) -> None:
        for ds in ln.data_sets:
            ds_node = lib.DataSet_create(ds.name, ln_node)
            for m in ds.members:
                lib.DataSetEntry_create(ds_node, f"{m.ld_inst}/{m.mms_item()}", -1, None)
        for rc in ln.report_controls:
            trg = 0
            for k in rc.trg_ops:
                trg |= _TRG_OPS[k]
            opts = 0
            for k in rc.opt_fields:
                opts |= _OPT_FIELDS.get(k, 0)
            for inst in rc.instance_names():
                lib.ReportControlBlock_create(inst, ln_node, rc.rpt_id or None, rc.buffered, rc.dat_set or None,
                                              rc.conf_rev, trg, opts, rc.buf_time_ms, rc.intg_pd_ms)

    def _initial_value(self, a: DataAttribute) -> Any:
        text = a.value or ""
        b = a.btype
        if b == "Enum":
            et = self._enums.get(a.type_id)
            ordv = et.ord_of(text) if et else None
            if ordv is None:
                try:
                    ordv = int(text)
                except ValueError:
                    return None
            return lib.MmsValue_newIntegerFromInt32(ordv)
        if b == "BOOLEAN":
            return lib.MmsValue_newBoolean(text.lower() in ("true", "1"))
        if b.startswith("INT") and b.endswith("U"):
            return lib.MmsValue_newUnsignedFromUint32(int(text))
        if b.startswith("INT"):
            return lib.MmsValue_newIntegerFromInt32(int(text))
        if b == "FLOAT32":
            return lib.MmsValue_newFloat(float(text))
        if b == "FLOAT64":
            return lib.MmsValue_newDouble(float(text))
        if b.startswith("VisString") or b == "ObjRef":
            return lib.MmsValue_newVisibleString(text)
        return None

    def _install_control(self, ref: str, node: Any) -> None:
        self._controls[ref] = _ControlState(ref, node)
        sub = lib.ControlSubscriberForPython()
        sub.setIedServer(self._server)
        sub.setControlObject(node)
        check, execute = _Check(ref), _Execute(ref)
        sub.setCheckHandler(check.__disown__())
        sub.setControlHandler(execute.__disown__())
        sub.subscribe()
        _KEEP.extend((sub, check, execute))

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> Iec61850Server:
        with _ROUTES_LOCK:
            for ref in self._controls:
                _ROUTES[ref] = self
        if self.host not in ("", "0.0.0.0"):
            lib.IedServer_setLocalIpAddress(self._server, self.host)
        lib.IedServer_start(self._server, self.port)
        if not lib.IedServer_isRunning(self._server):
            raise OSError(f"IEC 61850 test server could not listen on {self.host}:{self.port}")
        self._running = True
        return self

    def stop(self) -> None:
        """Stop serving and free the model (idempotent). Joins libiec61850's threads."""
        if self._server is None:
            return
        if self._running:
            lib.IedServer_stop(self._server)
            self._running = False
        with _ROUTES_LOCK:
            for ref in self._controls:
                if _ROUTES.get(ref) is self:
                    del _ROUTES[ref]
        lib.IedServer_destroy(self._server)
        lib.IedModel_destroy(self._model)
        self._server = None
        self._model = None

    def __enter__(self) -> Iec61850Server:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def drop_connections(self) -> None:
        """Close every client association from the server side, then accept connections again.

        Buffered RCBs keep buffering while no client is connected (their RptEna stays with the reservation).
        """
        with self._lock:
            lib.IedServer_stop(self._server)
            lib.IedServer_start(self._server, self.port)
            if not lib.IedServer_isRunning(self._server):
                raise OSError(f"IEC 61850 test server could not listen again on port {self.port}")

    @property
    def connections(self) -> int:
        return int(lib.IedServer_getNumberOfOpenConnections(self._server))

    # --- values ---------------------------------------------------------------------------------------

    @property
    def ied_name(self) -> str:
        return self.scl_ied.name

    def _node(self, ref: str, fc: str | None = None) -> Any:
        """The DataAttribute at an ACSI reference ``IED1LD0/MMXU1.A.phsA.cVal.mag.f``."""
        n = lib.IedModel_getModelNodeByObjectReference(self._model, ref)
        if n is None:
            raise KeyError(f"{self.ied_name}: no model node {ref!r}")
        return lib.toDataAttribute(n)

    def _stamp(self, ref_do: str, fc: str, t: datetime | None, time_quality: int) -> None:
        ts = lib.Timestamp_create()
        try:
            when = t or datetime.now(UTC)
            lib.Timestamp_setTimeInNanoseconds(ts, int(when.timestamp() * 1_000_000) * 1000)
            lib.Timestamp_setLeapSecondKnown(ts, bool(time_quality & TQ_LEAP_SECONDS_KNOWN))
            lib.Timestamp_setClockFailure(ts, bool(time_quality & TQ_CLOCK_FAILURE))
            lib.Timestamp_setClockNotSynchronized(ts, bool(time_quality & TQ_CLOCK_NOT_SYNCHRONISED))
            lib.IedServer_updateTimestampAttributeValue(self._server, self._node(f"{ref_do}.t"), ts)
        finally:
            lib.Timestamp_destroy(ts)

    def update(self, ref: str, da: str, value: float | bool | int, *, quality: int | None = None,
               t: datetime | None = None, time_quality: int = 0) -> None:
        """Set ``ref``'s value attribute ``da`` (e.g. ``cVal.mag.f``, ``stVal``), its t (now unless given, with
        ``time_quality`` bits) and, if given, its q (61850 Quality as in :class:`gateway.model.Q`, which has the
        same layout for bits 0-12). One data-model lock: a report carries all three or none."""
        with self._lock:
            lib.IedServer_lockDataModel(self._server)
            try:
                self._set_unlocked(f"{ref}.{da}", value)
                if quality is not None:
                    lib.IedServer_updateQuality(self._server, self._node(f"{ref}.q"), _to_lib_quality(quality))
                self._stamp(ref, "", t, time_quality)
            finally:
                lib.IedServer_unlockDataModel(self._server)

    def set_quality(self, ref: str, quality: int, *, t: datetime | None = None, time_quality: int = 0) -> None:
        """Change only the q (and t) of data object ``ref``."""
        with self._lock:
            lib.IedServer_lockDataModel(self._server)
            try:
                lib.IedServer_updateQuality(self._server, self._node(f"{ref}.q"), _to_lib_quality(quality))
                self._stamp(ref, "", t, time_quality)
            finally:
                lib.IedServer_unlockDataModel(self._server)

    def _set_unlocked(self, ref: str, value: float | bool | int) -> None:
        node = self._node(ref)
        typ = lib.DataAttribute_getType(node)
        if typ == lib.IEC61850_BOOLEAN:
            lib.IedServer_updateBooleanAttributeValue(self._server, node, bool(value))
        elif typ in (lib.IEC61850_FLOAT32, lib.IEC61850_FLOAT64):
            lib.IedServer_updateFloatAttributeValue(self._server, node, float(value))
        elif typ == lib.IEC61850_CODEDENUM:
            lib.IedServer_updateDbposValue(self._server, node, _DBPOS[int(value)])
        elif typ in (lib.IEC61850_INT8U, lib.IEC61850_INT16U, lib.IEC61850_INT24U, lib.IEC61850_INT32U):
            lib.IedServer_updateUnsignedAttributeValue(self._server, node, int(value))
        else:
            lib.IedServer_updateInt32AttributeValue(self._server, node, int(value))

    def _set_dbpos_unlocked(self, ref_do: str, pos: int) -> None:
        """On the server thread during a control (the model is locked by libiec61850 there)."""
        lib.IedServer_updateDbposValue(self._server, self._node(f"{ref_do}.stVal"), _DBPOS[pos])
        self._stamp(ref_do, "", None, 0)

    def get(self, ref: str) -> float:
        """Current value of a primitive data attribute (bool/int/float/Dbpos) as a float."""
        with self._lock:
            node = self._node(ref)
            typ = lib.DataAttribute_getType(node)
            if typ == lib.IEC61850_BOOLEAN:
                return float(lib.IedServer_getBooleanAttributeValue(self._server, node))
            if typ in (lib.IEC61850_FLOAT32, lib.IEC61850_FLOAT64):
                return float(lib.IedServer_getFloatAttributeValue(self._server, node))
            if typ == lib.IEC61850_CODEDENUM:  # libiec61850 numbers the string's first bit as bit 0
                raw = int(lib.IedServer_getBitStringAttributeValue(self._server, node))
                return float(((raw & 1) << 1) | ((raw >> 1) & 1))
            return float(lib.IedServer_getInt32AttributeValue(self._server, node))

    def origin(self, ref_do: str) -> tuple[int, bytes]:
        """``origin`` [ST] of a control object: (orCat, orIdent) of the last command libiec61850 executed."""
        with self._lock:
            cat = lib.IedServer_getInt32AttributeValue(self._server, self._node(f"{ref_do}.origin.orCat"))
            v = lib.IedServer_getAttributeValue(self._server, self._node(f"{ref_do}.origin.orIdent"))
            ident = bytes(lib.MmsValue_getOctetStringOctet(v, i) for i in range(lib.MmsValue_getOctetStringSize(v)))
            return int(cat), ident

    def is_selected(self, ref_do: str) -> bool:
        """``stSeld`` of an SBO object: True while it is selected."""
        return bool(self.get(f"{ref_do}.stSeld"))

    def set_sbo_timeout(self, ref_do: str, ms: int) -> None:
        """sboTimeout [CF] of a control object (libiec61850 reads it at each select)."""
        with self._lock:
            lib.IedServer_updateUnsignedAttributeValue(self._server, self._node(f"{ref_do}.sboTimeout"), ms)

    # --- controls -------------------------------------------------------------------------------------

    def control_behaviour(self, ref_do: str) -> ControlBehaviour:
        """The (mutable) behaviour of control object ``ref_do`` (``IED1LD0/CSWI2.Pos``)."""
        return self._controls[ref_do].behaviour

    @property
    def control_objects(self) -> tuple[str, ...]:
        return tuple(self._controls)

    def _record(self, op: Operation) -> None:
        with self._ops_lock:
            self.operations.append(op)

    def operations_snapshot(self) -> list[Operation]:
        with self._ops_lock:
            return list(self.operations)


def _to_lib_quality(q: int) -> int:
    """Our Q word -> libiec61850 ``Quality``.

    Detail bits 2-12 sit at the same positions in both. The validity field does not: libiec61850 numbers the bit
    string's first bit as bit 0 (INVALID = 2, QUESTIONABLE = 3), our Q has INVALID = 1 (see gateway.model.Q), so
    bits 0 and 1 swap."""
    validity = ((q & 1) << 1) | ((q >> 1) & 1)
    return (q & 0x1FFC) | validity
