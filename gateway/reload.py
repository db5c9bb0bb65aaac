"""What a config reload (SIGHUP, ``systemctl reload gateway``) changes, decided before anything is touched.

:func:`plan_reload` compares the running config with the newly loaded one and returns a :class:`ReloadPlan`:
which links and sinks are added, removed or changed (by name; a link or sink whose settings are all equal is
*unchanged* and keeps running untouched — same runner, same TCP connection or serial port), the effective new
config, and what was *not* applied because it needs a restart. The gateway applies the plan
(:meth:`gateway.app.Gateway.reload`).

Live: ``[[links]]`` (with their devices and points), ``[[sinks]]``, ``[panel]`` bays, session timeouts and the
select timeout, ``log_level``/``log_levels``/``log_format``. Restart needed: ``[gateway] id`` and ``data_dir``,
``[storage]``, the panel's ``host``/``port``/``tls``/certificate, ``[protection]`` and ``[analytics]`` — the
running values stay in force until then, and the report says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gateway.config import GatewayConfig

# [panel] keys a reload applies; the others need the listening socket or TLS context to be rebuilt.
PANEL_LIVE_KEYS = ("bays", "session_idle_min", "session_max_h", "select_timeout_s")


@dataclass(frozen=True, slots=True)
class ReloadReport:
    links_added: tuple[str, ...] = ()
    links_removed: tuple[str, ...] = ()
    links_changed: tuple[str, ...] = ()
    links_unchanged: tuple[str, ...] = ()
    sinks_added: tuple[str, ...] = ()
    sinks_removed: tuple[str, ...] = ()
    sinks_changed: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()  # other settings applied live ("panel.bays", "log_level", ...)
    restart_needed: tuple[str, ...] = ()  # settings that changed but need a restart (running values kept)

    def summary(self) -> str:
        parts = []
        for what, names in (
            ("links added", self.links_added),
            ("links removed", self.links_removed),
            ("links restarted", self.links_changed),
            ("sinks added", self.sinks_added),
            ("sinks removed", self.sinks_removed),
            ("sinks restarted", self.sinks_changed),
            ("applied", self.applied),
        ):
            if names:
                parts.append(f"{what}: {', '.join(names)}")
        if self.links_unchanged:
            parts.append(f"{len(self.links_unchanged)} link(s) unchanged, still polling")
        if self.restart_needed:
            parts.append(f"NOT applied, needs a restart: {', '.join(self.restart_needed)}")
        return "; ".join(parts) if parts else "no changes"


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    effective: GatewayConfig  # what the gateway runs after the reload
    report: ReloadReport
    links_added: frozenset[str] = field(default_factory=frozenset)
    links_removed: frozenset[str] = field(default_factory=frozenset)
    links_changed: frozenset[str] = field(default_factory=frozenset)
    sinks_added: frozenset[str] = field(default_factory=frozenset)
    sinks_removed: frozenset[str] = field(default_factory=frozenset)
    sinks_changed: frozenset[str] = field(default_factory=frozenset)


def plan_reload(old: GatewayConfig, new: GatewayConfig) -> ReloadPlan:
    old_links = {link.name: link for link in old.links}
    new_links = {link.name: link for link in new.links}
    old_sinks = {s.name: s for s in old.sinks}
    new_sinks = {s.name: s for s in new.sinks}
    links_added = [n for n in new_links if n not in old_links]
    links_removed = [n for n in old_links if n not in new_links]
    links_changed = [n for n in new_links if n in old_links and new_links[n] != old_links[n]]
    links_unchanged = [n for n in new_links if n in old_links and new_links[n] == old_links[n]]
    sinks_added = [n for n in new_sinks if n not in old_sinks]
    sinks_removed = [n for n in old_sinks if n not in new_sinks]
    sinks_changed = [n for n in new_sinks if n in old_sinks and new_sinks[n] != old_sinks[n]]

    restart: list[str] = []
    for key in ("id", "data_dir"):
        if getattr(old, key) != getattr(new, key):
            restart.append(f"gateway.{key}")
    if old.storage != new.storage:
        restart += [f"storage.{f.name}" for f in dataclasses.fields(old.storage)
                    if getattr(old.storage, f.name) != getattr(new.storage, f.name)]
    panel_changes = {f.name: getattr(new.panel, f.name) for f in dataclasses.fields(new.panel)
                     if getattr(old.panel, f.name) != getattr(new.panel, f.name)}
    restart += [f"panel.{k}" for k in panel_changes if k not in PANEL_LIVE_KEYS]
    if old.protection != new.protection or old.protection_runtime != new.protection_runtime:
        restart.append("protection")
    if old.analytics != new.analytics:
        restart.append("analytics")

    applied = [f"panel.{k}" for k in panel_changes if k in PANEL_LIVE_KEYS]
    applied += [k for k in ("log_level", "log_levels", "log_format") if getattr(old, k) != getattr(new, k)]
    panel = dataclasses.replace(old.panel, **{k: v for k, v in panel_changes.items() if k in PANEL_LIVE_KEYS})
    effective = dataclasses.replace(
        old,
        links=new.links,
        sinks=new.sinks,
        panel=panel,
        log_level=new.log_level,
        log_levels=new.log_levels,
        log_format=new.log_format,
        source=new.source,
    )
    report = ReloadReport(
        links_added=tuple(links_added),
        links_removed=tuple(links_removed),
        links_changed=tuple(links_changed),
        links_unchanged=tuple(links_unchanged),
        sinks_added=tuple(sinks_added),
        sinks_removed=tuple(sinks_removed),
        sinks_changed=tuple(sinks_changed),
        applied=tuple(applied),
        restart_needed=tuple(restart),
    )
    return ReloadPlan(
        effective=effective,
        report=report,
        links_added=frozenset(links_added),
        links_removed=frozenset(links_removed),
        links_changed=frozenset(links_changed),
        sinks_added=frozenset(sinks_added),
        sinks_removed=frozenset(sinks_removed),
        sinks_changed=frozenset(sinks_changed),
    )
