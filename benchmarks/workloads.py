"""Workloads for the benchmarks: policy sets and request streams, deterministic by seed.

* seed: the six EC2 Image Builder managed policies (``examples/policies``) plus a
  guard-rail Deny policy, and a request stream of their actions and neighbours
  with ARNs that do and do not fit their patterns and the context keys their
  conditions test (allows, implicit denies, explicit denies).
* synthetic: N statements as in a real account: each names a few actions of
  one service on resources of its own, so any one request matches only a few
  statements whatever N is.
* corpus: every AWS managed policy (``../shared/corpus``) as one policy set,
  and the corpus's sample request stream.
"""
from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

from iam_evaluator import PolicySet, Request, RequestError, parse_policy

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "policies"
CORPUS = REPO.parent / "shared" / "corpus"
ACCOUNT = "111122223333"
OTHER = "444455556666"
REGIONS = ["us-east-1", "us-east-1", "eu-west-1", "ap-southeast-2"]

GUARD_RAILS = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "DenyOutsideRegions", "Effect": "Deny", "NotAction": ["iam:*", "sts:*", "s3:ListAllMyBuckets"],
         "Resource": "*", "Condition": {"StringNotEquals": {"aws:RequestedRegion": ["us-east-1", "eu-west-1"]}}},
        {"Sid": "DenyInsecureS3", "Effect": "Deny", "Action": "s3:*", "Resource": "*",
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        {"Sid": "DenyPassRoleToOthers", "Effect": "Deny", "Action": "iam:PassRole", "Resource": "*",
         "Condition": {"StringNotEqualsIfExists": {"iam:PassedToService": ["ec2.amazonaws.com",
                                                                            "vmie.amazonaws.com"]}}},
    ],
}


def seed_policy_set() -> PolicySet:
    identity = [parse_policy(path.read_text(), name=path.name) for path in sorted(EXAMPLES.glob("*.json"))]
    identity.append(parse_policy(GUARD_RAILS, name="guard-rails"))
    return PolicySet(identity=tuple(identity))


# (action, resource templates) the seed requests draw from: the policies' own and their neighbours.
_SEED_ACTIONS = [
    ("imagebuilder:GetImage", ["arn:aws:imagebuilder:{region}:{account}:image/{name}/1.0.0/1"]),
    ("imagebuilder:ListImages", ["*"]),
    ("imagebuilder:CreateImage", ["arn:aws:imagebuilder:{region}:{account}:image-recipe/{name}/1.0.0"]),
    ("imagebuilder:GetComponent", ["arn:aws:imagebuilder:{region}:{account}:component/{name}/1.0.0/1"]),
    ("imagebuilder:DeleteImage", ["arn:aws:imagebuilder:{region}:{account}:image/{name}/1.0.0/1"]),
    ("ec2:RunInstances", ["arn:aws:ec2:{region}::image/ami-{hex}", "arn:aws:ec2:{region}:{account}:instance/i-{hex}",
                          "arn:aws:ec2:{region}:{account}:volume/vol-{hex}",
                          "arn:aws:ec2:{region}:{account}:subnet/s-{hex}",
                          "arn:aws:ec2:{region}:{account}:network-interface/eni-{hex}"]),
    ("ec2:DescribeImages", ["*"]),
    ("ec2:CreateTags", ["arn:aws:ec2:{region}::image/ami-{hex}", "arn:aws:ec2:{region}::snapshot/snap-{hex}",
                        "arn:aws:ec2:{region}:{account}:instance/i-{hex}"]),
    ("ec2:TerminateInstances", ["arn:aws:ec2:{region}:{account}:instance/i-{hex}"]),
    ("ec2:DeleteVolume", ["arn:aws:ec2:{region}:{account}:volume/vol-{hex}"]),
    ("ec2:ExportImage", ["arn:aws:ec2:{region}::image/ami-{hex}"]),
    ("iam:PassRole", ["arn:aws:iam::{account}:role/{name}", "arn:aws:iam::{account}:instance-profile/{name}"]),
    ("iam:GetRole", ["arn:aws:iam::{account}:role/aws-service-role/imagebuilder.amazonaws.com/"
                     "AWSServiceRoleForImageBuilder", "arn:aws:iam::{account}:role/{name}"]),
    ("iam:CreateServiceLinkedRole", ["arn:aws:iam::{account}:role/aws-service-role/ssm.amazonaws.com/x"]),
    ("sns:Publish", ["arn:aws:sns:{region}:{account}:{name}"]),
    ("s3:GetObject", ["arn:aws:s3:::{bucket}/logs/{hex}.txt"]),
    ("s3:ListBucket", ["arn:aws:s3:::{bucket}"]),
    ("s3:PutObject", ["arn:aws:s3:::{bucket}/out/{hex}"]),
    ("kms:Decrypt", ["arn:aws:kms:{region}:{account}:key/{hex}"]),
    ("kms:CreateGrant", ["arn:aws:kms:{region}:{account}:key/{hex}"]),
    ("logs:PutLogEvents", ["arn:aws:logs:{region}:{account}:log-group:/aws/imagebuilder/{name}:log-stream:{hex}",
                           "arn:aws:logs:{region}:{account}:log-group:/app/{name}:log-stream:{hex}"]),
    ("ssm:SendCommand", ["arn:aws:ssm:{region}::document/AWS-RunShellScript",
                         "arn:aws:ec2:{region}:{account}:instance/i-{hex}"]),
    ("ssm:StartAutomationExecution", ["arn:aws:ssm:{region}:{account}:automation-definition/ImageBuilder{name}:1"]),
    ("sts:AssumeRole", ["arn:aws:iam::{account}:role/EC2ImageBuilderDistributionCrossAccountRole"]),
    ("license-manager:ListLicenseConfigurations", ["*"]),
]
_NAMES = ["my-imagebuilder-pipeline", "web-server", "imagebuilder-base", "ci-runner", "golden-ami"]
_BUCKETS = ["ec2imagebuilder-logs", "my-imagebuilder-bucket", "company-data"]
_PRINCIPALS = [f"arn:aws:iam::{ACCOUNT}:role/ImageBuilderRole",
               f"arn:aws:sts::{ACCOUNT}:assumed-role/EC2InstanceProfileForImageBuilder/i-0abc",
               f"arn:aws:iam::{ACCOUNT}:user/builder"]


