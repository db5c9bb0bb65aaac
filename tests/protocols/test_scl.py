"""SCL parsing of the shipped ICD, malformed and hostile input, and the import round trip: ICD -> TOML ->
gateway.config_load -> the IEC 61850 driver against the server built from the same ICD -> readings."""

from __future__ import annotations

import platform
import tomllib
from pathlib import Path

import pytest

if platform.machine() != "x86_64":
    pytest.skip("pyiec61850 (the libiec61850 test server) ships x86_64 wheels only", allow_module_level=True)

from gateway.config_load import parse_config
from gateway.scl_import import SclImportError, import_scl, scl_to_config
from hil_tests.iec61850_server import Iec61850Server
from protocols.iec61850 import Iec61850Session
from protocols.scl import SclError, parse_scl, parse_scl_text
from tests.protocols.test_iec61850 import ICD, Collector, pump_until

HEADER = 'version = 1\n[gateway]\nid = "test-gw"\n\n'


def test_parse_shipped_icd() -> None:
    m = parse_scl(ICD)
    assert [i.name for i in m.ieds] == ["IED1"]
    ied = m.ied("IED1")
    assert (ied.manufacturer, ied.type, ied.addresses) == ("substation-gateway", "TestIED", {"AP1": "127.0.0.1"})
    assert [ap.name for ap in ied.access_points] == ["AP1"]
    (ld,) = ied.logical_devices
    assert (ld.inst, ld.domain) == ("LD0", "IED1LD0")
    assert [n.name for n in ld.logical_nodes] == ["LLN0", "LPHD1", "MMXU1", "XCBR1", "CSWI1", "CSWI2", "GGIO1"]
    cswi2 = ld.ln("CSWI2")
    assert cswi2 is not None
    assert (cswi2.prefix, cswi2.ln_class, cswi2.inst, cswi2.ln_type) == ("", "CSWI", "2", "CSWI_T")

    mmxu = ld.ln("MMXU1")
    assert mmxu is not None
    wye = mmxu.data_object("A")
    assert wye is not None and wye.cdc == "WYE"
    assert [s.name for s in wye.sub_objects] == ["phsA", "phsB", "phsC"]
    phs_a = mmxu.data_object("A.phsA")
    assert phs_a is not None and phs_a.cdc == "CMV"
    f = phs_a.attribute("cVal.mag.f")
    assert f is not None and (f.fc, f.btype, f.dchg) == ("MX", "FLOAT32", True)  # BDA inherits FC and dchg
    q = phs_a.attribute("q")
    assert q is not None and (q.btype, q.qchg) == ("Quality", True)
    unit = phs_a.attribute("units.SIUnit")
    assert unit is not None and (unit.fc, unit.value) == ("CF", "A")  # template default Val
    totw = mmxu.data_object("TotW")
    assert totw is not None
    assert totw.attribute("units.SIUnit").value == "W"  # type: ignore[union-attr]  # instance SDI/DAI
    assert totw.attribute("units.multiplier").value == "k"  # type: ignore[union-attr]

    pos = cswi2.data_object("Pos")
    assert pos is not None and pos.cdc == "DPC"
    assert pos.attribute("ctlModel").value == "sbo-with-enhanced-security"  # type: ignore[union-attr]
    assert pos.attribute("sboTimeout").value == "30000"  # type: ignore[union-attr]
    oper = pos.attribute("Oper")
    assert oper is not None and oper.fc == "CO"
    assert [c.name for c in oper.children] == ["ctlVal", "origin", "ctlNum", "T", "Test", "Check"]
    assert [p for p, _ in oper.leaves()] == ["Oper.ctlVal", "Oper.origin.orCat", "Oper.origin.orIdent",
                                             "Oper.ctlNum", "Oper.T", "Oper.Test", "Oper.Check"]
    st = pos.attribute("stVal")
    assert st is not None and st.btype == "Dbpos"

    lln0 = ld.ln("LLN0")
    assert lln0 is not None
    ds = {d.name: d for d in lln0.data_sets}
    assert sorted(ds) == ["dsMeas", "dsStatus"]
    assert [m.reference("IED1") for m in ds["dsMeas"].members][:2] == ["IED1LD0/MMXU1.A.phsA",
                                                                       "IED1LD0/MMXU1.A.phsB"]
    assert ds["dsMeas"].members[0].mms_item() == "MMXU1$MX$A$phsA"
    assert {m.fc for m in ds["dsStatus"].members} == {"ST"}
    rcbs = {r.name: r for r in lln0.report_controls}
    br, rp = rcbs["brcbMeas"], rcbs["urcbStatus"]
    assert (br.buffered, br.dat_set, br.conf_rev, br.rpt_id) == (True, "dsMeas", 1, "IED1LD0/LLN0$BR$brcbMeas")
    assert br.instance_names() == ("brcbMeas01", "brcbMeas02")
    assert br.trg_ops == {"dchg", "qchg", "period", "gi"}
    assert {"entryID", "seqNum", "timeStamp", "dataSet", "reasonCode"} <= br.opt_fields
    assert (rp.buffered, rp.dat_set) == (False, "dsStatus")
    assert m.enum_types["CtlModelKind"].ord_of("sbo-with-enhanced-security") == 4


