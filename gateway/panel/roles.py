"""Panel roles, ordered: each role may do everything the roles below it may (viewer < operator < engineer < admin)."""

from __future__ import annotations

import enum


class Role(enum.IntEnum):
    VIEWER = 1  # reads every page; changes nothing
    OPERATOR = 2  # + acknowledges alarms, operates breakers and controls
    ENGINEER = 3  # + changes protection settings and switches settings groups
    ADMIN = 4  # + manages users; reads the audit log

    @classmethod
    def parse(cls, text: str) -> Role:
        """``"operator"`` → ``Role.OPERATOR``; ValueError naming the valid roles for anything else."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: expected one of {', '.join(r.label for r in cls)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()