def _seed_context(action: str, rng: random.Random) -> dict:
    context: dict = {"aws:RequestedRegion": rng.choice(REGIONS),
                     "aws:SecureTransport": "true" if rng.random() < 0.9 else "false"}
    service = action.split(":")[0]
    if action == "iam:PassRole" and rng.random() < 0.8:
        context["iam:PassedToService"] = rng.choice(["ec2.amazonaws.com", "vmie.amazonaws.com", "lambda.amazonaws.com"])
    if service == "ec2":
        if rng.random() < 0.6:
            context["aws:RequestTag/CreatedBy"] = rng.choice(["EC2 Image Builder", "EC2 Fast Launch", "someone"])
        if rng.random() < 0.6:
            context["ec2:ResourceTag/CreatedBy"] = rng.choice(["EC2 Image Builder", "someone"])
        if action == "ec2:CreateTags":
            context["ec2:CreateAction"] = rng.choice(["RunInstances", "CreateImage", "CreateVolume"])
    if service == "kms":
        context["kms:ViaService"] = rng.choice(["ec2.us-east-1.amazonaws.com", "s3.us-east-1.amazonaws.com"])
        context["kms:EncryptionContextKeys"] = rng.choice([["aws:ebs:id"], ["aws:imagebuilder:arn"], []])
        context["aws:CalledVia"] = rng.choice([["imagebuilder.amazonaws.com"], ["ec2.amazonaws.com"]])
        context["kms:GrantIsForAWSResource"] = rng.choice(["true", "false"])
    if service == "ssm":
        context["ssm:resourceTag/CreatedBy"] = "EC2 Image Builder"
    if action == "iam:CreateServiceLinkedRole":
        context["iam:AWSServiceName"] = rng.choice(["ssm.amazonaws.com", "imagebuilder.amazonaws.com"])
    return context


