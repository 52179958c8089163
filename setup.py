"""The one compiled part: the evaluation's helpers (examples/hpatches/_native.c: the strict CSV readers and the
verification distances). It is optional: where it cannot be built, the evaluation falls back to pandas and numpy with
the same results, only slower. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tripletkit_hpatches._native",
            sources=["examples/hpatches/_native.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
