"""The shared registry: a REST server over the same use cases as the library."""

from .app import create_app

__all__ = ["create_app"]
