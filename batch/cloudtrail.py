"""One CloudTrail record → the request IAM authorized, so recorded activity can be replayed against policies.

CloudTrail says who called which operation on what; IAM decided a principal, an action, a resource and a
request context. The mapping:

* **action**: the ``eventSource`` host ``<service>.amazonaws.com`` gives the service prefix, except where the
  host and the IAM prefix differ (``SERVICE_PREFIXES``: ``monitoring`` → ``cloudwatch``, ``email`` → ``ses``,
  ``tagging`` → ``tag``, ``pinpoint`` → ``mobiletargeting``, ``cloudcontrolapi`` → ``cloudformation``);
  ``eventName`` gives the action, without the API-version suffix Lambda and CloudFront append
  (``CreateFunction20150331v2``), and renamed where IAM authorizes the operation under another action
  (``ACTION_NAMES``: S3's ``ListObjects`` is ``s3:ListBucket``, ``HeadObject`` is ``s3:GetObject``,
  multipart uploads are ``s3:PutObject``; Lambda's ``Invoke`` is ``lambda:InvokeFunction``).
* **principal**, from ``userIdentity``: an IAM user's ARN; a role session's
  ``arn:aws:sts::<account>:assumed-role/<role>/<session>``; a federated user's ARN;
  ``arn:aws:iam::<account>:root``. Calls by an AWS service itself, anonymous calls, and callers IAM does not
  know as principals (an ``AWSAccount`` seen only by its id, SAML or web-identity users before they assume a
  role, Identity Center users) raise ``UnmappableRecord`` ("cannot be evaluated as an IAM principal").
* **resource**: the first ``resources[].ARN``; else an ARN from well-known request parameters (S3
  ``bucketName`` and ``key``, an SQS ``queueUrl``, else the first ``…Arn``/``…ARN`` parameter holding an ARN);
  else ``"*"`` with ``resource_fallback`` set.
* **resource_account**: none when the ARN names its account (the evaluator reads it there) or for ``"*"``;
  for ARNs without an account (S3) the ``resources[].accountId``, else ``recipientAccountId``.
* **context**:

  ======================================  =================================================================
  ``aws:CurrentTime``, ``aws:EpochTime``  ``eventTime``
  ``aws:SourceIp``                        ``sourceIPAddress`` when it is an IP address (a service's host name
                                          when a service made the call) and no VPC endpoint carried the call
  ``aws:VpcSourceIp``, ``aws:SourceVpce``  ``sourceIPAddress`` and ``vpcEndpointId`` when one did
  ``aws:UserAgent``                       ``userAgent``
  ``aws:RequestedRegion``                 ``awsRegion``
  ``aws:SecureTransport``                 ``"true"`` when the record has ``tlsDetails``
  ``aws:PrincipalAccount``                ``userIdentity.accountId``
  ``aws:PrincipalArn``                    the principal; for a role session the role (``sessionIssuer.arn``)
  ``aws:PrincipalType``                   ``User``, ``AssumedRole``, ``FederatedUser`` or ``Account``
  ``aws:userid``                          ``userIdentity.principalId``
  ``aws:username``                        ``userIdentity.userName``, for IAM users
  ``aws:MultiFactorAuthPresent``          ``sessionContext.attributes.mfaAuthenticated``
  ``aws:TokenIssueTime``                  ``sessionContext.attributes.creationDate``
  ``aws:SourceIdentity``                  ``sessionContext.sourceIdentity``
  ``aws:ViaAWSService``                   ``"true"`` when ``invokedBy`` is an AWS service, else ``"false"``
  ``aws:CalledVia``                       ``[invokedBy]`` when it is an AWS service
  ``aws:RequestTag/<key>``, ``aws:TagKeys``  ``requestParameters.tags`` and ``tagSpecificationSet``
  ======================================  =================================================================

Only ``AwsApiCall`` and ``AwsConsoleSignIn`` events are requests; other event types (service events,
Insights, VPC-endpoint denials) raise ``UnmappableRecord`` ("not an API call"). Records without ``eventType``
(written before CloudTrail had the field) count as API calls.

Approximated: one resource per request, as the evaluator takes it (a ``CopyObject`` is checked against its
target only; an ``…Arn`` parameter may name a secondary resource, e.g. the policy of ``AttachRolePolicy``);
``"*"`` is flagged as a fallback even for actions that are only ever authorized on ``"*"``; principal tags,
organization ids and service-specific keys are not in CloudTrail and are left absent; ``aws:CalledVia`` holds
only the last service of a chain.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

NOT_AN_API_CALL = "not an API call"
NO_IAM_PRINCIPAL = "cannot be evaluated as an IAM principal"
MALFORMED = "malformed CloudTrail record"

API_EVENT_TYPES = frozenset({"AwsApiCall", "AwsConsoleSignIn"})

SERVICE_PREFIXES = {
    "monitoring": "cloudwatch",
    "email": "ses",
    "tagging": "tag",
    "pinpoint": "mobiletargeting",
    "cloudcontrolapi": "cloudformation",
}

ACTION_NAMES = {
    "s3:ListObjects": "s3:ListBucket",
    "s3:ListObjectsV2": "s3:ListBucket",
    "s3:HeadBucket": "s3:ListBucket",
    "s3:ListObjectVersions": "s3:ListBucketVersions",
    "s3:ListBuckets": "s3:ListAllMyBuckets",
    "s3:ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "s3:ListParts": "s3:ListMultipartUploadParts",
    "s3:HeadObject": "s3:GetObject",
    "s3:SelectObjectContent": "s3:GetObject",
    "s3:CreateMultipartUpload": "s3:PutObject",
    "s3:UploadPart": "s3:PutObject",
    "s3:UploadPartCopy": "s3:PutObject",
    "s3:CompleteMultipartUpload": "s3:PutObject",
    "s3:CopyObject": "s3:PutObject",
    "s3:DeleteObjects": "s3:DeleteObject",
    "s3:GetBucketLifecycle": "s3:GetLifecycleConfiguration",
    "s3:PutBucketLifecycle": "s3:PutLifecycleConfiguration",
    "s3:DeleteBucketLifecycle": "s3:PutLifecycleConfiguration",
    "s3:GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "s3:PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "s3:DeleteBucketEncryption": "s3:PutEncryptionConfiguration",
    "s3:GetBucketReplication": "s3:GetReplicationConfiguration",
    "s3:PutBucketReplication": "s3:PutReplicationConfiguration",
    "s3:DeleteBucketReplication": "s3:PutReplicationConfiguration",
    "lambda:Invoke": "lambda:InvokeFunction",
}

_PRINCIPAL_TYPES = {"IAMUser": "User", "AssumedRole": "AssumedRole", "FederatedUser": "FederatedUser",
                    "Root": "Account"}

_API_VERSION_SUFFIX = re.compile(r"(?:\d{8}|\d{4}_\d{2}_\d{2})(?:v\d+)?$")


class UnmappableRecord(Exception):
    """A record that is not a request IAM authorized for a principal; ``kind`` groups it in the report."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CloudTrailRequest:
    """A request in the evaluator's shape, and whether its resource is a ``"*"`` standing in for an unknown one."""

    principal: str
    action: str
    resource: str
    resource_account: str | None
    context: dict[str, str | list[str]]
    resource_fallback: bool


