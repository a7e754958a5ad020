"""Write the IAM catalog shipped in the package, ``evaluator/data/iam_catalog.json.gz``, from the corpus.

    python tools/build_catalog.py [--corpus ../shared/corpus] [--out evaluator/data/iam_catalog.json.gz]

Run it when the corpus changes, and commit the file: it is package data, not a build output
(tests/test_validate_cli.py fails while it differs from the corpus). The output is deterministic: sorted keys,
no time or file name in the gzip header, and a header field naming the corpus's source, its date, and the
SHA-256 of each file read.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
from pathlib import Path

from iam_evaluator.catalog import read_corpus

REPO = Path(__file__).resolve().parents[1]
INPUTS = ("iam_actions.jsonl", "condition_keys.jsonl", "services.jsonl")
FORMAT = 1


def provenance(corpus: Path) -> dict[str, object]:
    """Source, license and date of the catalog data, from the row of the corpus README's source table that names
    the action catalog (| data | npm package | version | license | data as of |)."""
    for line in (corpus / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("action catalog"):
            date = re.search(r"\d{4}-\d{2}-\d{2}", cells[4])
            if date:
                return {"source": f"{cells[1]} {cells[2]} (AWS Service Authorization Reference)",
                        "license": cells[3], "data_as_of": date.group()}
    raise SystemExit(f"{corpus / 'README.md'}: no source row for the action catalog")


def build(corpus: Path) -> dict[str, object]:
    header = {"format": FORMAT, **provenance(corpus),
              "inputs": {name: "sha256:" + hashlib.sha256((corpus / name).read_bytes()).hexdigest()
                         for name in INPUTS}}
    return {"header": header, **read_corpus(corpus)}


def write(catalog: dict[str, object], out: Path) -> None:
    text = json.dumps(catalog, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9,
                                              mtime=0) as packed:
        packed.write(text.encode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--out", type=Path, default=REPO / "evaluator" / "data" / "iam_catalog.json.gz")
    args = parser.parse_args()
    catalog = build(args.corpus)
    write(catalog, args.out)
    services = catalog["services"]
    print(f"{args.out}: {args.out.stat().st_size:,} bytes; {len(services)} services, "
          f"{sum(len(s['actions']) for s in services.values()):,} actions, "
          f"{len(catalog['global_condition_keys'])} global condition keys")


if __name__ == "__main__":
    main()
