"""Hypothesis strategies: policy sets and requests drawn from one small world.

The world is small on purpose (a few services, ARNs, principals, context keys)
so that generated patterns, conditions and requests meet often: most requests
match some statement, and conditions see present, absent, matching and
non-matching values of every type; half the requests are aimed at what the
identity policies allow (an anonymous caller's at what the resource policy allows).
The world meets the per-service rules (``evaluator.service_rules``) too: a caller
that signed nothing (``anonymous``), GetCallerIdentity, AssumeRole and TagSession on
roles (whose trust policy the resource policy is), KMS keys (whose key policy it is),
services that RCPs apply to and services they do not (ec2, iam, lambda), and a VPC
endpoint's policy. Statements and policies take their patterns, conditions and
Principal names from a ``World``, so that the store strategies (``store_strategies``)
draw from a world of their own.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

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
ANONYMOUS = "anonymous"  # a request no credentials signed; drawn apart, for one request in eight

ACTIONS = [
    "s3:GetObject", "s3:PutObject", "s3:ListBucket", "S3:getobject", "ec2:RunInstances", "ec2:DescribeImages",
    "iam:PassRole", "kms:Decrypt", "imagebuilder:GetImage", "imagebuilder:ListImages",
    "sts:GetCallerIdentity", "sts:AssumeRole", "sts:TagSession", "lambda:InvokeFunction", "sqs:SendMessage",
]
ACTION_PATTERNS = [
    "*", "s3:*", "s3:Get*", "s3:get*", "S3:*Object", "s3:?etObject", "s3:GetObject", "s3:PutObject",
    "ec2:*", "ec2:Describe*", "ec2:RunInstances", "iam:PassRole", "iam:Pass*", "kms:*", "kms:Dec?ypt",
    "imagebuilder:*", "imagebuilder:Get*", "imagebuilder:List*", "*:GetObject", "s3:*Bucket*",
    "sts:*", "sts:AssumeRole", "sts:*Session", "lambda:*", "lambda:Invoke*", "sqs:*", "sqs:SendMessage",
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
    f"arn:aws:iam::{OTHER}:role/Reader",  # a role in each account (and Builder above)
    f"arn:aws:kms:us-east-1:{ACCOUNT}:key/k-2",  # a key in the callers' account
    f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:fn-1",
    f"arn:aws:sqs:us-east-1:{OTHER}:queue-1",
]
RESOURCE_PATTERNS = [
    "*", "arn:aws:s3:::bucket-a", "arn:aws:s3:::bucket-a/*", "arn:aws:s3:::bucket-?/*", "arn:aws:s3:::*",
    "arn:aws:s3:::bucket-a/${aws:username}/*", "arn:aws:s3:::bucket-a/${aws:username, 'bob'}/*",
    "arn:aws:s3:::bucket-b/${*}/literal", "arn:aws:s3:::bucket-a/${aws:PrincipalTag/team}*",
    "arn:aws:ec2:*:*:instance/*", f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0abc", "arn:aws:ec2:*:*:*",
    f"arn:aws:iam::{ACCOUNT}:role/*", "arn:aws:iam::*:role/Build?r", "arn:aws:kms:*:*:key/*",
    "arn:aws:logs:*:*:log-group:/aws/imagebuilder/*", "arn:aws:*:*:*:*", "arn:aws:s3:::bucket-a/*/notes.txt",
    "arn:aws:iam::*:role/*", f"arn:aws:iam::{OTHER}:role/Reader", f"arn:aws:kms:*:{ACCOUNT}:key/*",
    "arn:aws:lambda:*:*:function:*", f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:fn-1",
    "arn:aws:sqs:*:*:queue-*", f"arn:aws:sqs:us-east-1:{OTHER}:queue-1",
]
RULE_TARGETS = [  # (action, resource) pairs whose resource's own policy must allow: trust and key policies
    *((action, resource) for action in ("sts:AssumeRole", "sts:TagSession") for resource in RESOURCES
      if ":role/" in resource),
    *(("kms:Decrypt", resource) for resource in RESOURCES if ":key/" in resource),
]
VPCE_IDS = ["vpce-0a1b2c3d", "vpce-0123456789abcdef0"]  # as aws:SourceVpce gives them

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
    "aws:SourceVpce": st.sampled_from(VPCE_IDS),
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
    ("StringEquals", "aws:SourceVpce", st.sampled_from(VPCE_IDS[:1])),
    ("StringNotEqualsIfExists", "aws:sourcevpce", st.sampled_from(VPCE_IDS[1:])),
]

TAG_KEYS = ["team", "env"]
TAG_VALUES = st.sampled_from(["alice", "web", "data", "blocked"])


def _one_or_list(strategy, max_size=3):
    return st.one_of(strategy, st.lists(strategy, min_size=1, max_size=max_size))


def principal_elements(names: list[str], service=True) -> st.SearchStrategy:
    """A resource policy's Principal: everyone, AWS principals named from ``names``, or a service."""
    aws = st.fixed_dictionaries({"AWS": _one_or_list(st.sampled_from(names))})
    if not service:
        return st.one_of(st.just("*"), aws)
    return st.one_of(st.just("*"), aws, st.just({"Service": "ec2.amazonaws.com"}))


