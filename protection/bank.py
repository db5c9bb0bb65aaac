"""The armed elements of both settings groups, stepped together; settings-group switching.

:class:`ElementBank` arms every element of group 1 and group 2 once, at construction (no allocation when groups
switch). An element whose settings are invalid is not armed: its :class:`ElementSettingsError` is kept in
``errors`` and the other elements arm normally. Only the active group's elements are stepped.

Group switching (:meth:`ElementBank.switch_group`), the defined behaviour:
1. It takes effect between steps, at the ``now`` given.
2. Every element of the outgoing group is reset to rest. One that was picked up, tripped or blocked reports it
   once more in its output with ``EV_GROUP_RESET`` (plus ``EV_DROPOUT``/``EV_TRIP_RESET`` as applicable) and
   ``event_ns = now``; those outputs are returned so the caller can log them.
3. Every element of the incoming group starts from rest: no pickup or trip, inverse-time integrals at 0, 81R
   history empty (81R cannot operate for one window after a switch). Nothing carries over between groups, not
   even for elements that have the same name in both.
4. Switching to the group already active does nothing.
"""

from __future__ import annotations

from protection.elements import Element, build_element
from protection.measurements import Measurements
from protection.output import EV_DROPOUT, EV_GROUP_RESET, EV_TRIP_RESET, ElementOutput
from protection.settings import ElementSettingsError, ProtectionSettings


class ElementBank:
    """Owns the armed elements of both groups. Not thread-safe: one cycle thread calls ``step``/``switch_group``."""

    __slots__ = ("_active", "_elements", "_outputs", "errors", "settings")

    def __init__(self, settings: ProtectionSettings) -> None:
        self.settings = settings
        errors: list[ElementSettingsError] = []
        elements: list[tuple[Element, ...]] = []
        for g in (1, 2):
            armed: list[Element] = []
            seen: set[str] = set()
            for s in settings.group(g):
                if not getattr(s, "enabled", True):
                    continue
                if s.name in seen:
                    errors.append(ElementSettingsError(s.name, "name", "duplicate element name in this group", g))
                    continue
                seen.add(s.name)
                try:
                    armed.append(build_element(s, g))
                except ElementSettingsError as e:
                    errors.append(e)
            elements.append(tuple(armed))
        self._elements: tuple[tuple[Element, ...], tuple[Element, ...]] = (elements[0], elements[1])
        self._outputs: tuple[tuple[ElementOutput, ...], tuple[ElementOutput, ...]] = (
            tuple(e.output for e in elements[0]),
            tuple(e.output for e in elements[1]),
        )
        self.errors: tuple[ElementSettingsError, ...] = tuple(errors)  # elements that refused to arm
        self._active: int = settings.active_group

    @property
    def active_group(self) -> int:
        return self._active

    def elements(self, group: int | None = None) -> tuple[Element, ...]:
        """Armed elements of ``group`` (default: the active one)."""
        g = self._active if group is None else group
        if g not in (1, 2):
            raise ValueError(f"settings group must be 1 or 2, got {g!r}")
        return self._elements[g - 1]

    def element(self, name: str, group: int | None = None) -> Element:
        for e in self.elements(group):
            if e.name == name:
                return e
        raise KeyError(name)

    def step(self, m: Measurements, now: int) -> tuple[ElementOutput, ...]:
        """Step every armed element of the active group; returns their (preallocated, reused) outputs."""
        for e in self._elements[self._active - 1]:
            e.step(m, now)
        return self._outputs[self._active - 1]

    def tripped(self) -> bool:
        """True when any element of the active group has its trip output asserted."""
        return any(o.tripped for o in self._outputs[self._active - 1])

    def switch_group(self, group: int, now: int) -> tuple[ElementOutput, ...]:
        """Make ``group`` active (see the module doc). Returns the outgoing outputs that were released."""
        if group not in (1, 2):
            raise ValueError(f"settings group must be 1 or 2, got {group!r}")
        if group == self._active:
            return ()
        released: list[ElementOutput] = []
        for e in self._elements[self._active - 1]:
            out = e.output
            ev = 0
            if out.picked_up:
                ev |= EV_DROPOUT
            if out.tripped:
                ev |= EV_TRIP_RESET
            was_blocked = out.blocked
            e.reset()
            if ev or was_blocked:
                out.events = ev | EV_GROUP_RESET
                out.event_ns = now
                released.append(out)
        for e in self._elements[group - 1]:
            e.reset()
        self._active = group
        return tuple(released)
