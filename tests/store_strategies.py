"""Hypothesis strategies: whole policy stores, as snapshots, and requests to them.

A small world again (three accounts in one organisation, a few roles, users,
groups, managed policies, SCPs, RCPs, resources and VPC endpoints), so that principals
share policies, conditions on the principal's tags and organisation meet the facts
the store sets, and requests reach every layer and every per-service rule (anonymous
callers, GetCallerIdentity, trust and key policies, RCPs on the services they apply
to and on lambda and ec2, which they do not, the endpoint ``aws:SourceVpce`` names):
a snapshot is what ``PolicyStore.from_json`` reads (the format is in ``evaluator/store.py``).
Statements come from ``strategies``, drawn from this module's ``World``.
"""
from __future__ import annotations

from hypothesis import strategies as st

from .strategies import (
    ANONYMOUS,
    TAG_VALUES,
    World,
    allowed_targets,
    contexts,
    endpoint_policies,
    policies,
    principal_elements,
    session_tags_for,
    with_public_statement,
)

ORG = "o-abcdefgh12"
ROOT = "r-ab12"
OU_WORKLOADS = "ou-ab12-aaaaaaaa"
OU_SANDBOX = "ou-ab12-bbbbbbbb"
ACCOUNTS = ["111111111111", "222222222222", "333333333333"]
OUTSIDE = "444444444444"  # an account the store knows nothing of
A1, A2, A3 = ACCOUNTS

ROLES = ["Builder", "service/Reader", "Deployer"]  # with their IAM paths
USERS = ["alice", "bob"]
GROUPS = ["devs", "ops"]


def role_arn(account: str, role: str) -> str:
    return f"arn:aws:iam::{account}:role/{role}"


def session_arn(account: str, role: str, session: str = "sess") -> str:
    """An assumed-role session: its ARN names the role without its path."""
    return f"arn:aws:sts::{account}:assumed-role/{role.rsplit('/', 1)[-1]}/{session}"


PRINCIPAL_ARNS = [role_arn(a, r) for a in ACCOUNTS for r in ROLES] + \
    [f"arn:aws:iam::{a}:user/{u}" for a in ACCOUNTS for u in USERS]
GROUP_ARNS = [f"arn:aws:iam::{a}:group/{g}" for a in ACCOUNTS for g in GROUPS]
MANAGED_ARNS = ["arn:aws:iam::aws:policy/SharedRead", f"arn:aws:iam::{A1}:policy/Team",
                f"arn:aws:iam::{A1}:policy/Boundary", f"arn:aws:iam::{A2}:policy/Deploy"]
SCP_NAMES = ["FullAWSAccess", "Guard0", "Guard1"]
RCP_NAMES = ["Fence0", "Fence1"]
FULL_AWS_ACCESS = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}

BUCKET_A, BUCKET_B = "arn:aws:s3:::bucket-a", "arn:aws:s3:::bucket-b"
QUEUE = f"arn:aws:sqs:us-east-1:{A2}:queue-1"
KEY = f"arn:aws:kms:us-east-1:{A1}:key/k-1"
FUNCTION = f"arn:aws:lambda:us-east-1:{A3}:function:fn-1"  # lambda: a service RCPs do not apply to
POLICY_RESOURCES = [BUCKET_A, BUCKET_B, QUEUE, KEY, FUNCTION]  # and the trust policies of the store's roles
ROLE_ARNS = [role_arn(a, r) for a in ACCOUNTS for r in ROLES]
VPCE_IDS = ["vpce-0a1b2c3d", "vpce-0123456789abcdef0", "vpce-99998888"]  # 8 to 17 hex digits
UNKNOWN_VPCE = ["vpce-ffffffff", "VPCE-0A1B2C3D"]  # endpoints no store holds (ids compare exactly)