def request_from_record(record: Any) -> CloudTrailRequest:
    """Map one element of a CloudTrail file's ``Records``; raises ``UnmappableRecord`` saying why it cannot."""
    if not isinstance(record, Mapping):
        raise UnmappableRecord(MALFORMED, f"a record must be an object, not {type(record).__name__}")
    event_type = record.get("eventType", "AwsApiCall")
    if event_type not in API_EVENT_TYPES:
        raise UnmappableRecord(NOT_AN_API_CALL, f"eventType {event_type!r}")
    identity = record.get("userIdentity")
    if not isinstance(identity, Mapping):
        raise UnmappableRecord(MALFORMED, "userIdentity is missing")
    principal, context = _principal(identity)
    service, action = _action(record)
    partition = principal.split(":", 2)[1]
    resource, resource_account = _resource(record, service, partition)
    context.update(_call_context(record, identity))
    params = record.get("requestParameters")
    if isinstance(params, Mapping):
        context.update(_request_tags(params))
    return CloudTrailRequest(principal, action, resource or "*", resource_account, context, resource is None)


def _principal(identity: Mapping[str, Any]) -> tuple[str, dict[str, str | list[str]]]:
    """The caller's ARN and the principal keys of the request context."""
    identity_type = identity.get("type")
    principal_type = _PRINCIPAL_TYPES.get(identity_type) if isinstance(identity_type, str) else None
    if principal_type is None:
        who = identity.get("invokedBy") or identity.get("accountId")
        raise UnmappableRecord(NO_IAM_PRINCIPAL, f"userIdentity type {identity_type!r}" + (f" ({who})" if who else ""))
    arn = identity.get("arn")
    if not isinstance(arn, str) or arn.count(":") < 5:
        raise UnmappableRecord(MALFORMED, f"userIdentity of type {identity_type} has no ARN")
    context: dict[str, str | list[str]] = {
        "aws:PrincipalArn": arn,
        "aws:PrincipalType": principal_type,
        "aws:PrincipalAccount": arn.split(":")[4],
    }
    if isinstance(identity.get("accountId"), str):
        context["aws:PrincipalAccount"] = identity["accountId"]
    session = identity.get("sessionContext")
    session = session if isinstance(session, Mapping) else {}
    if identity_type == "AssumedRole":
        issuer = session.get("sessionIssuer")
        role = issuer.get("arn") if isinstance(issuer, Mapping) else None
        context["aws:PrincipalArn"] = role if isinstance(role, str) else _role_of_session(arn)
    if isinstance(identity.get("principalId"), str):
        context["aws:userid"] = identity["principalId"]
    if identity_type == "IAMUser" and isinstance(identity.get("userName"), str):
        context["aws:username"] = identity["userName"]
    attributes = session.get("attributes")
    if isinstance(attributes, Mapping):
        if attributes.get("mfaAuthenticated") is not None:
            context["aws:MultiFactorAuthPresent"] = str(attributes["mfaAuthenticated"]).lower()
        if isinstance(attributes.get("creationDate"), str):
            context["aws:TokenIssueTime"] = attributes["creationDate"]
    if isinstance(session.get("sourceIdentity"), str):
        context["aws:SourceIdentity"] = session["sourceIdentity"]
    return arn, context


