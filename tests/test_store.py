"""The policy store: loading a directory, a snapshot and an account export; assembling policy sets;
and the compiled store, which must give the reference evaluator's decisions and share compiled sets."""
from __future__ import annotations

import json
import shutil
from itertools import product
from pathlib import Path

import pytest

from iam_evaluator import DecisionKind, Request, reference
from iam_evaluator.account_export import load_account_export
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.store import PolicyStore, StoreError

from .conftest import CORPUS, REPO, require

EXAMPLE_STORE = REPO / "examples" / "store"
EXPORT = Path(__file__).parent / "data" / "store" / "account_export.json"

ACCOUNT = "111122223333"
BUILDER = f"arn:aws:iam::{ACCOUNT}:role/ImageBuilderRole"
INSTANCE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/imagebuilder/ImageBuilderInstanceRole"
INSTANCE_SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/ImageBuilderInstanceRole/i-0abc123"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/ImageBuilderReadOnlyBoundary"
LOGS = "arn:aws:s3:::example-imagebuilder-logs"
IMAGE = f"arn:aws:imagebuilder:us-east-1:{ACCOUNT}:image/demo/1.0.0/1"
FULL_ACCESS = "arn:aws:iam::aws:policy/AWSImageBuilderFullAccess"
READ_ONLY = "arn:aws:iam::aws:policy/AWSImageBuilderReadOnlyAccess"

EXPORTED = "444455556666"
BOB = f"arn:aws:iam::{EXPORTED}:user/bob"
DEPLOY = f"arn:aws:iam::{EXPORTED}:role/service-role/deploy"
CANARY = f"arn:aws:iam::{EXPORTED}:role/service-role/deploy-canary"
DEPLOY_ARTIFACTS = f"arn:aws:iam::{EXPORTED}:policy/DeployArtifacts"

ALLOW, IMPLICIT, EXPLICIT = DecisionKind.ALLOW, DecisionKind.IMPLICIT_DENY, DecisionKind.EXPLICIT_DENY


@pytest.fixture(scope="module")
def store() -> PolicyStore:
    return PolicyStore.from_directory(EXAMPLE_STORE)


@pytest.fixture(scope="module")
def exported() -> PolicyStore:
    return load_account_export(EXPORT, require(CORPUS / "aws_managed_policies.jsonl"))


def names(policies) -> list[str]:
    return [policy.name for policy in policies]


# -- the example store ------------------------------------------------------------------------------


def test_example_store_holds_its_principals(store):
    assert set(store.principals) == {BUILDER, INSTANCE_ROLE, ALICE}
    builder = store.principals[BUILDER]
    assert builder.kind == "role" and builder.account == ACCOUNT and len(builder.managed_policy_arns) == 6
    assert builder.org_path == ("r-ex12", "ou-ex12-workloads", ACCOUNT)
    alice = store.principals[ALICE]
    assert (alice.kind, alice.name, alice.group_names, alice.permissions_boundary_arn) == \
        ("user", "alice", ("developers",), BOUNDARY)
    assert store.principals[INSTANCE_ROLE].name == "ImageBuilderInstanceRole"
    assert len(store.managed_policies) == 7 and set(store.scps) == {"FullAWSAccess", "DenyOutsideApprovedRegions"}


def test_role_policy_set_has_its_six_policies_and_one_scp_level(store):
    policy_set = store.policy_set(BUILDER, IMAGE)
    assert names(policy_set.identity) == list(store.principals[BUILDER].managed_policy_arns)
    assert policy_set.permissions_boundary is None and policy_set.session is None and policy_set.resource is None
    assert [names(level) for level in policy_set.scp] == [["scp/FullAWSAccess", "scp/DenyOutsideApprovedRegions"]]
    assert policy_set.rcp is None


def test_user_policy_set_has_inline_managed_group_and_boundary(store):
    policy_set = store.policy_set(ALICE, "*")
    assert names(policy_set.identity) == [FULL_ACCESS, "group/developers:inline/ReadBuildLogs", READ_ONLY]
    assert names(policy_set.permissions_boundary) == [BOUNDARY]


