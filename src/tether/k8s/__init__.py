"""Kubernetes manifests and container build files for Tether, rendered offline.

Pure functions: a parsed deployment file (and, for images, what the registry
recorded about each version) in, plain data out. Nothing here talks to a
cluster, a registry or a container engine; ``tether k8s render`` and
``tether image render`` (tether/cli/k8s.py) do the reading and writing.
"""

from __future__ import annotations

from .image import BAKED_DIR, ImageFiles, ImageTarget, bake_dockerfile, render_image
from .manifests import Manifest, RenderOptions, dump_manifests, render_manifests

__all__ = [
    "BAKED_DIR",
    "ImageFiles",
    "ImageTarget",
    "Manifest",
    "RenderOptions",
    "bake_dockerfile",
    "dump_manifests",
    "render_image",
    "render_manifests",
]