def seed_requests(n: int, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        action, templates = rng.choice(_SEED_ACTIONS)
        resource = rng.choice(templates).format(
            region=rng.choice(REGIONS), account=ACCOUNT, name=rng.choice(_NAMES), bucket=rng.choice(_BUCKETS),
            hex=f"{rng.getrandbits(40):010x}")
        requests.append(Request.create(rng.choice(_PRINCIPALS), action, resource, _seed_context(action, rng)))
    return requests


# --- synthetic scale ---------------------------------------------------------

_SYNTHETIC_SERVICES = {
    "s3": ("arn:aws:s3:::bucket-{i}/*", ["GetObject", "PutObject", "DeleteObject", "GetObjectTagging"]),
    "dynamodb": ("arn:aws:dynamodb:us-east-1:{account}:table/table-{i}", ["GetItem", "PutItem", "Query", "Scan"]),
    "sqs": ("arn:aws:sqs:us-east-1:{account}:queue-{i}", ["SendMessage", "ReceiveMessage", "DeleteMessage"]),
    "sns": ("arn:aws:sns:us-east-1:{account}:topic-{i}", ["Publish", "Subscribe"]),
    "lambda": ("arn:aws:lambda:us-east-1:{account}:function:fn-{i}", ["InvokeFunction", "GetFunction"]),
    "kms": ("arn:aws:kms:us-east-1:{account}:key/key-{i}", ["Decrypt", "Encrypt", "GenerateDataKey"]),
    "logs": ("arn:aws:logs:us-east-1:{account}:log-group:/app/group-{i}:*", ["PutLogEvents", "CreateLogStream"]),
    "secretsmanager": ("arn:aws:secretsmanager:us-east-1:{account}:secret:secret-{i}-*", ["GetSecretValue"]),
}


def synthetic_statement(i: int, rng: random.Random) -> dict:
    service = rng.choice(sorted(_SYNTHETIC_SERVICES))
    template, verbs = _SYNTHETIC_SERVICES[service]
    actions = [f"{service}:{verb}" for verb in rng.sample(verbs, rng.randint(1, len(verbs)))]
    if rng.random() < 0.1:
        actions = [f"{service}:Get*"]
    statement = {"Sid": f"S{i}", "Effect": "Deny" if rng.random() < 0.05 else "Allow", "Action": actions,
                 "Resource": template.format(i=i, account=ACCOUNT)}
    if rng.random() < 0.2:
        statement["Condition"] = {"StringEquals": {"aws:PrincipalTag/team": rng.choice(["web", "data", "ops"])}}
    return statement


def synthetic_policy_set(n_statements: int, seed: int = 7) -> PolicySet:
    """``n_statements`` statements in policies of up to 100 statements each."""
    rng = random.Random(seed)
    statements = [synthetic_statement(i, rng) for i in range(n_statements)]
    policies = tuple(
        parse_policy({"Version": "2012-10-17", "Statement": statements[start:start + 100]},
                     name=f"policy-{start // 100}")
        for start in range(0, n_statements, 100)
    )
    return PolicySet(identity=policies)


def synthetic_requests(n_statements: int, n: int, seed: int = 11) -> list[Request]:
    """Requests aimed at random statements of the synthetic set (hits and near misses)."""
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        i = rng.randrange(n_statements)
        service = rng.choice(sorted(_SYNTHETIC_SERVICES))
        template, verbs = _SYNTHETIC_SERVICES[service]
        resource = template.format(i=i, account=ACCOUNT).replace("*", "obj-1")
        context = {"aws:PrincipalTag/team": rng.choice(["web", "data", "ops"])}
        requests.append(Request.create(f"arn:aws:iam::{ACCOUNT}:role/app", f"{service}:{rng.choice(verbs)}",
                                       resource, context))
    return requests


# --- AWS managed policy corpus -----------------------------------------------

@cache
def corpus_documents() -> tuple[tuple[str, dict], ...]:
    with (CORPUS / "aws_managed_policies.jsonl").open() as lines:
        return tuple((entry["name"], entry["document"]) for entry in map(json.loads, lines))


def corpus_policy_set() -> PolicySet:
    return PolicySet(identity=tuple(parse_policy(doc, name=name) for name, doc in corpus_documents()))


def corpus_requests(n: int) -> list[Request]:
    """The first ``n`` usable requests of the corpus sample (a few give one context key twice,
    in two spellings, which a request may not)."""
    requests = []
    with (CORPUS / "requests_sample.jsonl").open() as lines:
        for line in lines:
            if len(requests) == n:
                break
            try:
                requests.append(Request.from_json(json.loads(line)))
            except RequestError:
                continue
    return requests


def requests_table(requests: list[Request]):
    """Requests as an Arrow table: the input of the Arrow API and of batch jobs (context as a struct;
    a key given as a list anywhere is a list column)."""
    import pyarrow as pa

    keys = sorted({key for r in requests for key in r.context})
    lists = {key for r in requests for key, value in r.context.items() if not isinstance(value, str)}
    context = pa.StructArray.from_arrays(
        [pa.array([None if key not in r.context else list(r.context[key]) if key in lists else r.context[key]
                   for r in requests], pa.list_(pa.string()) if key in lists else pa.string()) for key in keys],
        names=keys) if keys else pa.array([{}] * len(requests), pa.struct([]))
    return pa.table({"principal": [r.principal for r in requests], "action": [r.action for r in requests],
                     "resource": [r.resource for r in requests],
                     "resource_account": [r.resource_account for r in requests], "context": context})