def test_session_resolves_to_its_role_whatever_the_path(store):
    assert store.principal(INSTANCE_SESSION) is store.principals[INSTANCE_ROLE]
    assert store.policy_set(INSTANCE_SESSION, LOGS + "/x") == store.policy_set(INSTANCE_ROLE, LOGS + "/x")
    assert store.principal_context(INSTANCE_SESSION)["aws:PrincipalArn"] == INSTANCE_ROLE


@pytest.mark.parametrize("unknown", [
    f"arn:aws:iam::{ACCOUNT}:role/Nobody",
    f"arn:aws:iam::{ACCOUNT}:role/ImageBuilderInstanceRole",  # the role has a path: its ARN includes it
    f"arn:aws:sts::{ACCOUNT}:assumed-role/Nobody/session",
    "arn:aws:sts::999999999999:assumed-role/ImageBuilderRole/session",  # same name, another account
    "arn:aws:sts::not-an-account:assumed-role/ImageBuilderRole/session",
])
def test_unknown_principal_has_no_policy_set_and_is_denied(store, unknown):
    assert store.policy_set(unknown, IMAGE) is None
    assert store.principal_context(unknown) == {}
    if unknown.split(":")[4].isdigit():
        decision = CompiledStore(store).evaluate(Request.create(unknown, "imagebuilder:GetImage", IMAGE))
        assert (decision.decision, decision.decided_by) == (IMPLICIT, "principal")
        assert unknown in decision.reason and "not in the policy store" in decision.reason


def test_bucket_policy_governs_its_objects(store):
    assert store.policy_set(INSTANCE_ROLE, LOGS + "/build/1.log").resource.name == LOGS
    assert store.policy_set(INSTANCE_ROLE, LOGS).resource.name == LOGS
    assert store.policy_set(INSTANCE_ROLE, "arn:aws:s3:::other-bucket/key").resource is None


def test_principal_context(store):
    assert store.principal_context(ALICE) == {
        "aws:PrincipalArn": ALICE, "aws:PrincipalAccount": ACCOUNT, "aws:username": "alice",
        "aws:PrincipalType": "User", "aws:PrincipalIsAWSService": "false", "aws:PrincipalTag/team": "imaging",
        "aws:PrincipalOrgID": "o-exampleorg1",
        "aws:PrincipalOrgPaths": ["o-exampleorg1/r-ex12/ou-ex12-workloads/"],
    }
    assert "aws:username" not in store.principal_context(BUILDER)
    assert store.principal_context(INSTANCE_SESSION)["aws:PrincipalType"] == "AssumedRole"
    assert store.facts(ALICE)["aws:principalorgpaths"] == ("o-exampleorg1/r-ex12/ou-ex12-workloads/",)
    assert store.facts(f"arn:aws:iam::{ACCOUNT}:user/mallory") is None


def test_example_decisions(store):
    engine = CompiledStore(store)

    def decide(principal, action, resource, region="us-east-1"):
        context = {"aws:RequestedRegion": region, **store.principal_context(principal)}
        return engine.evaluate(Request.create(principal, action, resource, context))

    assert decide(ALICE, "imagebuilder:GetImage", IMAGE).decision is ALLOW
    boundary = decide(ALICE, "imagebuilder:CreateImage", IMAGE)
    assert (boundary.decision, boundary.decided_by) == (IMPLICIT, "permissions_boundary")
    assert decide(BUILDER, "imagebuilder:CreateImage", IMAGE).decision is ALLOW
    region = decide(BUILDER, "imagebuilder:CreateImage", IMAGE, region="ap-south-1")
    assert (region.decision, region.decided_by) == (EXPLICIT, "scp[0]")
    logs = decide(INSTANCE_SESSION, "s3:PutObject", LOGS + "/build/1.log")
    assert (logs.decision, logs.decided_by) == (ALLOW, "resource")