@dataclass(frozen=True)
class World:
    """What generated statements draw from: per statement, where its Action and Resource
    patterns come from (in a store's world, one service's patterns together, so that they meet);
    conditions (operator, key, values); and the Principal elements of resource policies."""

    targets: st.SearchStrategy[tuple[st.SearchStrategy[str], st.SearchStrategy[str]]]
    conditions: st.SearchStrategy[tuple[str, str, st.SearchStrategy]]
    principals: st.SearchStrategy


POLICY_WORLD = World(
    st.just((st.sampled_from(ACTION_PATTERNS), st.sampled_from(RESOURCE_PATTERNS))), st.sampled_from(CONDITIONS),
    principal_elements(["*", ACCOUNT, OTHER, f"arn:aws:iam::{ACCOUNT}:root", *PRINCIPALS]),
)


EFFECTS = st.sampled_from(["Allow", "Allow", "Deny"])
SIDS = st.sampled_from(["A", "B", "C", "Deny1"])
VERSIONS = st.sampled_from(["2012-10-17", "2012-10-17", "2012-10-17", "2008-10-17"])


@st.composite
def condition_blocks(draw, world: World = POLICY_WORLD):
    block: dict[str, dict] = {}
    for operator, key, values in draw(st.lists(world.conditions, max_size=3)):
        block.setdefault(operator, {})[key] = draw(_one_or_list(values, 2))
    return block


@st.composite
def statements(draw, with_principal=False, world: World = POLICY_WORLD):
    statement: dict = {"Effect": draw(EFFECTS)}
    if draw(st.booleans()):
        statement["Sid"] = draw(SIDS)
    action_patterns, resource_patterns = draw(world.targets)
    statement["NotAction" if draw(st.integers(0, 9)) == 0 else "Action"] = draw(_one_or_list(action_patterns))
    statement["NotResource" if draw(st.integers(0, 9)) == 0 else "Resource"] = draw(_one_or_list(resource_patterns))
    if draw(st.booleans()):
        statement["Condition"] = draw(condition_blocks(world))
    if with_principal:
        statement["NotPrincipal" if draw(st.integers(0, 9)) == 0 else "Principal"] = draw(world.principals)
    return statement


@st.composite
def policies(draw, with_principal=False, world: World = POLICY_WORLD, max_statements=3):
    items = draw(st.lists(statements(with_principal, world), min_size=1, max_size=max_statements))
    for i, item in enumerate(items):  # Sids must be unique within a policy
        if "Sid" in item:
            item["Sid"] = f"{item['Sid']}{i}"
    version = draw(VERSIONS)
    return {"Version": version, "Statement": items}


@st.composite
def with_public_statement(draw, policy: dict, world: World = POLICY_WORLD) -> dict:
    """A resource policy, half the time with one more statement that allows everyone
    (Principal "*"), so that anonymous requests meet Allows too."""
    if draw(st.booleans()):
        statement = draw(statements(world=world))
        statement.update({"Sid": "Public", "Effect": "Allow", "Principal": "*"})
        policy = {**policy, "Statement": [*policy["Statement"], statement]}
    return policy


RULE_ACTION_PATTERNS = ["sts:AssumeRole", "sts:TagSession", "sts:*", "kms:Decrypt", "kms:*", "*"]
RULE_PRINCIPALS = principal_elements([ACCOUNT, OTHER, f"arn:aws:iam::{ACCOUNT}:root", f"arn:aws:iam::{OTHER}:root",
                                      *PRINCIPALS], service=False)  # the accounts (delegating) or callers


