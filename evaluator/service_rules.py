"""The IAM rules AWS documents per service or per kind of caller, outside the generic algorithm.

Each rule is data plus a small function; ``decision.combine`` (and its C twin in
``_engine``) applies them. The engine reads the flags of each distinct action and
resource of a batch from ``action_flags`` and ``resource_kind``, so every path
(reference, compiled, store, service, batch jobs) decides by these definitions.
"""
from __future__ import annotations

ANONYMOUS = "anonymous"
"""The principal of a request that no credentials signed (public S3 reads, public SQS/SNS)."""

SOURCE_VPCE = "aws:sourcevpce"
"""The context key (lower case) naming the VPC endpoint a request came through: it selects the endpoint's
policy in a store."""

ALWAYS_ALLOWED = frozenset({"sts:getcalleridentity"})
"""AWS STS API reference, GetCallerIdentity: "No permissions are required to perform this
operation. If an administrator attaches a policy to your identity that explicitly denies
access to the sts:GetCallerIdentity action, you can still perform this operation.\""""

TRUST_ACTIONS = frozenset({"sts:assumerole", "sts:assumerolewithsaml", "sts:assumerolewithwebidentity",
                           "sts:tagsession", "sts:setsourceidentity", "sts:setcontext"})
"""Actions on a role that its trust policy must allow (IAM User Guide, policy evaluation logic:
"IAM role trust policies and KMS key policies are exceptions to this logic, because they must
explicitly allow access for principals.")."""

RCP_SERVICES = frozenset({"s3", "sts", "kms", "sqs", "secretsmanager",
                          "ecr", "aoss", "cognito-idp", "logs", "dynamodb"})
RCP_SERVICES_READ = "2026-12-06"
"""Service prefixes whose resources RCPs apply to (AWS Organizations User Guide, resource control
policies: "RCPs apply to resources of the following AWS services"). The first five are the
launch list, as AWS Control Tower's RCP reference also gives it; ECR, OpenSearch Serverless,
Cognito user pools, CloudWatch Logs and DynamoDB were added in 2025. Read on the date above;
when AWS extends the list, extend it here."""

# Flags of an action (``action_flags``); the engine reads the same numbers.
ALWAYS = 1                 # allowed whatever the policies say
RCP_APPLIES = 2            # RCPs apply to the action's service
MUST_ALLOW_SHIFT = 2       # bits 2-3: the kind of resource whose own policy must allow the action
ROLE = 1                   # an IAM role: its trust policy
KMS_KEY = 2                # a KMS key: its key policy

LIMITED_BY_BOUNDARY = frozenset({ROLE})
"""Kinds whose policy grants only within the caller's permissions boundary and session policy, even
where it names the caller's own ARN (IAM User Guide, troubleshooting IAM roles: "If a user is listed
as the principal in a role's trust policy but cannot assume the role, check the user's permissions
boundary. If a permissions boundary is set for the user, then it must allow the sts:AssumeRole
action.")."""

RULE_NAMES = {ROLE: "trust_policy", KMS_KEY: "key_policy"}
"""How decisions name the layer a resource-must-allow rule denies in."""

RULE_REASONS = {
    ROLE: "a role's trust policy must explicitly allow the caller (IAM role trust policies must "
          "explicitly allow access for principals, also within the account)",
    KMS_KEY: "a KMS key's policy must allow the caller, or allow its account so that IAM policies "
             "count (KMS key policies must explicitly allow access for principals)",
}


def action_flags(action: str) -> int:
    """The rules that concern an action (case-insensitive, as actions match)."""
    action = action.lower()
    service = action.partition(":")[0]
    flags = ALWAYS if action in ALWAYS_ALLOWED else 0
    if service in RCP_SERVICES:
        flags |= RCP_APPLIES
    if action in TRUST_ACTIONS:
        flags |= ROLE << MUST_ALLOW_SHIFT
    elif service == "kms":
        flags |= KMS_KEY << MUST_ALLOW_SHIFT
    return flags


RESOURCE_KINDS = (("iam", "role/", ROLE), ("kms", "key/", KMS_KEY))
"""(service of the ARN, start of its resource part, kind): the resources whose own policy may have to allow.
The engine matches the same table in C, once per distinct resource of a batch."""


def resource_kind(resource: str) -> int:
    """The kind (``RESOURCE_KINDS``) of a resource ARN, else 0."""
    parts = resource.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        return 0
    return next((kind for service, start, kind in RESOURCE_KINDS
                 if parts[2] == service and parts[5].startswith(start)), 0)


def must_allow(flags: int, kind: int) -> int:
    """The resource kind whose own policy must allow this request (0: none): the action needs it and
    the resource is of that kind."""
    needed = (flags >> MUST_ALLOW_SHIFT) & 3
    return needed if needed and needed == kind else 0