def statement(effect, action, **extra):
    return {"Version": "2012-10-17", "Statement": [{"Effect": effect, "Action": action, "Resource": "*", **extra}]}


ORGANISED = {
    "principals": [
        {"arn": "arn:aws:iam::111111111111:role/app", "inline_policies": {"S3": statement("Allow", "s3:*")}},
        {"arn": "arn:aws:iam::333333333333:role/outsider", "inline_policies": {"S3": statement("Allow", "s3:*")}},
    ],
    "scps": [{"name": "FullAWSAccess", "document": statement("Allow", "*")},
             {"name": "DenyLeaving", "document": statement("Deny", "organizations:LeaveOrganization")}],
    "rcps": [{"name": "DenyOutsiders", "document": statement("Deny", "s3:*", Principal="*", Condition={
        "StringNotEqualsIfExists": {"aws:PrincipalOrgID": "o-aaaaaaaaaa"}})}],
    "organization": {"id": "o-aaaaaaaaaa", "root": {"id": "r-aaaa", "scps": ["FullAWSAccess"], "children": [
        {"id": "ou-aaaa-prod0000", "rcps": ["DenyOutsiders"], "children": [
            {"id": "111111111111", "scps": ["FullAWSAccess", "DenyLeaving"]}]},
        {"id": "222222222222"},
    ]}},
}


def test_organisation_levels_skip_targets_without_policies_and_rcps_follow_the_resource_owner():
    organised = PolicyStore.from_json(json.dumps(ORGANISED))
    app, outsider, data = "arn:aws:iam::111111111111:role/app", "arn:aws:iam::333333333333:role/outsider", \
        "arn:aws:s3:::data/x"
    own = organised.policy_set(app, data)
    assert [names(level) for level in own.scp] == [["scp/FullAWSAccess"], ["scp/FullAWSAccess", "scp/DenyLeaving"]]
    assert [names(level) for level in own.rcp] == [["rcp/RCPFullAWSAccess", "rcp/DenyOutsiders"]]
    assert organised.policy_set(app, data, resource_account="222222222222").rcp is None
    from_outside = organised.policy_set(outsider, data, resource_account="111111111111")
    assert from_outside.scp is None and len(from_outside.rcp) == 1
    assert "aws:PrincipalOrgID" not in organised.principal_context(outsider)

    engine = CompiledStore(organised)
    for principal, want in ((app, ALLOW), (outsider, EXPLICIT)):
        request = Request.create(principal, "s3:GetObject", data, organised.principal_context(principal),
                                 resource_account="111111111111")
        decision = engine.evaluate(request)
        assert decision.decision is want
        assert decision == reference.evaluate(organised.policy_set(principal, data, "111111111111"), request)
    assert engine.evaluate(Request.create(app, "organizations:LeaveOrganization", "*")).decided_by == "scp[1]"


# -- the account export -----------------------------------------------------------------------------


def test_export_loads_users_groups_roles_and_policies(exported):
    bob = exported.principals[BOB]
    assert (bob.group_names, bob.permissions_boundary_arn, dict(bob.tags)) == \
        (("ops",), f"arn:aws:iam::{EXPORTED}:policy/DeveloperBoundary", {"team": "platform"})
    deploy = exported.principals[DEPLOY]
    assert (deploy.kind, deploy.name, deploy.managed_policy_arns) == ("role", "deploy", (DEPLOY_ARTIFACTS,))
    assert names(exported.policy_set(BOB, "*").identity) == [
        "user/bob:inline/ManageOwnAccessKeys", "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess",
        "group/ops:inline/DescribeInstances", DEPLOY_ARTIFACTS,
    ]
    assert exported.policy_set(BOB, DEPLOY).resource.name == DEPLOY  # the trust policy
    assert exported.organization is None