# Requests: mostly an action on a resource of its kind (an S3 object's policy is its bucket's).
OBJECTS = [f"{BUCKET_A}/web/report.csv", f"{BUCKET_A}/alice/notes.txt", f"{BUCKET_B}/data/x"]
TARGETS = {
    "s3:GetObject": OBJECTS, "s3:PutObject": OBJECTS, "s3:ListBucket": [BUCKET_A, BUCKET_B],
    "sqs:SendMessage": [QUEUE], "kms:Decrypt": [KEY, f"arn:aws:kms:us-east-1:{A3}:key/k-2"],
    "kms:GenerateDataKey": [KEY],
    "sts:AssumeRole": ROLE_ARNS, "sts:TagSession": ROLE_ARNS, "sts:GetCallerIdentity": ["*"],
    "ec2:RunInstances": ["*", f"arn:aws:ec2:us-east-1:{A3}:instance/i-1"],
    "lambda:InvokeFunction": [FUNCTION, f"arn:aws:lambda:us-east-1:{A1}:function:fn-2"],
}
ACTIONS = sorted(TARGETS)
RESOURCES = ["*", *sorted({resource for resources in TARGETS.values() for resource in resources})]
UNKNOWN_PRINCIPALS = [role_arn(A1, "Ghost"), role_arn(A1, "Reader"), f"arn:aws:iam::{A2}:user/mallory",
                      session_arn(A1, "Ghost"), session_arn(A2, "alice"), role_arn(OUTSIDE, "Builder"),
                      f"arn:aws:iam::{A1}:root"]
MALFORMED_PRINCIPALS = ["nobody", "arn:aws:iam::1111:user/alice", BUCKET_A, ""]

SERVICE_PATTERNS = {  # per service: (Action patterns, Resource patterns); "*" often, as in real policies
    "s3": (["s3:*", "s3:Get*", "s3:GetObject", "s3:PutObject", "s3:ListBucket"],
           ["*", "*", "*", BUCKET_A, f"{BUCKET_A}/*", "arn:aws:s3:::bucket-?/*", "arn:aws:s3:::*",
            f"{BUCKET_A}/${{aws:PrincipalTag/team}}/*", f"{BUCKET_A}/${{aws:username}}/*"]),
    "sqs": (["sqs:*", "sqs:SendMessage"],
            ["*", "*", "arn:aws:sqs:*:*:queue-*", QUEUE, "arn:aws:sqs:*:${aws:PrincipalAccount}:*"]),
    "kms": (["kms:*", "kms:Decrypt"], ["*", "*", "arn:aws:kms:*:*:key/*", KEY]),
    "sts": (["sts:*", "sts:AssumeRole", "sts:TagSession", "sts:GetCallerIdentity"],
            ["*", "*", "arn:aws:iam::*:role/*", role_arn(A1, "Builder"),
             "arn:aws:iam::${aws:PrincipalAccount}:role/*"]),
    "ec2": (["ec2:*", "ec2:RunInstances"], ["*", "arn:aws:ec2:*:*:instance/*"]),
    "lambda": (["lambda:*", "lambda:InvokeFunction"], ["*", "*", "arn:aws:lambda:*:*:function:*", FUNCTION]),
}
SPECIFIC_RESOURCES = sorted({r for _, resources in SERVICE_PATTERNS.values() for r in resources if r != "*"})
ANY_TARGETS = (  # any service's patterns, "*" for half the resources
    st.sampled_from(["*", "*", "*", *(a for actions, _ in SERVICE_PATTERNS.values() for a in actions)]),
    st.sampled_from(["*"] * len(SPECIFIC_RESOURCES) + ["arn:aws:*:*:${aws:PrincipalAccount}:*", *SPECIFIC_RESOURCES]),
)
SERVICE_TARGETS = {service: (st.sampled_from(actions), st.sampled_from(resources))
                   for service, (actions, resources) in SERVICE_PATTERNS.items()}
