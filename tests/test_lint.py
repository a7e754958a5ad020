"""Lint and layering checks run with the tests, so they fail CI like any other defect."""
from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "evaluator", "batch", "cli", "server", "tests",
                             "tools", "benchmarks"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_library_imports_neither_the_service_nor_the_batch_jobs():
    """evaluator/ is the library: importing it loads neither iam_evaluator.server nor iam_evaluator.batch (the
    command line, cli/, sits above all three), nor grpc or protobuf, which belong to server/ alone; nor
    does the command line's parser."""
    loaded = ("print(sorted({m if m.startswith('iam_evaluator') else m.split('.')[0] for m in sys.modules}"
              " & {'grpc', 'google', 'iam_evaluator.server', 'iam_evaluator.batch'}))")
    for probe, allowed in (
        ("import sys, iam_evaluator, iam_evaluator.store, iam_evaluator.compile, iam_evaluator.compiled_store,"
         " iam_evaluator.arrow, iam_evaluator.reference;" + loaded, "[]"),
        ("import sys, iam_evaluator.cli; iam_evaluator.cli.build_parser();" + loaded,
         "['iam_evaluator.server']"),  # its service commands, without grpc until they run
    ):
        result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                                check=True)
        assert result.stdout.strip() == allowed, probe


def test_generated_stubs_match_the_contracts(tmp_path):
    """The stubs in server/api are generated from proto/ by the build: a stale build fails here."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    from iam_evaluator.server.api import iam_evaluator_pb2

    out = tmp_path / "contracts.pb"
    assert protoc.main(["protoc", f"-I{REPO / 'proto'}", f"--descriptor_set_out={out}",
                        str(REPO / "proto/iam_evaluator/v1/iam_evaluator.proto")]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:  # the generator leaves out the derived JSON names
        for field in (*message.field, *(f for nested in message.nested_type for f in nested.field)):
            field.ClearField("json_name")
    built = descriptor_pb2.FileDescriptorProto.FromString(iam_evaluator_pb2.DESCRIPTOR.serialized_pb)
    assert built == fresh, "server/api is stale: rebuild (pip install -e .) after changing proto/"