def test_export_decisions(exported):
    engine = CompiledStore(exported)

    def decide(principal, action, resource, **context):
        request = Request.create(principal, action, resource, {**exported.principal_context(principal), **context})
        decision = engine.evaluate(request)
        assert decision == reference.evaluate(exported.policy_set(principal, resource), request)
        return decision

    assert decide(BOB, "sts:AssumeRole", DEPLOY).decision is ALLOW  # the trust policy names bob
    assert decide(BOB, "sts:AssumeRole", CANARY).decision is IMPLICIT
    deleted = decide(DEPLOY, "s3:DeleteObject", "arn:aws:s3:::example-artifacts/app.zip")
    assert str(deleted.statements[0]) == f"Deny {DEPLOY_ARTIFACTS}#1 (NoDeletes)"  # the default version, v2
    assert decide(DEPLOY, "s3:ListBucket", "arn:aws:s3:::example-artifacts").decision is IMPLICIT  # not v1's s3:*
    assert decide(BOB, "iam:CreateAccessKey", BOB).decision is ALLOW  # ${aws:username} from the store
    assert decide(BOB, "ec2:DescribeInstances", "*").decision is ALLOW  # aws:PrincipalTag/team from the store


def test_export_names_each_missing_aws_managed_policy():
    with pytest.raises(StoreError) as raised:
        load_account_export(EXPORT)
    assert raised.value.source == str(EXPORT)
    [finding] = raised.value.findings
    assert (finding.code, finding.pointer) == ("S002", "/UserDetailList/0/AttachedManagedPolicies/0/PolicyArn")
    assert "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess" in str(raised.value)


def test_export_takes_aws_managed_policies_from_a_folder(tmp_path):
    (tmp_path / "s3-read-only.json").write_text(json.dumps({
        "arn": "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess",
        "document": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:Get*",
                                                             "Resource": "*"}]},
    }))
    assert BOB in load_account_export(EXPORT, tmp_path).principals


@pytest.mark.parametrize("change, pointer", [
    (lambda export: export.update(IsTruncated=True), "/IsTruncated"),
    (lambda export: export["Policies"][0]["PolicyVersionList"][0].update(IsDefaultVersion=False),
     "/Policies/0/PolicyVersionList"),
    (lambda export: export["RoleDetailList"][0].update(AssumeRolePolicyDocument="%7B%22Version"),
     "/RoleDetailList/0/AssumeRolePolicyDocument"),
    (lambda export: export["UserDetailList"][0].pop("Arn"), "/UserDetailList/0/Arn"),
])
def test_malformed_export_is_located(tmp_path, change, pointer):
    export = json.loads(EXPORT.read_text())
    change(export)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    with pytest.raises(StoreError) as raised:
        load_account_export(path, require(CORPUS / "aws_managed_policies.jsonl"))
    assert raised.value.source == str(path) and raised.value.findings[0].pointer == pointer


# -- the compiled store against the reference ---------------------------------------------------------


def requests_for(store: PolicyStore, principals, actions, resources, regions) -> list[Request]:
    requests = []
    for principal, action, resource, region in product(principals, actions, resources, regions):
        context = dict(store.principal_context(principal))
        if region:
            context.update({"aws:RequestedRegion": region, "aws:SecureTransport": region != "eu-west-1"})
        requests.append(Request.create(principal, action, resource, context))
    return requests


EXAMPLE_REQUESTS = dict(
    principals=[BUILDER, INSTANCE_ROLE, INSTANCE_SESSION, ALICE, f"arn:aws:iam::{ACCOUNT}:user/mallory"],
    actions=["imagebuilder:GetImage", "imagebuilder:CreateImage", "imagebuilder:ListImages", "ec2:RunInstances",
             "s3:PutObject", "s3:GetObject", "s3:ListBucket", "iam:PassRole", "iam:GetRole", "ssm:SendCommand",
             "ecr:BatchGetImage", "sns:Publish", "kms:Decrypt", "sts:AssumeRole"],
    resources=["*", LOGS, LOGS + "/build/1.log", "arn:aws:s3:::other-bucket/key", IMAGE,
               IMAGE.replace("us-east-1", "ap-south-1"), INSTANCE_ROLE,
               f"arn:aws:sns:us-east-1:{ACCOUNT}:imagebuilder-notifications",
               f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0abc123"],
    regions=[None, "us-east-1", "eu-west-1", "ap-south-1"],
)
EXPORT_REQUESTS = dict(
    principals=[BOB, DEPLOY, CANARY, f"arn:aws:sts::{EXPORTED}:assumed-role/deploy/build-7"],
    actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "ec2:DescribeInstances",
             "iam:CreateAccessKey", "iam:ListAccessKeys", "sts:AssumeRole", "ec2:RunInstances"],
    resources=["*", "arn:aws:s3:::example-artifacts/app.zip", "arn:aws:s3:::example-artifacts", DEPLOY, CANARY,
               BOB, f"arn:aws:iam::{EXPORTED}:user/carol"],
    regions=[None, "us-east-1"],
)