CONDITIONS = [
    ("StringEquals", "aws:PrincipalTag/team", st.sampled_from(["web", "data"])),
    ("StringNotEquals", "aws:PrincipalTag/team", st.sampled_from(["blocked"])),
    ("StringEqualsIfExists", "aws:PrincipalTag/env", st.sampled_from(["prod"])),
    ("StringLike", "aws:PrincipalTag/Team", st.sampled_from(["w*", "${aws:PrincipalTag/env}"])),
    ("Null", "aws:PrincipalTag/team", st.sampled_from(["true", "false"])),
    ("StringEquals", "aws:PrincipalOrgID", st.sampled_from([ORG, "o-otherorg000"])),
    ("StringNotEquals", "aws:principalorgid", st.sampled_from([ORG])),
    ("ForAnyValue:StringLike", "aws:PrincipalOrgPaths",
     st.sampled_from([f"{ORG}/{ROOT}/{OU_WORKLOADS}/*", f"{ORG}/{ROOT}/*"])),
    ("StringEquals", "aws:PrincipalAccount", st.sampled_from(ACCOUNTS)),
    ("ArnLike", "aws:PrincipalArn", st.sampled_from(["arn:aws:iam::*:role/*", f"arn:aws:iam::{A1}:*"])),
    ("StringEquals", "aws:PrincipalType", st.sampled_from(["AssumedRole", "User"])),
    ("StringEquals", "aws:username", st.sampled_from(["alice"])),
    ("IpAddress", "aws:SourceIp", st.sampled_from(["10.0.0.0/8"])),
    ("Bool", "aws:SecureTransport", st.sampled_from(["true"])),
    ("StringEquals", "aws:RequestedRegion", st.sampled_from(["us-east-1"])),
    ("StringEquals", "aws:SourceVpce", st.sampled_from(VPCE_IDS[:2])),
    ("StringNotEqualsIfExists", "aws:sourcevpce", st.sampled_from(VPCE_IDS[2:])),
]
PRINCIPAL_NAMES = ["*", *ACCOUNTS, OUTSIDE, *(f"arn:aws:iam::{a}:root" for a in ACCOUNTS), role_arn(A1, "Builder"),
                   role_arn(A2, "Deployer"), role_arn(A2, "service/Reader"), f"arn:aws:iam::{A1}:user/alice",
                   session_arn(A1, "Builder"), role_arn(A1, "Ghost")]


def _world(*targets) -> World:
    return World(st.sampled_from(targets), st.sampled_from(CONDITIONS), principal_elements(PRINCIPAL_NAMES, False))


STORE_WORLD = _world(*SERVICE_TARGETS.values(), *[ANY_TARGETS] * len(SERVICE_TARGETS))  # any service: half

# Context keys a request may give: principal keys (which the store's facts replace), others.
CONTEXT_VALUES = {
    "aws:PrincipalTag/team": st.sampled_from(["web", "data", "blocked"]),
    "aws:PrincipalTag/env": st.sampled_from(["prod", "dev"]),
    "aws:PrincipalOrgID": st.sampled_from([ORG, "o-otherorg000"]),
    "aws:PrincipalOrgPaths": st.lists(st.sampled_from([f"{ORG}/{ROOT}/{OU_WORKLOADS}/", f"{ORG}/{ROOT}/"]),
                                      min_size=1, max_size=2, unique=True),
    "aws:PrincipalAccount": st.sampled_from(ACCOUNTS),
    "aws:PrincipalArn": st.sampled_from([role_arn(A1, "Builder"), f"arn:aws:iam::{A2}:user/bob"]),
    "aws:PrincipalType": st.sampled_from(["User", "AssumedRole"]),
    "aws:username": st.sampled_from(["alice", "mallory"]),
    "aws:SourceIp": st.sampled_from(["10.1.2.3", "192.168.0.1", "not-an-ip"]),
    "aws:SecureTransport": st.sampled_from(["true", "false"]),
    "aws:RequestedRegion": st.sampled_from(["us-east-1", "eu-west-1"]),
    "aws:SourceVpce": st.sampled_from(VPCE_IDS + UNKNOWN_VPCE),  # names an endpoint the store may hold
}

POLICIES = policies(world=STORE_WORLD)
RCPS = policies(with_principal=True, world=STORE_WORLD, max_statements=2)
RESOURCE_WORLDS = {service: _world(targets, targets, ANY_TARGETS) for service, targets in SERVICE_TARGETS.items()}
RESOURCE_POLICIES = {  # a resource's policy mostly names its own service's actions; some allow everyone something
    service: policies(with_principal=True, world=world, max_statements=2).flatmap(
        lambda policy, world=world: with_public_statement(policy, world))
    for service, world in RESOURCE_WORLDS.items()}
ENDPOINT_POLICIES = endpoint_policies(STORE_WORLD)


def _subset(elements, max_size=2, min_size=0):
    if not elements:
        return st.just([])
    return st.lists(st.sampled_from(elements), min_size=min_size, max_size=max_size, unique=True)


@st.composite
def _tags(draw):
    """Principal tags, keys spelled in any case (the store refuses two that differ only in case)."""
    tags = {}
    for key in draw(_subset(["team", "env"])):
        tags[draw(st.sampled_from([key, key.title()]))] = draw(TAG_VALUES if key == "team" else
                                                              st.sampled_from(["prod", "dev"]))
    return tags