@st.composite
def with_rule_statement(draw, policy: dict) -> dict:
    """A resource policy, a third of the time with one more Allow of AssumeRole, TagSession or
    KMS actions to an account or a caller: it acts as a trust or key policy that names (or
    delegates to) the caller, so that the resource-must-allow rules meet their Allows."""
    if draw(st.integers(0, 2)) == 2:
        statement = {"Sid": "Rule", "Effect": "Allow", "Principal": draw(RULE_PRINCIPALS),
                     "Action": draw(_one_or_list(st.sampled_from(RULE_ACTION_PATTERNS), 2)), "Resource": "*"}
        if draw(st.integers(0, 2)) == 2:
            statement["Condition"] = draw(condition_blocks())
        policy = {**policy, "Statement": [*policy["Statement"], statement]}
    return policy


ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
RCP_ALLOW_ALL = {"Version": "2012-10-17",
                 "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}]}


@st.composite
def _levels(draw, level_policies, allow_all, max_size):
    """SCP or RCP levels; most carry an allow-all policy beside their own, as AWS attaches
    FullAWSAccess (and RCPFullAWSAccess) to every target, so that requests get past them."""
    levels = draw(st.lists(st.lists(level_policies, min_size=1, max_size=max_size), min_size=1, max_size=2))
    return [[allow_all, *level] if draw(st.integers(0, 3)) else level for level in levels]


@st.composite
def endpoint_policies(draw, world: World = POLICY_WORLD):
    """A VPC endpoint's policy (a resource-kind policy, with Principal); most begin with the
    allow-all statement of AWS's default endpoint policy, so that requests get past it."""
    policy = draw(policies(with_principal=True, world=world, max_statements=2))
    if draw(st.integers(0, 3)) < 3:
        policy["Statement"] = [*RCP_ALLOW_ALL["Statement"], *policy["Statement"]]
    return policy


@st.composite
def policy_sets(draw):
    """A conformance-shaped ``policies`` object; a third of them with a VPC endpoint's policy."""
    policy_set = {
        "identity": draw(st.lists(policies(), max_size=3)),
        "resource": draw(st.one_of(st.none(), policies(with_principal=True).flatmap(with_public_statement)
                                   .flatmap(with_rule_statement))),
        "permissions_boundary": draw(st.one_of(st.none(), policies().map(lambda p: [p]))),
        "session": draw(st.one_of(st.none(), policies().map(lambda p: [p]))),
        "scp": draw(st.one_of(st.none(), _levels(policies(), ALLOW_ALL, 2))),
        "rcp": draw(st.one_of(st.none(), _levels(policies(with_principal=True), RCP_ALLOW_ALL, 1))),
    }
    if draw(st.integers(0, 2)) == 2:
        policy_set["vpc_endpoint"] = [draw(endpoint_policies())]
    return policy_set


@st.composite
def contexts(draw, values: Mapping[str, st.SearchStrategy], max_keys=6, refused=False):
    """A request context, keys spelled in any case as callers (and CloudTrail) do. With
    ``refused``, rarely a key given twice in two spellings, which makes the request invalid."""
    context = {}
    spelled_keys = {}  # as spelled -> as in ``values``
    for key in draw(st.lists(st.sampled_from(sorted(values)), max_size=max_keys, unique=True)):
        spelled = draw(st.sampled_from([key, key.lower(), key.upper()]))
        value = draw(values[key])
        if isinstance(value, str) and draw(st.integers(0, 7)) == 0:
            value = [value]  # a single-element list is still a multivalued key
        context[spelled] = value
        spelled_keys[spelled] = key
    if refused and context and draw(st.integers(0, 19)) == 0:
        spelled = draw(st.sampled_from(sorted(context)))
        context[spelled.swapcase()] = draw(values[spelled_keys[spelled]])
    return context


@st.composite
def session_tag_sets(draw, refused=False):
    """The tags of an assumed-role session, keys in any case; with ``refused``, rarely a key
    given twice in two spellings."""
    tags = {}
    for key in draw(st.lists(st.sampled_from(TAG_KEYS), min_size=1, max_size=len(TAG_KEYS), unique=True)):
        tags[draw(st.sampled_from([key, key.upper(), key.title()]))] = draw(TAG_VALUES)
    if refused and draw(st.integers(0, 19)) == 0:
        tags[draw(st.sampled_from(sorted(tags))).swapcase()] = draw(TAG_VALUES)
    return tags


@st.composite
def session_tags_for(draw, principal: str, refused=False):
    """Session tags for a third of assumed-role sessions, else None; with ``refused``, also
    (rarely) for another principal, which may not have them."""
    session = ":assumed-role/" in principal
    if (session or refused) and draw(st.integers(0, 2 if session else 39)) == 0:
        return draw(session_tag_sets(refused))
    return None


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def allowed_targets(documents: Sequence[dict], actions: Sequence[str],
                    resources: Sequence[str]) -> list[tuple[str, str]]:
    """The (action, resource) pairs that an Allow statement of the policy ``documents`` names
    (IAM's ``*`` and ``?`` are fnmatch's; a pattern with a policy variable is left out):
    requests for them meet Allows far more often than chance."""
    targets = set()
    for statement in (s for document in documents for s in document["Statement"] if s["Effect"] == "Allow"):
        action_patterns = [p.lower() for p in _as_list(statement.get("Action", []))]
        resource_patterns = [p for p in _as_list(statement.get("Resource", [])) if "${" not in p]
        targets.update((action, resource) for action in actions for resource in resources
                       if any(fnmatchcase(action.lower(), p) for p in action_patterns)
                       and any(fnmatchcase(resource, p) for p in resource_patterns))
    return sorted(targets)


def names_everyone(statement: dict) -> bool:
    """Whether a resource-policy statement's Principal names everyone, anonymous callers too."""
    principal = statement.get("Principal")
    return principal == "*" or isinstance(principal, dict) and "*" in _as_list(principal.get("AWS", []))


def public_targets(document: dict | None, actions: Sequence[str], resources: Sequence[str]) -> list[tuple[str, str]]:
    """The (action, resource) pairs that an Allow of a resource policy ``document`` grants everyone:
    what an anonymous request may be allowed."""
    if document is None:
        return []
    public = [statement for statement in document["Statement"] if names_everyone(statement)]
    return allowed_targets([{"Statement": public}], actions, resources)


@st.composite
def requests(draw, refused=False, aimed_at: Sequence[tuple[str, str]] = (),
             public: Sequence[tuple[str, str]] = (), both: Sequence[tuple[str, str]] = ()):
    """A request as JSON, from one of ``PRINCIPALS`` or (one in eight) ``anonymous``; half the
    time, when given, for one of the (action, resource) pairs ``aimed_at`` (an anonymous
    request three times in four for one of ``public``, what the resource policy allows
    everyone, as nothing else can allow it). A third of a signed caller's aimed requests are
    for one of ``both``, pairs that the resource policy allows too (to some caller): cross-account
    grants, trust and key policies. One in eight of the others is for one of ``RULE_TARGETS``
    (half the time, if any, one that ``aimed_at`` holds). With ``refused``,
    ``Request.from_json`` refuses a few of them (a context key or session tag given twice,
    session tags on a principal that is no session); an anonymous request has no session tags."""
    principal = ANONYMOUS if draw(st.integers(0, 7)) == 7 else draw(st.sampled_from(PRINCIPALS))
    targets = public if principal == ANONYMOUS else aimed_at
    if targets and draw(st.integers(0, 3 if principal == ANONYMOUS else 1)):
        if principal != ANONYMOUS and both and draw(st.integers(0, 2)) == 2:
            targets = both
        action, resource = draw(st.sampled_from(targets))
    elif draw(st.integers(0, 7)) == 7:
        granted = [target for target in RULE_TARGETS if target in aimed_at]  # the identity path, to be delegated
        action, resource = draw(st.sampled_from(granted if granted and draw(st.booleans()) else RULE_TARGETS))
    else:
        action, resource = draw(st.sampled_from(ACTIONS)), draw(st.sampled_from(RESOURCES))
    request = {
        "principal": principal,
        "action": action,
        "resource": resource,
        "context": draw(contexts(CONTEXT_VALUES, refused=refused)),
    }
    if draw(st.booleans()):
        request["resource_account"] = draw(st.sampled_from([ACCOUNT, OTHER]))
    tags = None if principal == ANONYMOUS else draw(session_tags_for(principal, refused))
    if tags is not None:
        request["session_tags"] = tags
    return request


@st.composite
def policy_cases(draw, refused=False) -> tuple[dict, list[dict]]:
    """A policy set, and requests to decide with it: half of them for what its identity
    policies allow (an anonymous caller's for what its resource policy allows)."""
    policies_json = draw(policy_sets())
    aimed_at = allowed_targets(policies_json["identity"], ACTIONS, RESOURCES)
    resource = policies_json["resource"]
    public = public_targets(resource, ACTIONS, RESOURCES)
    both = sorted(set(aimed_at) & set(allowed_targets([resource], ACTIONS, RESOURCES))) if resource else []
    return policies_json, draw(st.lists(requests(refused, aimed_at, public, both), min_size=1, max_size=6))