def assert_same(expected, got, where):
    assert (got.decision, got.decided_by, got.statements, got.reason) == \
        (expected.decision, expected.decided_by, expected.statements, expected.reason), where
    assert {k.lower() for k in got.missing_keys} == {k.lower() for k in expected.missing_keys}, where


@pytest.mark.parametrize("which", ["example", "export"])
def test_compiled_store_equals_reference(store, exported, which):
    chosen, spec = (store, EXAMPLE_REQUESTS) if which == "example" else (exported, EXPORT_REQUESTS)
    requests = requests_for(chosen, **spec)
    engine = CompiledStore(chosen)
    batch = engine.evaluate_batch(requests, explain=True)
    kinds = set()
    for request, from_batch in zip(requests, batch, strict=True):
        where = (request.principal, request.action, request.resource, dict(request.context))
        policy_set = chosen.policy_set(request.principal, request.resource)
        if policy_set is None:
            assert (from_batch.decision, from_batch.decided_by) == (IMPLICIT, "principal"), where
            continue
        want = reference.evaluate(policy_set, request)
        assert_same(want, engine.evaluate(request), where)
        assert_same(want, from_batch, where)
        kinds.add(want.decision)
    assert kinds == {ALLOW, IMPLICIT, EXPLICIT}, "the requests should reach every kind of decision"


def test_every_policy_in_use_is_compiled_once_and_principals_share_identities(exported):
    engine = CompiledStore(exported)
    in_use = exported.policies_in_use()
    stats = engine.get_stats()
    assert stats["policies"] == len(in_use) == len({id(p) for p in in_use})
    assert stats["statements"] == sum(len(p.statements) for p in in_use)
    # deploy and deploy-canary attach the very same policies: one identity for the two
    assert (stats["principals"], stats["identities"]) == (len(exported.principals), len(exported.principals) - 1)
    unattached = set(exported.managed_policies) - {p.name for p in in_use}
    assert all(exported.managed_policies[arn] not in in_use for arn in unattached)


def test_an_explained_batch_shares_a_decision_only_between_rows_that_decide_alike():
    """Rows whose applicable statements are the same but stand in other layers (a policy that is also the
    boundary, a boundary that does not allow) each get their own explanation, whatever their order."""
    read, other = "arn:aws:iam::111111111111:policy/Read", "arn:aws:iam::111111111111:policy/Other"
    only, twice, limited = (f"arn:aws:iam::111111111111:role/{name}" for name in ("only", "twice", "limited"))
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
    snapshot = {
        "managed_policies": [
            {"arn": read, "document": {"Version": "2012-10-17", "Statement": [statement]}},
            {"arn": other, "document": {"Version": "2012-10-17", "Statement": [{**statement, "Action": "s3:Put*"}]}}],
        "principals": [{"arn": only, "managed_policies": [read]},
                       {"arn": twice, "managed_policies": [read], "permissions_boundary": read},
                       {"arn": limited, "managed_policies": [read], "permissions_boundary": other}],
    }
    engine = CompiledStore(PolicyStore.from_json(json.dumps(snapshot)))
    principals = [only, twice, limited, twice, only, limited]
    decided = engine.evaluate_columns(principals, ["s3:GetObject"] * 6, ["arn:aws:s3:::b/k"] * 6, explain=True)
    want = {only: (ALLOW, "identity", [(read, 0)]), twice: (ALLOW, "identity", [(read, 0), (read, 0)]),
            limited: (IMPLICIT, "permissions_boundary", [(read, 0)])}
    assert [(d.decision, d.decided_by, [(s.policy, s.index) for s in d.statements]) for d in decided] == \
        [want[principal] for principal in principals]


