"""Points page: the HTML shell and its compact columnar JSON (every configured point, consistent columns)."""

from __future__ import annotations

from gateway.model import Q, describe_quality
from gateway.panel.points import columns, quality_text
from gateway.panel.roles import Role
from tests.panel.conftest import PanelRig
from tests.waiting import wait_for_async

COLUMNS = ("ids", "names", "devices", "points", "units", "value", "quality", "quality_text", "validity", "ts_us")


async def test_points_json_columns_cover_every_point(panel: PanelRig) -> None:
    c, _ = await panel.client(Role.VIEWER)

    async def all_have_data() -> bool:
        d = (await c.get("/points?format=json")).json()
        return all(t > 0 for t in d["ts_us"])

    await wait_for_async(all_have_data, what="a reading for every point")
    d = (await c.get("/points?format=json")).json()
    gw = panel.gw
    assert d["count"] == len(gw.points) == 68
    for col in COLUMNS:
        assert len(d[col]) == d["count"], col
    assert d["names"] == [p.name for p in gw.points]
    assert d["ids"] == [gw.point_ids[p.name] for p in gw.points]
    assert all(n == f"{dev}.{pt}" for n, dev, pt in zip(d["names"], d["devices"], d["points"], strict=True))
    i = d["names"].index("feeder1.Va")
    assert d["units"][i] == "kV" and isinstance(d["value"][i], float) and 5.0 < d["value"][i] < 8.0
    assert d["validity"][i] == "good" and d["quality_text"][i] == describe_quality(d["quality"][i])
    # ts_us is the latest reading's source time in µs (exact in JavaScript)
    pid = gw.point_ids["feeder1.Va"]
    assert gw.latest is not None and abs(d["ts_us"][i] - int(gw.latest.ts[pid]) // 1000) < 10_000_000
    assert d["now_ns"] // 1000 >= d["ts_us"][i]
    assert [Q.GATEWAY_TIME, "gateway-time"] in d["quality_bits"]
    # the same under /api/points, and one device's points
    assert (await c.get("/api/points")).json()["names"] == d["names"]
    f2 = (await c.get("/api/points?device=feeder2")).json()
    assert f2["count"] == 17 and set(f2["devices"]) == {"feeder2"}
    assert (await c.get("/api/points?device=nope")).status_code == 404


async def test_points_html_is_a_shell_for_the_script(panel: PanelRig) -> None:
    c, _ = await panel.client(Role.VIEWER)
    r = await c.get("/points")
    assert r.status_code == 200
    assert "/static/points.js" in r.text and 'id="pt-scroll"' in r.text and 'id="pt-search"' in r.text
    assert "feeder1.Va" not in r.text  # rows come from the JSON, not the HTML
    assert 'data-source="/points?format=json"' in r.text
    js = await c.get("/static/points.js")
    assert js.status_code == 200 and "ROW_H" in js.text


def test_quality_text_no_data_and_cache() -> None:
    assert quality_text(0, ts=0) == "no data"
    q = int(Q.QUESTIONABLE | Q.OLD_DATA | Q.GATEWAY_TIME)
    assert quality_text(q) == describe_quality(q) == "questionable: old-data"
    assert quality_text(q) is quality_text(q)


async def test_points_before_any_reading(panel: PanelRig) -> None:
    gw = panel.gw
    assert gw.latest is not None
    gw.latest.ts[:] = 0  # as if nothing arrived yet (no await until columns(): the runners cannot refill it)
    d = columns(gw)
    assert all(v is None for v in d["value"]) and set(d["quality_text"]) == {"no data"}
    assert set(d["validity"]) == {"none"} and set(d["ts_us"]) == {0}
