"""What an element reports each step: state flags plus the transitions of this step (for SOE later).

Each element owns ONE :class:`ElementOutput`, allocated when the element is armed and overwritten in place by
every ``step``; callers must copy what they want to keep before the next step. ``events`` is a bit set of the
``EV_*`` codes that happened in this step (several can happen at once: an instantaneous element reports
``EV_PICKUP | EV_TRIP`` in one step); it is 0 on a step without transitions. ``event_ns`` is the ``now`` of the
step with the latest transition (monotonic ns, the same clock as the ``now`` passed to ``step``).
"""

from __future__ import annotations

import enum
from typing import Final

EV_NONE: Final = 0
EV_PICKUP: Final = 1 << 0  # the element picked up (timing started)
EV_TRIP: Final = 1 << 1  # the element operated: trip output asserted
EV_DROPOUT: Final = 1 << 2  # the element dropped out (pickup released)
EV_TRIP_RESET: Final = 1 << 3  # the trip output was released (always together with EV_DROPOUT)
EV_BLOCKED: Final = 1 << 4  # the element became blocked (invalid/stale measurement or undervoltage block)
EV_UNBLOCKED: Final = 1 << 5  # the block was lifted
EV_GROUP_RESET: Final = 1 << 6  # reset because the settings group was switched


class Ev(enum.IntFlag):
    """The ``EV_*`` codes as a flag enum, for decoding and display only (never on the hot path)."""

    PICKUP = EV_PICKUP
    TRIP = EV_TRIP
    DROPOUT = EV_DROPOUT
    TRIP_RESET = EV_TRIP_RESET
    BLOCKED = EV_BLOCKED
    UNBLOCKED = EV_UNBLOCKED
    GROUP_RESET = EV_GROUP_RESET


# Bits of ElementOutput.phases.
PH_A: Final = 1 << 0
PH_B: Final = 1 << 1
PH_C: Final = 1 << 2
PH_N: Final = 1 << 3


def describe_events(events: int) -> str:
    """``"PICKUP|TRIP"`` for an events word; ``""`` for none."""
    return "|".join(e.name or "" for e in Ev if events & e)


class ElementOutput:
    """State and transitions of one element; owned by the element, overwritten by each step."""

    __slots__ = ("blocked", "element_type", "event_ns", "events", "name", "phases", "picked_up", "tripped")

    def __init__(self, name: str, element_type: str) -> None:
        self.name = name  # element name from the settings, e.g. "51P"
        self.element_type = element_type  # ANSI code: "50", "51N", "27", "81R", ...
        self.picked_up = False  # element is picked up (timing)
        self.tripped = False  # trip output asserted
        self.blocked = False  # element blocked (needs a measurement that is invalid/stale, or an undervoltage block)
        self.phases = 0  # PH_* bits of the phases above (below, for 27) threshold while picked up; 0 otherwise
        self.events = EV_NONE  # EV_* bits of this step's transitions
        self.event_ns = -1  # `now` of the latest transition, -1 before the first

    def __repr__(self) -> str:
        return (
            f"ElementOutput({self.name} {self.element_type}: picked_up={self.picked_up}, tripped={self.tripped}, "
            f"blocked={self.blocked}, phases={self.phases}, events={describe_events(self.events) or '-'}, "
            f"event_ns={self.event_ns})"
        )