# -- snapshots -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["example", "export"])
def test_snapshot_round_trip(store, exported, which):
    original = store if which == "example" else exported
    copy = PolicyStore.from_json(original.to_json())
    assert copy.to_json() == original.to_json()
    assert copy.principals == original.principals and copy.organization == original.organization
    for principal in original.principals:
        assert copy.policy_set(principal, LOGS) == original.policy_set(principal, LOGS)


# -- bad input -------------------------------------------------------------------------------------------


def edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def inline_effect(group):
    group["inline_policies"]["ReadBuildLogs"]["Statement"][0]["Effect"] = "Allw"
    group["inline_policies"]["ReadBuildLogs"]["Statement"][0]["Action"] = ["s3 GetObject"]


BAD_STORES = [
    ("principals/alice.json", lambda path: path.write_text('{"arn": "arn:aws:iam::111122223333:user/alice",'),
     "E001", ""),
    ("groups/developers.json", lambda path: edit(path, inline_effect),
     "E010", "/inline_policies/ReadBuildLogs/Statement/0/Effect"),
    ("managed_policies/ImageBuilderReadOnlyBoundary.json",
     lambda path: edit(path, lambda entry: entry["document"].pop("Statement")), "E006", "/document"),
    ("principals/alice.json", lambda path: edit(path, lambda entry: entry["managed_policies"].append(
        "arn:aws:iam::aws:policy/NoSuchPolicy")), "S002", "/managed_policies/1"),
    ("principals/alice.json", lambda path: edit(path, lambda entry: entry.update(groups=["admins"])),
     "S002", "/groups/0"),
    ("principals/alice.json", lambda path: edit(path, lambda entry: entry.update(
        permissions_boundary="arn:aws:iam::111122223333:policy/Missing")), "S002", "/permissions_boundary"),
    ("principals/alice2.json", lambda path: shutil.copy(path.with_name("alice.json"), path), "S003", "/arn"),
    ("principals/ImageBuilderRole.json", lambda path: edit(path, lambda entry: entry.update(groups=["developers"])),
     "S001", "/groups"),
    ("principals/ImageBuilderRole.json", lambda path: edit(path, lambda entry: entry.update(
        manged_policies=[])), "S001", "/manged_policies"),
    ("principals/ImageBuilderRole.json", lambda path: edit(path, lambda entry: entry.update(
        arn="arn:aws:iam::111122223333:instance-profile/x")), "S001", "/arn"),
    ("organization.json", lambda path: edit(path, lambda org: org["root"]["children"][0].update(id="sandbox")),
     "S004", "/root/children/0/id"),
    ("organization.json", lambda path: edit(path, lambda org: org["root"]["children"][0]["children"][0].update(
        children=[{"id": "ou-ex12-nested000"}])), "S004", "/root/children/0/children/0/children"),
    ("organization.json", lambda path: edit(path, lambda org: org["root"].update(scps=["FullAWSAccess", "Nope"])),
     "S002", "/root/scps/1"),
    ("resource_policies/example-imagebuilder-logs.json", lambda path: edit(
        path, lambda entry: entry["document"]["Statement"][0].pop("Principal")), "E019", "/document/Statement/0"),
    ("polices/extra.json", lambda path: path.write_text("{}"), "S001", ""),
]