@st.composite
def organizations(draw, scps: list[str], rcps: list[str]):
    """The organisation tree: root, a workloads OU, a sandbox OU under either, and the accounts
    placed under any of them or left outside; SCPs and RCPs attached at any level."""

    def node(target: str, children: list[dict]) -> dict:
        entry: dict = {"id": target}
        for layer, names in (("scps", scps), ("rcps", rcps)):
            attached = draw(_subset(names)) if names and draw(st.booleans()) else []
            if layer == "scps" and attached and "FullAWSAccess" in names and draw(st.integers(0, 3)):
                attached = sorted({"FullAWSAccess", *attached})  # as AWS attaches it, unless detached
            if attached:
                entry[layer] = attached
        if children:
            entry["children"] = children
        return entry

    sandbox_parent = draw(st.sampled_from([ROOT, OU_WORKLOADS]))
    placed = {account: draw(st.sampled_from([ROOT, OU_WORKLOADS, OU_WORKLOADS, OU_SANDBOX, None]))
              for account in ACCOUNTS}

    def accounts_under(parent: str) -> list[dict]:
        return [node(account, []) for account, at in placed.items() if at == parent]

    sandbox = node(OU_SANDBOX, accounts_under(OU_SANDBOX))
    workloads = node(OU_WORKLOADS, accounts_under(OU_WORKLOADS) + ([sandbox] if sandbox_parent == OU_WORKLOADS else []))
    root = node(ROOT, accounts_under(ROOT) + [workloads] + ([sandbox] if sandbox_parent == ROOT else []))
    return {"id": ORG, "root": root}


@st.composite
def stores(draw) -> dict:
    """A store snapshot."""
    managed = draw(_subset(MANAGED_ARNS, max_size=len(MANAGED_ARNS), min_size=1))
    snapshot: dict = {"managed_policies": [{"arn": arn, "document": draw(POLICIES)} for arn in managed]}

    def attachments(holder: dict, min_size: int = 0) -> dict:
        """Managed policies shared between holders, and sometimes an inline policy."""
        shared = draw(_subset(managed, min_size=min_size))
        if shared:
            holder["managed_policies"] = shared
        if draw(st.integers(0, 2)) == 0:
            holder["inline_policies"] = {"Inline0": draw(POLICIES)}
        return holder

    groups = draw(_subset(GROUP_ARNS, max_size=3))
    snapshot["groups"] = [attachments({"arn": arn}) for arn in groups]
    snapshot["principals"] = []
    for arn in draw(_subset(PRINCIPAL_ARNS, min_size=1, max_size=8)):
        principal = attachments({"arn": arn}, min_size=1)
        account = arn.split(":")[4]
        if ":user/" in arn:
            member_of = draw(_subset([g.rsplit("/", 1)[1] for g in groups if g.split(":")[4] == account]))
            if member_of:
                principal["groups"] = member_of
        if draw(st.integers(0, 3)) == 0:
            principal["permissions_boundary"] = draw(st.sampled_from(managed))
        tags = draw(_tags())
        if tags:
            principal["tags"] = tags
        snapshot["principals"].append(principal)
    scps = draw(_subset(SCP_NAMES, max_size=len(SCP_NAMES)))
    snapshot["scps"] = [{"name": name, "document": FULL_AWS_ACCESS if name == "FullAWSAccess" else draw(POLICIES)}
                        for name in scps]
    rcps = draw(_subset(RCP_NAMES))
    snapshot["rcps"] = [{"name": name, "document": draw(RCPS)} for name in rcps]
    if draw(st.integers(0, 3)):
        snapshot["organization"] = draw(organizations(scps, rcps))
    roles = [p["arn"] for p in snapshot["principals"] if ":role/" in p["arn"]]
    governed = draw(_subset(POLICY_RESOURCES + roles, max_size=4))
    snapshot["resource_policies"] = [  # a role's trust policy is for sts
        {"resource": arn, "document": draw(RESOURCE_POLICIES["sts" if ":role/" in arn else arn.split(":")[2]])}
        for arn in governed]
    if draw(st.integers(0, 2)) == 2:  # a third of the stores hold one or two VPC endpoints
        snapshot["vpc_endpoints"] = [{"id": vpce, "document": draw(ENDPOINT_POLICIES)}
                                     for vpce in draw(_subset(VPCE_IDS, min_size=1))]
    return {section: entries for section, entries in snapshot.items() if entries}