TWO_IEDS = """<?xml version="1.0"?>
<SCL xmlns="http://www.iec.ch/61850/2003/SCL">
  <IED name="A"><AccessPoint name="P"><Server><LDevice inst="Prot">
    <LN0 lnClass="LLN0" inst="" lnType="L0"/>
    <LN prefix="Q0" lnClass="XCBR" inst="3" lnType="CB"/>
  </LDevice><LDevice inst="Meas"><LN0 lnClass="LLN0" inst="" lnType="L0"/>
    <LN lnClass="MMXU" inst="1" lnType="MX"><DOI name="Hz"><SDI name="units"><DAI name="SIUnit"><Val>33</Val></DAI>
    </SDI></DOI></LN>
  </LDevice></Server></AccessPoint></IED>
  <IED name="B"><AccessPoint name="P"/></IED>
  <DataTypeTemplates>
    <LNodeType id="L0" lnClass="LLN0"><DO name="Beh" type="ENS"/></LNodeType>
    <LNodeType id="CB" lnClass="XCBR"><DO name="Pos" type="DPS"/></LNodeType>
    <LNodeType id="MX" lnClass="MMXU"><DO name="Hz" type="MV"/></LNodeType>
    <DOType id="ENS" cdc="ENS"><DA name="stVal" fc="ST" bType="Enum" type="Beh"/></DOType>
    <DOType id="DPS" cdc="DPS"><DA name="stVal" fc="ST" bType="Dbpos" dchg="true"/>
      <DA name="q" fc="ST" bType="Quality"/></DOType>
    <DOType id="MV" cdc="MV"><DA name="mag" fc="MX" bType="Struct" type="AV"/>
      <DA name="units" fc="CF" bType="Struct" type="U"/></DOType>
    <DAType id="AV"><BDA name="i" bType="INT32"/></DAType>
    <DAType id="U"><BDA name="SIUnit" bType="Enum" type="SI"/></DAType>
    <EnumType id="Beh"><EnumVal ord="1">on</EnumVal></EnumType>
    <EnumType id="SI"><EnumVal ord="33">Hz</EnumVal></EnumType>
  </DataTypeTemplates>
</SCL>"""


def test_prefix_several_lds_and_numeric_enum_values() -> None:
    m = parse_scl_text(TWO_IEDS, "two.scd")
    a = m.ied("A")
    prot = a.ld("Prot")
    assert prot is not None and prot.domain == "AProt"
    cb = prot.ln("Q0XCBR3")
    assert cb is not None and (cb.prefix, cb.ln_class, cb.inst) == ("Q0", "XCBR", "3")
    toml = scl_to_config(m, "A", "10.0.0.9", 102)
    cfg = parse_config(tomllib.loads(HEADER + toml))
    pts = {p.name: p for p in cfg.links[0].devices[0].points}
    assert pts["Prot_Q0XCBR3_Pos"].ref == "AProt/Q0XCBR3.Pos"
    assert (pts["Meas_MMXU1_Hz"].da, pts["Meas_MMXU1_Hz"].unit) == ("mag.i", "Hz")  # ord 33 -> "Hz"
    assert cfg.links[0].devices[0].iec61850.reports == ()
    with pytest.raises(SclError, match=r"two\.scd: no IED named 'C'"):
        m.ied("C")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("this is not xml", "not well-formed XML"),
        ("<Other/>", "not an SCL file"),
        ('<SCL xmlns="http://www.iec.ch/61850/2003/SCL"/>', "no <IED>"),
        (TWO_IEDS.replace('type="MV"/>', 'type="NOPE"/>'), "DOType 'NOPE' is not defined"),
        (TWO_IEDS.replace('type="AV"/>', 'type="AV2"/>'), "DAType 'AV2' is not defined"),
        (TWO_IEDS.replace('<EnumVal ord="1">', '<EnumVal ord="x">'), "ord 'x' is not an integer"),
        ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><SCL>&b;</SCL>',
         "refused unsafe XML"),
    ],
)
def test_malformed_input_names_the_file(text: str, message: str) -> None:
    with pytest.raises(SclError, match=message) as info:
        parse_scl_text(text, "bad.icd")
    assert str(info.value).startswith("bad.icd: ")