@pytest.mark.parametrize("relative, change, code, pointer", BAD_STORES, ids=[f"{r} {c}" for r, _, c, _ in BAD_STORES])
def test_bad_store_names_the_file_and_the_finding(tmp_path, relative, change, code, pointer):
    root = tmp_path / "store"
    shutil.copytree(EXAMPLE_STORE, root)
    path = root / relative
    path.parent.mkdir(exist_ok=True)
    change(path)
    with pytest.raises(StoreError) as raised:
        PolicyStore.from_directory(root)
    error = raised.value
    assert Path(error.source) in (path, path.parent), str(error)
    assert (code, pointer) in {(f.code, f.pointer) for f in error.findings}, str(error)
    assert error.source in str(error)


def test_a_bad_file_carries_all_its_findings(tmp_path):
    root = tmp_path / "store"
    shutil.copytree(EXAMPLE_STORE, root)
    edit(root / "groups" / "developers.json", inline_effect)
    with pytest.raises(StoreError) as raised:
        PolicyStore.from_directory(root)
    assert {f.pointer for f in raised.value.findings} >= {
        "/inline_policies/ReadBuildLogs/Statement/0/Effect", "/inline_policies/ReadBuildLogs/Statement/0/Action/0"}


@pytest.mark.parametrize("snapshot, source, pointer", [
    ("{", "snapshot", ""),
    ('{"principals": {}}', "snapshot", "/principals"),
    ('{"policies": []}', "snapshot", "/policies"),
    ('{"principals": [{"arn": "arn:aws:iam::111122223333:role/x", "groups": [1]}]}',
     "snapshot /principals/0", "/groups/0"),
])
def test_bad_snapshot_is_located(snapshot, source, pointer):
    with pytest.raises(StoreError) as raised:
        PolicyStore.from_json(snapshot)
    assert raised.value.source == source and raised.value.findings[0].pointer == pointer


# -- what the store knows of a principal joins each request's context ---------------------------------------


@pytest.mark.parametrize("form", ["per request", "columns"])
@pytest.mark.parametrize("which", ["example", "export"])
def test_store_context_is_added_to_requests_that_lack_it(store, exported, which, form):
    """Requests that carry no principal keys are decided as if they did: the store sets
    aws:PrincipalTag/…, aws:PrincipalArn and the rest, whatever the request says of them."""
    chosen, spec = (store, EXAMPLE_REQUESTS) if which == "example" else (exported, EXPORT_REQUESTS)
    with_known = requests_for(chosen, **spec)
    engine = CompiledStore(chosen)
    forged = {"aws:PrincipalTag/team": "forged", "aws:PrincipalArn": "arn:aws:iam::999999999999:role/forged"}
    contexts = [{**{k: v for k, v in r.context.items() if not k.startswith(("aws:principal", "aws:username"))},
                 **forged} for r in with_known]
    if form == "columns":
        keys = {key for context in contexts for key in context}
        contexts = {key: [context.get(key) for context in contexts] for key in keys}
    decided = engine.evaluate_columns([r.principal for r in with_known], [r.action for r in with_known],
                                      [r.resource for r in with_known], contexts, explain=True)
    for request, got in zip(with_known, decided, strict=True):
        where = (request.principal, request.action, request.resource)
        policy_set = chosen.policy_set(request.principal, request.resource)
        if policy_set is None:
            assert got.decided_by == "principal", where
            continue
        want = reference.evaluate(policy_set, request)
        assert_same(want, got, where)
    if which == "export":  # its policies test principal keys: the store's values decided, not the forged ones
        assert set(exported.facts(BOB)) & set(engine.key_ids), "the export's policies should test a principal key"


def test_columns_and_requests_agree_when_rows_mix_principals_and_resources(store):
    requests = requests_for(store, **EXAMPLE_REQUESTS)[::7]
    engine = CompiledStore(store)
    columns = engine.evaluate_columns([r.principal for r in requests], [r.action for r in requests],
                                      [r.resource for r in requests], [r.context for r in requests])
    explained = engine.evaluate_batch(requests, explain=True)
    assert [str(kind) for kind in columns] == [str(d.decision) for d in explained]
    assert set(columns.errors) == {i for i, d in enumerate(explained) if d.error}