def granted_targets(snapshot: dict, arn: str) -> list[tuple[str, str]]:
    """The (action, resource) pairs that an Allow of the identity policies of a principal the
    store holds names."""
    principal = next(p for p in snapshot["principals"] if p["arn"] == arn)
    account = arn.split(":")[4]
    groups = [g for g in snapshot.get("groups", ()) if g["arn"].split(":")[4] == account
              and g["arn"].rsplit("/", 1)[1] in principal.get("groups", ())]
    managed = {m["arn"]: m["document"] for m in snapshot["managed_policies"]}
    documents = [document for holder in (principal, *groups)
                 for document in (*holder.get("inline_policies", {}).values(),
                                  *(managed[name] for name in holder.get("managed_policies", ())))]
    return allowed_targets(documents, ACTIONS, RESOURCES)


@st.composite
def store_requests(draw, snapshot: dict, refused=False) -> dict:
    """A request to the store as JSON: mostly from its principals and their roles' sessions,
    sometimes from principals it does not hold or anonymous callers, rarely from malformed
    ones; through a VPC endpoint (``aws:SourceVpce``) sometimes, one the store holds or not."""
    holders = [p["arn"] for p in snapshot["principals"]]
    roles = [arn for arn in holders if ":role/" in arn]
    pick = draw(st.integers(0, 22))
    # of 23: 9 a principal it holds, 8 a session of a role, 2 unknown, 1 malformed, 3 anonymous
    granted: list[tuple[str, str]] = []
    if pick < 17:
        held = draw(st.sampled_from(roles if pick >= 9 and roles else holders))
        principal = held if pick < 9 or not roles else \
            session_arn(held.split(":")[4], held.split(":role/")[1], draw(st.sampled_from(["s1", "s2"])))
        granted = granted_targets(snapshot, held)
    elif pick < 19:
        principal = draw(st.sampled_from(UNKNOWN_PRINCIPALS))
    elif pick < 20:
        principal = draw(st.sampled_from(MALFORMED_PRINCIPALS))
    else:
        principal = ANONYMOUS
    governed = [resource for resource in RESOURCES
                if any(resource.split("/")[0] == p["resource"] or resource == p["resource"]
                       for p in snapshot.get("resource_policies", ()))]
    aim = draw(st.integers(0, 5))
    if granted and aim < 3:  # what the principal's policies allow
        action, resource = draw(st.sampled_from(granted))
    elif governed and aim < 4:  # a resource with a policy, and an action on it
        resource = draw(st.sampled_from(governed))
        action = draw(st.sampled_from([action for action, resources in TARGETS.items() if resource in resources]))
    else:  # mostly an action on a resource of its kind
        action = draw(st.sampled_from(ACTIONS))
        resource = draw(st.sampled_from(TARGETS[action] if draw(st.integers(0, 4)) else RESOURCES))
    context = draw(contexts(CONTEXT_VALUES, max_keys=4, refused=refused))
    endpoints = [endpoint["id"] for endpoint in snapshot.get("vpc_endpoints", ())]
    if endpoints and draw(st.integers(0, 2)) == 2 and not any(key.lower() == "aws:sourcevpce" for key in context):
        spelled = draw(st.sampled_from(["aws:SourceVpce", "aws:sourcevpce", "AWS:SOURCEVPCE"]))
        context[spelled] = draw(st.sampled_from(endpoints + UNKNOWN_VPCE[:1]))
    request = {
        "principal": principal,
        "action": action,
        "resource": resource,
        "context": context,
    }
    if draw(st.integers(0, 1 if principal == ANONYMOUS else 3)) == 0:
        request["resource_account"] = draw(st.sampled_from([*ACCOUNTS, OUTSIDE]))
    tags = None if principal == ANONYMOUS else draw(session_tags_for(principal, refused))
    if tags is not None:
        request["session_tags"] = tags
    return request


@st.composite
def store_cases(draw, refused=False, max_requests=10) -> tuple[dict, list[dict]]:
    """A store snapshot, and a mixed batch of requests to it."""
    snapshot = draw(stores())
    return snapshot, draw(st.lists(store_requests(snapshot, refused), min_size=2, max_size=max_requests))
