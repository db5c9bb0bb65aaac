"""The operator panel: pages, live updates, users and sessions (docs/panel.md)."""