def _role_of_session(session_arn: str) -> str:
    """``arn:aws:sts::a:assumed-role/R/s`` → ``arn:aws:iam::a:role/R``, for records without a session issuer
    (the role's path is not in the session ARN, so it is lost)."""
    prefix, _, name = session_arn.partition(":assumed-role/")
    partition, account = prefix.split(":")[1], prefix.split(":")[4]
    return f"arn:{partition}:iam::{account}:role/{name.split('/')[0]}"


def _action(record: Mapping[str, Any]) -> tuple[str, str]:
    """The service prefix and the IAM action the call was authorized as."""
    source, name = record.get("eventSource"), record.get("eventName")
    if not isinstance(source, str) or not isinstance(name, str) or not source or not name:
        raise UnmappableRecord(MALFORMED, "eventSource or eventName is missing")
    host = source.removesuffix(".amazonaws.com").rsplit(".", 1)[-1]
    service = SERVICE_PREFIXES.get(host, host)
    action = f"{service}:{_API_VERSION_SUFFIX.sub('', name)}"
    return service, ACTION_NAMES.get(action, action)


def _resource(record: Mapping[str, Any], service: str, partition: str) -> tuple[str | None, str | None]:
    """The resource ARN (``None`` when the record does not tell) and its owner when the ARN does not name it."""
    entries = [entry for entry in record.get("resources") or () if isinstance(entry, Mapping)]
    owners = [entry["accountId"] for entry in entries if isinstance(entry.get("accountId"), str)]
    arn = next((entry["ARN"] for entry in entries if isinstance(entry.get("ARN"), str) and entry["ARN"]), None)
    params = record.get("requestParameters")
    if arn is None and isinstance(params, Mapping):
        arn = _resource_from_parameters(params, service, partition, record.get("awsRegion"))
    if arn is None:
        return None, None
    fields = arn.split(":", 5)
    if len(fields) == 6 and fields[4]:
        return arn, None
    if owners:
        return arn, owners[0]
    recipient = record.get("recipientAccountId")
    return arn, recipient if isinstance(recipient, str) else None