def test_import_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SclImportError, match=r"missing\.icd: cannot read file"):
        import_scl(tmp_path / "missing.icd", None, "10.0.0.1", 102)
    two = tmp_path / "two.scd"
    two.write_text(TWO_IEDS, encoding="utf-8")
    with pytest.raises(SclImportError, match=r"two.scd: the file describes 2 IEDs \(A, B\); choose one"):
        import_scl(two, None, "10.0.0.1", 102)
    with pytest.raises(SclImportError, match=r"two\.scd: IED B has no measured or status values"):
        import_scl(two, "B", "10.0.0.1", 102)
    with pytest.raises(SclImportError, match=r"two\.scd: IED A has no IP address"):
        import_scl(two, "A", "", 102)
    broken = tmp_path / "broken.icd"
    broken.write_text("<SCL", encoding="utf-8")
    with pytest.raises(SclImportError, match=r"broken\.icd: not well-formed XML"):
        import_scl(broken, None, "10.0.0.1", 102)


def test_import_of_shipped_icd() -> None:
    toml = import_scl(ICD, None, "", 10102)
    cfg = parse_config(tomllib.loads(HEADER + toml))
    (lk,) = cfg.links
    assert (lk.name, lk.protocol, lk.host, lk.port) == ("IED1", "iec61850", "127.0.0.1", 10102)
    (dev,) = lk.devices
    assert dev.iec61850.reports == ("IED1LD0/LLN0.BR.brcbMeas01", "IED1LD0/LLN0.RP.urcbStatus01")
    pts = {p.name: p for p in dev.points}
    assert len(pts) == len(dev.points)
    ia = pts["MMXU1_A_phsA"]
    assert (ia.ref, ia.da, ia.fc, ia.unit) == ("IED1LD0/MMXU1.A.phsA", "cVal.mag.f", "MX", "A")
    assert (pts["MMXU1_TotW"].da, pts["MMXU1_TotW"].unit) == ("mag.f", "kW")
    assert pts["MMXU1_Hz"].unit == "Hz"
    assert (pts["XCBR1_Pos"].da, pts["XCBR1_Pos"].writable) == ("stVal", False)  # status-only
    assert pts["CSWI1_Pos"].writable and pts["CSWI2_Pos"].writable
    assert pts["GGIO1_Ind1"].fc == "ST"
    assert "LLN0_NamPlt" not in pts  # strings are no readings
    # the other direction: a host given on the command line wins
    assert 'host = "10.1.2.3"' in import_scl(ICD, "IED1", "10.1.2.3", 102)


async def test_import_round_trip_against_the_server() -> None:
    with Iec61850Server(ICD) as server:
        toml = import_scl(ICD, "IED1", "127.0.0.1", server.port)
        cfg = parse_config(tomllib.loads(HEADER + toml))
        (lk,) = cfg.links
        names = [f"{d.name}.{p.name}" for d in lk.devices for p in d.points]
        ids = {n: i for i, n in enumerate(names)}
        col = Collector(ids)
        drv = Iec61850Session(lk, ids, col)
        await drv.connect()
        try:
            await drv.start_session()
            assert drv.status()["reports_enabled"] == list(lk.devices[0].iec61850.reports)
            await pump_until(drv, lambda: all(col.of(n) for n in names), "a reading of every imported point")
            server.update("IED1LD0/MMXU1.A.phsA", "cVal.mag.f", 321.0)
            await pump_until(drv, lambda: col.values("IED1.MMXU1_A_phsA")[-1] == 321.0, "a report")
            for n in names:
                _, _, q = col.of(n)[0]
                assert q & 0x3 == 0, (n, q)  # every imported reference is good
        finally:
            drv.close()
