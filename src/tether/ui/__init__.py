"""The web UI: server-rendered pages (and their JSON twins) over the registry use cases."""

from __future__ import annotations

from .app import create_ui_app

__all__ = ["create_ui_app"]