def _resource_from_parameters(params: Mapping[str, Any], service: str, partition: str, region: Any) -> str | None:
    """An ARN built from the parameters that name the resource of common calls."""
    bucket, key = params.get("bucketName"), params.get("key")
    if service == "s3" and isinstance(bucket, str) and bucket:
        return f"arn:{partition}:s3:::{bucket}" + (f"/{key}" if isinstance(key, str) and key else "")
    queue_url = params.get("queueUrl")
    if service == "sqs" and isinstance(queue_url, str) and isinstance(region, str):
        account, _, queue = urlsplit(queue_url).path.strip("/").partition("/")
        if account.isdigit() and queue:
            return f"arn:{partition}:sqs:{region}:{account}:{queue}"
    for name, value in params.items():
        if name.endswith(("Arn", "ARN")) and isinstance(value, str) and value.startswith("arn:"):
            return value
    return None


def _call_context(record: Mapping[str, Any], identity: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """Keys about the call itself: when, from where, how, and through which service."""
    event_time = record.get("eventTime")
    try:
        moment = datetime.fromisoformat(event_time)
    except (TypeError, ValueError):
        raise UnmappableRecord(MALFORMED, f"eventTime {event_time!r} is not a date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    context: dict[str, str | list[str]] = {"aws:CurrentTime": event_time, "aws:EpochTime": str(int(moment.timestamp()))}
    source_ip, endpoint = record.get("sourceIPAddress"), record.get("vpcEndpointId")
    if _is_ip_address(source_ip):
        if isinstance(endpoint, str) and endpoint:
            context["aws:VpcSourceIp"] = source_ip
            context["aws:SourceVpce"] = endpoint
        else:
            context["aws:SourceIp"] = source_ip
    if isinstance(record.get("userAgent"), str):
        context["aws:UserAgent"] = record["userAgent"]
    if isinstance(record.get("awsRegion"), str):
        context["aws:RequestedRegion"] = record["awsRegion"]
    if record.get("tlsDetails"):
        context["aws:SecureTransport"] = "true"
    invoked_by = identity.get("invokedBy")
    via_service = isinstance(invoked_by, str) and invoked_by.endswith(".amazonaws.com")
    context["aws:ViaAWSService"] = "true" if via_service else "false"
    if via_service:
        context["aws:CalledVia"] = [invoked_by]
    return context


def _is_ip_address(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _request_tags(params: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """``aws:RequestTag/<key>`` and ``aws:TagKeys`` from the tags a create or tag call carries."""
    tags = _tag_pairs(params.get("tags"))
    specifications = params.get("tagSpecificationSet")
    for specification in specifications.get("items", ()) if isinstance(specifications, Mapping) else ():
        if isinstance(specification, Mapping):
            tags.update(_tag_pairs(specification.get("tags")))
    context: dict[str, str | list[str]] = {f"aws:RequestTag/{key}": value for key, value in tags.items()}
    if tags:
        context["aws:TagKeys"] = list(tags)
    return context


def _tag_pairs(tags: Any) -> dict[str, str]:
    """Tags as services spell them: ``{"k": "v"}``, ``[{"key"|"Key": k, "value"|"Value": v}]``, or EC2's
    ``{"items": [...]}``."""
    if isinstance(tags, Mapping) and "items" in tags:
        tags = tags["items"]
    if isinstance(tags, Mapping):
        return {key: str(value) for key, value in tags.items() if isinstance(key, str) and value is not None}
    pairs = {}
    for tag in tags if isinstance(tags, list) else ():
        if isinstance(tag, Mapping):
            key, value = tag.get("key", tag.get("Key")), tag.get("value", tag.get("Value"))
            if isinstance(key, str):
                pairs[key] = "" if value is None else str(value)
    return pairs
