"""A small organisation store for the who-can and what-can tests, whose answers are worked out by hand.

Account A (111111111111) holds the payroll bucket and most principals; account B (222222222222) sits in
an OU whose SCP denies every S3 action; account C (333333333333) is outside the organisation.

* admin: Allow * on * (identity).
* auditor: no identity policy; the payroll bucket policy names the user: allowed by the resource policy alone.
* intern: Allow s3:* on *, but its permissions boundary allows only s3:ListBucket.
* sandbox (account B): Allow * on *, blocked by its OU's SCP.
* payroll-reader: Allow s3:GetObject on the payroll objects; its trust policy names dev and contractor.
* breakglass: Allow s3:* on *; its trust policy names account A (it delegates to identity policies).
* legacy: Allow s3:GetObject on the payroll objects; the store gives it no trust policy.
* dev: may sts:AssumeRole payroll-reader (identity), and is named by its trust policy; reads its home folder
  (a Resource with a policy variable).
* contractor: named by payroll-reader's trust policy, but its boundary does not allow sts:AssumeRole.
* oncall: may sts:AssumeRole every role of account A (identity).
* stranger (account B): may sts:AssumeRole anything (identity); no trust policy names it or its account.
* partner (account C): Allow s3:GetObject on *; the payroll bucket policy does not name it.
* timed: Allow s3:GetObject on * before a date (a condition on aws:CurrentTime).
"""
from __future__ import annotations

import json
from pathlib import Path

from iam_evaluator.store import PolicyStore

A, B, C = "111111111111", "222222222222", "333333333333"


def role(account: str, name: str) -> str:
    return f"arn:aws:iam::{account}:role/{name}"


def user(account: str, name: str) -> str:
    return f"arn:aws:iam::{account}:user/{name}"


ADMIN, BREAKGLASS, LEGACY, READER = (role(A, n) for n in ("admin", "breakglass", "legacy", "payroll-reader"))
AUDITOR, INTERN, DEV, CONTRACTOR, ONCALL = (user(A, n) for n in ("auditor", "intern", "dev", "contractor", "oncall"))
TIMED = role(A, "timed")
SANDBOX, STRANGER = role(B, "sandbox"), user(B, "stranger")
PARTNER = role(C, "partner")
EVERY_PRINCIPAL = (ADMIN, BREAKGLASS, LEGACY, READER, AUDITOR, INTERN, DEV, CONTRACTOR, ONCALL, TIMED, SANDBOX,
                   STRANGER, PARTNER)

ADMIN_POLICY = f"arn:aws:iam::{A}:policy/Admin"
LIST_ONLY = f"arn:aws:iam::{A}:policy/ListOnly"
PAYROLL = "arn:aws:s3:::payroll"
PAYROLL_OBJECT = "arn:aws:s3:::payroll/2026/jan.csv"
PUBLIC_OBJECT = "arn:aws:s3:::public-site/index.html"


def document(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action, resource="*", **more) -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **more}


def trust(*names: str) -> dict:
    return document({"Effect": "Allow", "Principal": {"AWS": list(names)}, "Action": "sts:AssumeRole"})


def principal(arn: str, inline: dict | None = None, **more) -> dict:
    return {"arn": arn, **({"inline_policies": inline} if inline else {}), **more}


EC2_TRUST = document({"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"})

SNAPSHOT = {
    "managed_policies": [
        {"arn": ADMIN_POLICY, "document": document(allow("*"))},
        {"arn": LIST_ONLY, "document": document(allow("s3:ListBucket"))},
    ],
    "scps": [{"name": "FullAWSAccess", "document": document(allow("*"))},
             {"name": "DenyS3", "document": document({"Effect": "Deny", "Action": "s3:*", "Resource": "*"})}],
    "organization": {"id": "o-aaaaaaaaaa", "root": {"id": "r-aaaa", "children": [
        {"id": A},
        {"id": "ou-aaaa-sandboxes", "scps": ["FullAWSAccess", "DenyS3"], "children": [{"id": B}]},
    ]}},
    "principals": [
        principal(ADMIN, managed_policies=[ADMIN_POLICY]),
        principal(AUDITOR),
        principal(INTERN, {"S3": document(allow("s3:*"))}, permissions_boundary=LIST_ONLY),
        principal(SANDBOX, managed_policies=[ADMIN_POLICY]),
        principal(READER, {"ReadPayroll": document(allow("s3:GetObject", f"{PAYROLL}/*"))}),
        principal(BREAKGLASS, {"S3": document(allow("s3:*"))}),
        principal(LEGACY, {"ReadPayroll": document(allow("s3:GetObject", f"{PAYROLL}/*"))}),
        principal(DEV, {"AssumeReader": document(allow("sts:AssumeRole", READER)),
                        "Home": document(allow("s3:GetObject", "arn:aws:s3:::home/${aws:username}/*"))}),
        principal(CONTRACTOR, {"AssumeReader": document(allow("sts:AssumeRole", READER))},
                  permissions_boundary=LIST_ONLY),
        principal(ONCALL, {"AssumeAny": document(allow("sts:AssumeRole", f"arn:aws:iam::{A}:role/*"))}),
        principal(STRANGER, {"AssumeAny": document(allow("sts:AssumeRole"))}),
        principal(PARTNER, {"Read": document(allow("s3:GetObject"))}),
        principal(TIMED, {"Until2030": document(allow("s3:GetObject", Condition={
            "DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}}))}),
    ],
    "resource_policies": [
        {"resource": PAYROLL, "document": document(
            {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
             "Resource": [PAYROLL, f"{PAYROLL}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
            {"Sid": "AuditorRead", "Effect": "Allow", "Principal": {"AWS": AUDITOR}, "Action": "s3:GetObject",
             "Resource": f"{PAYROLL}/*"})},
        {"resource": "arn:aws:s3:::public-site", "document": document(
            {"Sid": "Public", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
             "Resource": "arn:aws:s3:::public-site/*"})},
        {"resource": READER, "document": trust(DEV, CONTRACTOR)},
        {"resource": BREAKGLASS, "document": trust(A)},
        *({"resource": arn, "document": EC2_TRUST} for arn in (ADMIN, SANDBOX, PARTNER, TIMED)),
    ],
}


def access_store() -> PolicyStore:
    return PolicyStore.from_json(json.dumps(SNAPSHOT), source="access store")


def snapshot_file(directory: Path) -> str:
    """The store written as a snapshot file in ``directory``, for the command line."""
    path = directory / "store.json"
    path.write_text(json.dumps(SNAPSHOT))
    return str(path)
