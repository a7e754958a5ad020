"""Hypothesis strategies: policy sets and requests drawn from one small world.

The world is small on purpose (a few services, ARNs, principals, context keys)
so that generated patterns, conditions and requests meet often: most requests
match some statement, and conditions see present, absent, matching and
non-matching values of every type.
"""
from __future__ import annotations

from hypothesis import strategies as st

ACCOUNT = "111122223333"
OTHER = "444455556666"

PRINCIPALS = [
    f"arn:aws:iam::{ACCOUNT}:user/alice",
    f"arn:aws:iam::{ACCOUNT}:role/Builder",
    f"arn:aws:sts::{ACCOUNT}:assumed-role/Builder/session-1",
    f"arn:aws:iam::{OTHER}:user/mallory",
    f"arn:aws:sts::{OTHER}:assumed-role/Reader/r-1",
]

ACTIONS = [
    "s3:GetObject", "s3:PutObject", "s3:ListBucket", "S3:getobject", "ec2:RunInstances", "ec2:DescribeImages",
    "iam:PassRole", "kms:Decrypt", "imagebuilder:GetImage", "imagebuilder:ListImages",
]
ACTION_PATTERNS = [
    "*", "s3:*", "s3:Get*", "s3:get*", "S3:*Object", "s3:?etObject", "s3:GetObject", "s3:PutObject",
    "ec2:*", "ec2:Describe*", "ec2:RunInstances", "iam:PassRole", "iam:Pass*", "kms:*", "kms:Dec?ypt",
    "imagebuilder:*", "imagebuilder:Get*", "imagebuilder:List*", "*:GetObject", "s3:*Bucket*",
]

RESOURCES = [
    "*",
    "arn:aws:s3:::bucket-a",
    "arn:aws:s3:::bucket-a/alice/notes.txt",
    "arn:aws:s3:::bucket-a/bob/x:y/z",
    "arn:aws:s3:::bucket-b/*/literal",
    f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0abc",
    f"arn:aws:ec2:eu-west-1:{OTHER}:instance/i-0def",
    f"arn:aws:iam::{ACCOUNT}:role/Builder",
    f"arn:aws:kms:us-east-1:{OTHER}:key/k-1",
    f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/imagebuilder/x:log-stream:1",
]
RESOURCE_PATTERNS = [
    "*", "arn:aws:s3:::bucket-a", "arn:aws:s3:::bucket-a/*", "arn:aws:s3:::bucket-?/*", "arn:aws:s3:::*",
    "arn:aws:s3:::bucket-a/${aws:username}/*", "arn:aws:s3:::bucket-a/${aws:username, 'bob'}/*",
    "arn:aws:s3:::bucket-b/${*}/literal", "arn:aws:s3:::bucket-a/${aws:PrincipalTag/team}*",
    "arn:aws:ec2:*:*:instance/*", f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0abc", "arn:aws:ec2:*:*:*",
    f"arn:aws:iam::{ACCOUNT}:role/*", "arn:aws:iam::*:role/Build?r", "arn:aws:kms:*:*:key/*",
    "arn:aws:logs:*:*:log-group:/aws/imagebuilder/*", "arn:aws:*:*:*:*", "arn:aws:s3:::bucket-a/*/notes.txt",
]

