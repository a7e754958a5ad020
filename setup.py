"""Builds the Cython extensions; all metadata lives in pyproject.toml.

Set IAM_EVAL_CYTHON_DEBUG=1 for a debug build: line tracing (for coverage and
profilers) and annotated HTML next to each .pyx.
"""
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("IAM_EVAL_CYTHON_DEBUG") == "1"

macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
extensions = [
    Extension(f"evaluator.{pyx.stem}", [str(pyx)], define_macros=macros, extra_compile_args=["-O3"])
    for pyx in sorted(Path("evaluator").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "embedsignature": True, "linetrace": DEBUG},
        annotate=DEBUG,
    ),
)
