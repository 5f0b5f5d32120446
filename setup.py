"""Builds Tether's one native extension, ``tether._store._native`` (everything else
is in pyproject.toml).

The extension cuts and hashes whole buffers without the GIL (see
``src/tether/_store/_native.c``). It is optional: where it cannot be built (no C
compiler), Tether installs without it and cuts on worker processes as before
(``tether._store.native.available`` says which).
"""

import platform
import sys

from setuptools import Extension, setup

VENDOR = "src/tether/_store/vendor/blake3"

sources = ["src/tether/_store/_native.c", f"{VENDOR}/blake3.c", f"{VENDOR}/blake3_dispatch.c",
           f"{VENDOR}/blake3_portable.c"]
extra_objects: list[str] = []
macros: list[tuple[str, str | None]] = []
machine = platform.machine().lower()
if machine in ("x86_64", "amd64") and sys.maxsize > 2**32 and not sys.platform.startswith("win"):
    # The C compiler assembles these when it links (the same files blake3's own C
    # build uses on Unix): SSE2, SSE4.1, AVX2 and AVX-512, picked at run time.
    extra_objects = [f"{VENDOR}/blake3_{kind}_x86-64_unix.S"
                     for kind in ("sse2", "sse41", "avx2", "avx512")]
elif machine in ("aarch64", "arm64"):
    sources.append(f"{VENDOR}/blake3_neon.c")
    macros.append(("BLAKE3_USE_NEON", "1"))
else:
    macros += [("BLAKE3_NO_SSE2", None), ("BLAKE3_NO_SSE41", None),
               ("BLAKE3_NO_AVX2", None), ("BLAKE3_NO_AVX512", None)]

setup(
    ext_modules=[
        Extension(
            "tether._store._native",
            sources=sources,
            include_dirs=[VENDOR],
            extra_objects=extra_objects,
            define_macros=macros,
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