# Context keys, each with values that its conditions will and will not match.
CONTEXT_VALUES = {
    "aws:username": st.sampled_from(["alice", "bob", "Alice", "al*ce"]),
    "aws:PrincipalTag/team": st.sampled_from(["alice", "web", "data"]),
    "aws:SourceIp": st.sampled_from(["10.0.0.5", "10.1.2.3", "192.168.1.1", "2001:db8::1", "not-an-ip"]),
    "aws:TagKeys": st.lists(st.sampled_from(["team", "env", "Owner", "cost"]), max_size=3, unique=True),
    "aws:SecureTransport": st.sampled_from(["true", "false", "TRUE", "maybe"]),
    "s3:max-keys": st.sampled_from(["5", "10", "10.0", "11", "-1", "ten"]),
    "aws:CurrentTime": st.sampled_from(["2026-03-02T00:00:00Z", "2025-01-01T12:00:00+02:00",
                                        "2026-03-02T00:00:00.500Z", "2027-06-01", "yesterday"]),
    "aws:EpochTime": st.sampled_from(["1772409600", "1700000000", "1772409600.5"]),
    "aws:PrincipalArn": st.sampled_from(PRINCIPALS[:3] + ["arn:aws:iam::111122223333:role/path/Other", "x"]),
    "s3:prefix": st.sampled_from(["home/", "home/alice/", "public/", ""]),
    "kms:EncryptionContextKeys": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True),
    "aws:BinaryThing": st.sampled_from(["QUJD", "REVG"]),
}

CONDITIONS = [
    ("StringEquals", "aws:username", st.sampled_from(["alice", "bob", "${aws:PrincipalTag/team}"])),
    ("StringNotEquals", "aws:username", st.sampled_from(["alice", "bob"])),
    ("StringEqualsIgnoreCase", "aws:username", st.sampled_from(["ALICE", "bob"])),
    ("StringNotEqualsIgnoreCase", "AWS:UserName", st.sampled_from(["ALICE"])),
    ("StringLike", "s3:prefix", st.sampled_from(["home/*", "home/${aws:username}/*", "pub?ic/", "*"])),
    ("StringNotLike", "s3:prefix", st.sampled_from(["home/*", "${*}"])),
    ("StringEqualsIfExists", "aws:PrincipalTag/team", st.sampled_from(["web", "data"])),
    ("NumericLessThanEquals", "s3:max-keys", st.sampled_from(["10", 10, "5.5"])),
    ("NumericGreaterThan", "s3:max-keys", st.sampled_from(["0", 9])),
    ("NumericNotEquals", "s3:max-keys", st.sampled_from(["10"])),
    ("DateGreaterThan", "aws:CurrentTime", st.sampled_from(["2026-01-01T00:00:00Z", "2026-03-02T00:00:00+01:00"])),
    ("DateLessThanEquals", "aws:EpochTime", st.sampled_from(["1772409600", "2026-03-02T00:00:00Z"])),
    ("Bool", "aws:SecureTransport", st.sampled_from(["true", True, False])),
    ("BoolIfExists", "aws:SecureTransport", st.sampled_from(["false"])),
    ("BinaryEquals", "aws:BinaryThing", st.sampled_from(["QUJD"])),
    ("IpAddress", "aws:SourceIp", st.sampled_from(["10.0.0.0/16", "2001:db8::/32", "192.168.1.1"])),
    ("NotIpAddress", "aws:SourceIp", st.sampled_from(["10.0.0.0/8"])),
    ("NotIpAddressIfExists", "aws:SourceIp", st.sampled_from(["192.168.0.0/16"])),
    ("ArnLike", "aws:PrincipalArn", st.sampled_from(["arn:aws:iam::*:role/*", "arn:aws:*:*:*:user/*",
                                                      "arn:aws:iam::111122223333:*"])),
    ("ArnEquals", "aws:PrincipalArn", st.sampled_from([f"arn:aws:iam::{ACCOUNT}:role/Builder"])),
    ("ArnNotLike", "aws:PrincipalArn", st.sampled_from(["arn:aws:sts::*:assumed-role/*"])),
    ("Null", "aws:TagKeys", st.sampled_from(["true", "false", True])),
    ("Null", "aws:username", st.sampled_from(["true", "false"])),
    ("ForAllValues:StringEquals", "aws:TagKeys", st.sampled_from(["team", "env"])),
    ("ForAnyValue:StringLike", "aws:TagKeys", st.sampled_from(["t*", "Own?r"])),
    ("ForAllValues:StringNotEquals", "kms:EncryptionContextKeys", st.sampled_from(["a"])),
    ("ForAnyValue:StringNotEquals", "kms:EncryptionContextKeys", st.sampled_from(["a", "b"])),
    ("ForAnyValue:StringEquals", "aws:username", st.sampled_from(["alice"])),
]


