"""Builds the Cython extensions and the gRPC stubs; all metadata lives in pyproject.toml.

Set IAM_EVAL_CYTHON_DEBUG=1 for a debug build: line tracing (for coverage and
profilers) and annotated HTML next to each .pyx.

The stubs are generated from proto/ into server/api/ on every build (they are
not committed), with their imports made relative to that package.
"""
import os
import re
import shutil
import tempfile
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("IAM_EVAL_CYTHON_DEBUG") == "1"


def generate_stubs() -> None:
    from grpc_tools import protoc

    stubs = Path("server/api")
    with tempfile.TemporaryDirectory() as out:
        for proto in sorted(Path("proto").rglob("*.proto")):
            args = ["protoc", "-Iproto", f"-I{protoc._get_resource_file_name('grpc_tools', '_proto')}",
                    f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", str(proto)]
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed on {proto}")
        for generated in Path(out).rglob("*_pb2*.py*"):
            text = re.sub(r"^from [\w.]+ import (\w+_pb2)", r"from . import \1", generated.read_text(), flags=re.M)
            (stubs / generated.name).write_text(text)


CYTHON_FOLDERS = {"evaluator": Path("iam_evaluator"), "server": Path("iam_evaluator/server")}
"""Each folder of Cython sources, and its package."""


def stage_cython() -> Path:
    """The Cython sources copied under the package's import name (``build/cython/iam_evaluator``), so that
    Cython names the modules and their cimports as they are installed (it names them by their folder)."""
    root = Path("build/cython")
    for folder, package in CYTHON_FOLDERS.items():
        staged = root / package
        staged.mkdir(parents=True, exist_ok=True)
        (staged / "__init__.py").touch()
        for source in [*Path(folder).glob("*.pyx"), *Path(folder).glob("*.pxd")]:
            copy = staged / source.name
            if not copy.exists() or copy.read_bytes() != source.read_bytes():
                shutil.copy2(source, copy)
    return root


generate_stubs()
staged = stage_cython()
macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
extensions = [
    Extension(".".join(pyx.relative_to(staged).with_suffix("").parts), [str(pyx)], define_macros=macros,
              extra_compile_args=["-O3"])
    for package in CYTHON_FOLDERS.values() for pyx in sorted((staged / package).glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "embedsignature": True, "linetrace": DEBUG},
        annotate=DEBUG,
    ),
)