def _one_or_list(strategy, max_size=3):
    return st.one_of(strategy, st.lists(strategy, min_size=1, max_size=max_size))


@st.composite
def condition_blocks(draw):
    block: dict[str, dict] = {}
    for operator, key, values in draw(st.lists(st.sampled_from(CONDITIONS), max_size=3)):
        block.setdefault(operator, {})[key] = draw(_one_or_list(values, 2))
    return block


@st.composite
def statements(draw, with_principal=False):
    statement: dict = {"Effect": draw(st.sampled_from(["Allow", "Allow", "Deny"]))}
    if draw(st.booleans()):
        statement["Sid"] = draw(st.sampled_from(["A", "B", "C", "Deny1"]))
    statement["NotAction" if draw(st.integers(0, 9)) == 0 else "Action"] = draw(
        _one_or_list(st.sampled_from(ACTION_PATTERNS)))
    statement["NotResource" if draw(st.integers(0, 9)) == 0 else "Resource"] = draw(
        _one_or_list(st.sampled_from(RESOURCE_PATTERNS)))
    if draw(st.booleans()):
        statement["Condition"] = draw(condition_blocks())
    if with_principal:
        names = st.sampled_from(["*", ACCOUNT, OTHER, f"arn:aws:iam::{ACCOUNT}:root", *PRINCIPALS,
                                 f"arn:aws:iam::{ACCOUNT}:role/Builder"])
        principal = draw(st.one_of(st.just("*"), st.fixed_dictionaries({"AWS": _one_or_list(names)}),
                                   st.just({"Service": "ec2.amazonaws.com"})))
        statement["NotPrincipal" if draw(st.integers(0, 9)) == 0 else "Principal"] = principal
    return statement


@st.composite
def policies(draw, with_principal=False):
    items = draw(st.lists(statements(with_principal), min_size=1, max_size=3))
    for i, item in enumerate(items):  # Sids must be unique within a policy
        if "Sid" in item:
            item["Sid"] = f"{item['Sid']}{i}"
    version = draw(st.sampled_from(["2012-10-17", "2012-10-17", "2012-10-17", "2008-10-17"]))
    return {"Version": version, "Statement": items}


@st.composite
def policy_sets(draw):
    """A conformance-shaped ``policies`` object."""
    return {
        "identity": draw(st.lists(policies(), max_size=3)),
        "resource": draw(st.one_of(st.none(), policies(with_principal=True))),
        "permissions_boundary": draw(st.one_of(st.none(), policies().map(lambda p: [p]))),
        "session": draw(st.one_of(st.none(), policies().map(lambda p: [p]))),
        "scp": draw(st.one_of(st.none(), st.lists(st.lists(policies(), min_size=1, max_size=2), min_size=1,
                                                  max_size=2))),
        "rcp": draw(st.one_of(st.none(), st.lists(st.lists(policies(with_principal=True), min_size=1, max_size=1),
                                                  min_size=1, max_size=1))),
    }


@st.composite
def requests(draw):
    keys = draw(st.lists(st.sampled_from(sorted(CONTEXT_VALUES)), max_size=6, unique=True))
    context = {}
    for key in keys:
        spelled = draw(st.sampled_from([key, key.lower(), key.upper()]))
        value = draw(CONTEXT_VALUES[key])
        if isinstance(value, str) and draw(st.integers(0, 7)) == 0:
            value = [value]  # a single-element list is still a multivalued key
        context[spelled] = value
    request = {
        "principal": draw(st.sampled_from(PRINCIPALS)),
        "action": draw(st.sampled_from(ACTIONS)),
        "resource": draw(st.sampled_from(RESOURCES)),
        "context": context,
    }
    if draw(st.booleans()):
        request["resource_account"] = draw(st.sampled_from([ACCOUNT, OTHER]))
    return request
