"""Bad policies give located, readable findings; the parser never half-builds a policy."""
from __future__ import annotations

import json
import re

import pytest

from iam_evaluator import PolicyKind, PolicyValidationError, Severity, parse_policy
from iam_evaluator.catalog import Catalog
from iam_evaluator.findings import CODE_MEANINGS, pointer
from iam_evaluator.policy_types import PolicyType
from iam_evaluator.security_checks import SENSITIVE_SERVICES
from iam_evaluator.validate import validate_policy

from .conftest import CORPUS, EXAMPLES, REPO, require

PACKAGE = REPO / "evaluator"

V = "2012-10-17"


def stmt(**fields):
    base = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def pol(*statements, **top):
    return {"Version": V, "Statement": list(statements), **top}


def cond(block):
    return pol(stmt(Condition=block))


# (kind of bad input, source, policy kind, expected code, expected pointer)
BAD_INPUTS = [
    ("not JSON", '{"Version": "2012-10-17", "Statement": [', PolicyKind.IDENTITY, "E001", ""),
    ("not UTF-8", b'{"Version": "\xff"}', PolicyKind.IDENTITY, "E001", ""),
    ("policy is a list", "[]", PolicyKind.IDENTITY, "E004", ""),
    ("policy is a string", '"hello"', PolicyKind.IDENTITY, "E004", ""),
    ("duplicate key", '{"Version": "2012-10-17", "Version": "2012-10-17", "Statement": []}',
     PolicyKind.IDENTITY, "E002", "/Version"),
    ("unknown top-level element", {**pol(stmt()), "Statements": []}, PolicyKind.IDENTITY, "E003", "/Statements"),
    ("bad Version", {"Version": "2012-10-18", "Statement": [stmt()]}, PolicyKind.IDENTITY, "E005", "/Version"),
    ("Version as a number", {"Version": 2012, "Statement": [stmt()]}, PolicyKind.IDENTITY, "E005", "/Version"),
    ("Id not a string", pol(stmt(), Id=7), PolicyKind.IDENTITY, "E007", "/Id"),
    ("no Statement", {"Version": V}, PolicyKind.IDENTITY, "E006", ""),
    ("empty Statement list", {"Version": V, "Statement": []}, PolicyKind.IDENTITY, "E006", "/Statement"),
    ("Statement a string", {"Version": V, "Statement": "x"}, PolicyKind.IDENTITY, "E007", "/Statement"),
    ("statement not an object", pol(stmt(), 5), PolicyKind.IDENTITY, "E007", "/Statement/1"),
    ("unknown statement element", pol(stmt(Actions="s3:*")), PolicyKind.IDENTITY, "E003", "/Statement/0/Actions"),
    ("missing Effect", pol(stmt(Effect=None)), PolicyKind.IDENTITY, "E009", "/Statement/0"),
    ("Effect in lower case", pol(stmt(Effect="allow")), PolicyKind.IDENTITY, "E010", "/Statement/0/Effect"),
    ("Action and NotAction", pol(stmt(NotAction="s3:*")), PolicyKind.IDENTITY, "E011", "/Statement/0"),
    ("neither Action nor NotAction", pol(stmt(Action=None)), PolicyKind.IDENTITY, "E012", "/Statement/0"),
    ("Resource and NotResource", pol(stmt(NotResource="*")), PolicyKind.IDENTITY, "E011", "/Statement/0"),
    ("no Resource in an identity policy", pol(stmt(Resource=None)), PolicyKind.IDENTITY, "E012", "/Statement/0"),
    ("Action a number", pol(stmt(Action=3)), PolicyKind.IDENTITY, "E013", "/Statement/0/Action"),
    ("Action list holds a number", pol(stmt(Action=["s3:GetObject", 3])), PolicyKind.IDENTITY, "E013",
     "/Statement/0/Action/1"),
    ("empty Action list", pol(stmt(Action=[])), PolicyKind.IDENTITY, "E014", "/Statement/0/Action"),
    ("empty Resource string", pol(stmt(Resource="")), PolicyKind.IDENTITY, "E014", "/Statement/0/Resource"),
    ("empty string in a Resource list", pol(stmt(Resource=["arn:aws:s3:::b", ""])), PolicyKind.IDENTITY, "E014",
     "/Statement/0/Resource/1"),
    ("action without service", pol(stmt(Action="GetObject")), PolicyKind.IDENTITY, "E015", "/Statement/0/Action"),
    ("action with a space", pol(stmt(Action=["s3:Get Object"])), PolicyKind.IDENTITY, "E015",
     "/Statement/0/Action/0"),
    ("two actions in one entry", pol(stmt(Action=["s3:GetObject", "s3:GetObject\ns3:PutObject"])), PolicyKind.IDENTITY,
     "E015", "/Statement/0/Action/1"),
    ("resource not an ARN", pol(stmt(Resource="my-bucket")), PolicyKind.IDENTITY, "E016", "/Statement/0/Resource"),
    ("ARN with too few fields", pol(stmt(Resource=["arn:aws:s3:bucket"])), PolicyKind.IDENTITY, "E016",
     "/Statement/0/Resource/0"),
    ("ARN with empty service", pol(stmt(Resource="arn:aws:::123456789012:x")), PolicyKind.IDENTITY, "E016",
     "/Statement/0/Resource"),
    ("unclosed policy variable", pol(stmt(Resource="arn:aws:s3:::b/${aws:username")), PolicyKind.IDENTITY, "E017",
     "/Statement/0/Resource"),
    ("empty policy variable", pol(stmt(Resource="arn:aws:s3:::b/${}/x")), PolicyKind.IDENTITY, "E017",
     "/Statement/0/Resource"),
    ("Principal in an identity policy", pol(stmt(Principal="*")), PolicyKind.IDENTITY, "E018",
     "/Statement/0/Principal"),
    ("no Principal in a resource policy", pol(stmt()), PolicyKind.RESOURCE, "E019", "/Statement/0"),
    ("Principal and NotPrincipal", pol(stmt(Principal="*", NotPrincipal={"AWS": "*"})), PolicyKind.RESOURCE,
     "E011", "/Statement/0"),
    ("Principal a list", pol(stmt(Principal=["*"])), PolicyKind.RESOURCE, "E020", "/Statement/0/Principal"),
    ("unknown principal type", pol(stmt(Principal={"Aws": "*"})), PolicyKind.RESOURCE, "E003",
     "/Statement/0/Principal/Aws"),
    ("empty principal object", pol(stmt(Principal={})), PolicyKind.RESOURCE, "E020", "/Statement/0/Principal"),
    ("malformed AWS principal", pol(stmt(Principal={"AWS": ["12345"]})), PolicyKind.RESOURCE, "E021",
     "/Statement/0/Principal/AWS/0"),
    ("Condition a list", pol(stmt(Condition=[])), PolicyKind.IDENTITY, "E022", "/Statement/0/Condition"),
    ("operator maps to a string", cond({"StringEquals": "x"}), PolicyKind.IDENTITY, "E022",
     "/Statement/0/Condition/StringEquals"),
    ("unknown operator", cond({"StringEqual": {"aws:username": "a"}}), PolicyKind.IDENTITY, "E023",
     "/Statement/0/Condition/StringEqual"),
    ("unknown set qualifier", cond({"ForEachValue:StringEquals": {"aws:TagKeys": "a"}}), PolicyKind.IDENTITY,
     "E023", "/Statement/0/Condition/ForEachValue:StringEquals"),
    ("Null with IfExists", cond({"NullIfExists": {"aws:TagKeys": "true"}}), PolicyKind.IDENTITY, "E023",
     "/Statement/0/Condition/NullIfExists"),
    ("empty condition key", cond({"StringEquals": {" ": "a"}}), PolicyKind.IDENTITY, "E024",
     "/Statement/0/Condition/StringEquals/ "),
    ("empty condition value list", cond({"StringEquals": {"aws:username": []}}), PolicyKind.IDENTITY, "E025",
     "/Statement/0/Condition/StringEquals/aws:username"),
    ("condition value an object", cond({"StringEquals": {"aws:username": {"a": 1}}}), PolicyKind.IDENTITY, "E025",
     "/Statement/0/Condition/StringEquals/aws:username"),
    ("condition value null in a list", cond({"StringEquals": {"aws:username": ["a", None]}}), PolicyKind.IDENTITY,
     "E025", "/Statement/0/Condition/StringEquals/aws:username/1"),
    ("number that is not", cond({"NumericLessThan": {"s3:max-keys": "ten"}}), PolicyKind.IDENTITY, "E026",
     "/Statement/0/Condition/NumericLessThan/s3:max-keys"),
    ("bad date", cond({"DateGreaterThan": {"aws:CurrentTime": "yesterday"}}), PolicyKind.IDENTITY, "E026",
     "/Statement/0/Condition/DateGreaterThan/aws:CurrentTime"),
    ("bad bool", cond({"Bool": {"aws:SecureTransport": "yes"}}), PolicyKind.IDENTITY, "E026",
     "/Statement/0/Condition/Bool/aws:SecureTransport"),
    ("bad CIDR", cond({"IpAddress": {"aws:SourceIp": ["10.0.0.0/33"]}}), PolicyKind.IDENTITY, "E026",
     "/Statement/0/Condition/IpAddress/aws:SourceIp/0"),
    ("bad base64", cond({"BinaryEquals": {"k:bin": "not base64!"}}), PolicyKind.IDENTITY, "E026",
     "/Statement/0/Condition/BinaryEquals/k:bin"),
    ("bad Null flag", cond({"Null": {"aws:TagKeys": "maybe"}}), PolicyKind.IDENTITY, "E026",
     "/Statement/0/Condition/Null/aws:TagKeys"),
    ("duplicate Sid", pol(stmt(Sid="A"), stmt(Sid="A")), PolicyKind.IDENTITY, "E008", "/Statement/1/Sid"),
    ("Sid not a string", pol(stmt(Sid=1)), PolicyKind.IDENTITY, "E007", "/Statement/0/Sid"),
]


@pytest.mark.parametrize(("source", "kind", "code", "where"), [pytest.param(*row[1:], id=row[0]) for row in BAD_INPUTS])
def test_bad_input_is_located(source, kind, code, where):
    with pytest.raises(PolicyValidationError) as raised:
        parse_policy(source, kind=kind, name="p.json")
    found = [(f.code, f.pointer) for f in raised.value.findings]
    assert (code, where) in found, found
    assert all(f.message for f in raised.value.findings)
    assert str(raised.value).startswith("p.json: invalid policy")


def test_a_duplicate_sid_names_where_it_was_first_used():
    with pytest.raises(PolicyValidationError) as raised:
        parse_policy(pol(stmt(Sid="A"), stmt(Sid="B"), stmt(Sid="A"), stmt(Sid="A")))
    assert [(f.pointer, f.message) for f in raised.value.findings] == [
        ("/Statement/2/Sid", "duplicate Sid 'A' (first used at /Statement/0/Sid)"),
        ("/Statement/3/Sid", "duplicate Sid 'A' (first used at /Statement/0/Sid)"),
    ]


def test_at_least_thirty_kinds_of_bad_input():
    assert len({row[0] for row in BAD_INPUTS}) >= 30
    assert len({row[3] for row in BAD_INPUTS}) >= 20


def test_all_errors_are_reported_not_only_the_first():
    source = pol(stmt(Effect="allow"), stmt(Action="nope"), stmt(Resource="bucket"))
    with pytest.raises(PolicyValidationError) as raised:
        parse_policy(source)
    assert [f.code for f in raised.value.findings] == ["E010", "E015", "E016"]


def test_unknown_operator_suggests_the_close_one():
    with pytest.raises(PolicyValidationError, match="did you mean 'StringEquals'"):
        parse_policy(cond({"StringEqual": {"aws:username": "a"}}))


def test_pointer_escapes_slash_and_tilde():
    assert pointer("Condition", "StringLike", "aws:ResourceTag/team~x") == \
        "/Condition/StringLike/aws:ResourceTag~1team~0x"


def test_statement_object_is_normalised_to_one_statement():
    policy = parse_policy({"Version": V, "Statement": stmt(Action=["s3:Get*"], Sid="One")})
    assert len(policy.statements) == 1
    assert policy.statements[0].actions == ("s3:Get*",) and policy.statements[0].sid == "One"


def test_condition_values_are_normalised_to_strings():
    policy = parse_policy(cond({"Bool": {"aws:SecureTransport": True}, "NumericEquals": {"s3:max-keys": [10, 1.5]}}))
    by_key = {c.key: c.values for c in policy.statements[0].conditions}
    assert by_key == {"aws:SecureTransport": ("true",), "s3:max-keys": ("10", "1.5")}


def test_principal_forms():
    policy = parse_policy(pol(stmt(Principal={"AWS": "111122223333", "Service": ["ec2.amazonaws.com"]})),
                          kind=PolicyKind.RESOURCE)
    principal = policy.statements[0].principal
    assert principal.aws == ("111122223333",) and principal.service == ("ec2.amazonaws.com",)
    assert parse_policy(pol(stmt(Principal="*")), kind=PolicyKind.RESOURCE).statements[0].principal.everyone


def test_trust_policy_needs_no_resource():
    trust = pol(stmt(Resource=None, Action="sts:AssumeRole", Principal={"Service": "ec2.amazonaws.com"}))
    assert parse_policy(trust, kind=PolicyKind.RESOURCE).statements[0].resources is None


def test_variables_are_not_checked_as_typed_values():
    # ${...} in a Date value is left for evaluation rather than rejected as a bad date.
    parse_policy(cond({"StringEquals": {"aws:username": "${aws:PrincipalTag/name}"}}))


# --- warnings ---------------------------------------------------------------

@pytest.fixture(scope="module")
def catalog():
    return Catalog.load(require(CORPUS))


WARNINGS = [
    ("no Version", {"Statement": [stmt()]}, "W001", ""),
    ("unknown service", pol(stmt(Action="nosuchservice:Get")), "W002", "/Statement/0/Action"),
    ("unknown action", pol(stmt(Action=["s3:GetObjekt"])), "W003", "/Statement/0/Action/0"),
    ("pattern matching nothing", pol(stmt(Action="s3:Zap*")), "W003", "/Statement/0/Action"),
    ("unknown condition key", cond({"StringEquals": {"s3:nosuchkey": "a"}}), "W004",
     "/Statement/0/Condition/StringEquals/s3:nosuchkey"),
    ("key of another service", cond({"StringEquals": {"ec2:InstanceType": "t3.micro"}}), "W005",
     "/Statement/0/Condition/StringEquals/ec2:InstanceType"),
    ("oversized policy", pol(*[stmt(Sid=f"S{i}", Action=[f"s3:GetObject{j}" for j in range(30)])
                               for i in range(20)]), "W006", ""),
    ("Sid with a space", pol(stmt(Sid="my sid")), "W007", "/Statement/0/Sid"),
    ("variable under 2008-10-17",
     {"Version": "2008-10-17", "Statement": [stmt(Resource="arn:aws:s3:::b/${aws:username}")]}, "W009", "/Statement/0"),
    ("wildcard service prefix", pol(stmt(Action="s*:GetObject")), "W010", "/Statement/0/Action"),
    ("operator of the wrong type", cond({"NumericEquals": {"aws:SourceIp": "1"}}), "W011",
     "/Statement/0/Condition/NumericEquals/aws:SourceIp"),
    ("multivalued key without set operator", cond({"StringEquals": {"aws:TagKeys": "a"}}), "W012",
     "/Statement/0/Condition/StringEquals/aws:TagKeys"),
]


@pytest.mark.parametrize(("source", "code", "where"), [pytest.param(*row[1:], id=row[0]) for row in WARNINGS])
def test_warnings_are_located(source, code, where, catalog):
    findings = validate_policy(source, catalog=catalog)
    assert all(f.severity is Severity.WARNING for f in findings), findings
    assert (code, where) in [(f.code, f.pointer) for f in findings], findings


def test_not_principal_with_allow_warns():
    findings = validate_policy(pol(stmt(NotPrincipal={"AWS": "111122223333"})), kind=PolicyKind.RESOURCE)
    assert [(f.code, f.pointer) for f in findings] == [("W008", "/Statement/0/NotPrincipal")]


def test_validate_returns_errors_without_raising():
    findings = validate_policy('{"Statement": 1}')
    assert [f.code for f in findings] == ["W001", "E007"]


# AWS's own service-role policy passes any role to EC2 (iam:PassedToService limits the service, not the role).
EXAMPLE_FINDINGS = {"AWSServiceRoleForImageBuilder": [("W013", "/Statement/2/Resource")]}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_shipped_examples_are_clean(path, catalog):
    findings = validate_policy(path.read_text(), catalog=catalog)
    assert [(f.code, f.pointer) for f in findings] == EXAMPLE_FINDINGS.get(path.stem, [])


def test_every_managed_policy_parses():
    count = 0
    with require(CORPUS / "aws_managed_policies.jsonl").open() as lines:
        for line in lines:
            entry = json.loads(line)
            parse_policy(entry["document"], name=entry["name"])
            count += 1
    assert count > 1500


@pytest.mark.parametrize("document, where", [
    (json.dumps(pol(stmt(Sid="Read"))).replace('"Read"', '"Re\\ud800ad"'), "/Statement/0/Sid"),
    (pol(stmt(Condition={"StringEquals": {"aws:PrincipalTag/team": ["ok", "\udc80"]}})),
     "/Statement/0/Condition/StringEquals/aws:PrincipalTag~1team/1"),
    (pol(stmt(Resource="arn:aws:s3:::b/\ud800")), "/Statement/0/Resource"),
    (pol(stmt(Condition={"StringEquals": {"aws:PrincipalTag/te\udc80am": "ok"}})),
     "/Statement/0/Condition/StringEquals"),
])
def test_text_that_is_not_unicode_is_refused_where_it_stands(document, where):
    """A lone surrogate cannot be encoded into any answer that names the statement: refuse it up front."""
    with pytest.raises(PolicyValidationError) as raised:
        parse_policy(document)
    assert [(f.code, f.pointer) for f in raised.value.findings] == [("E001", where)]


@pytest.mark.parametrize("document, wanted", [
    ({1: "x", "Version": "2012-10-17", "Statement": []}, [("", "int")]),
    (pol({**stmt(), None: "x"}), [("/Statement/0", "NoneType")]),
    (pol(stmt(Condition={(1, 2): {"k": "v"}})), [("/Statement/0/Condition", "tuple")]),
    (pol(stmt(Condition={"StringEquals": {7: "ok", "k": "\ud800"}})),
     [("/Statement/0/Condition/StringEquals", "int"), ("/Statement/0/Condition/StringEquals/k", "lone surrogate")]),
])
def test_a_key_that_is_not_a_string_is_refused_where_it_stands(document, wanted):
    """A Python mapping may hold keys JSON cannot: each is an error at its object, not a crash further on."""
    with pytest.raises(PolicyValidationError) as raised:
        parse_policy(document)
    found = sorted((f.code, f.pointer, f.message) for f in raised.value.findings)
    assert [(code, where) for code, where, _ in found] == [("E001", where) for where, _ in wanted]
    assert all(word in message for (_, _, message), (_, word) in zip(found, wanted, strict=True))


class EqualsAnything(str):
    """A str subclass that claims to equal every value."""

    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


@pytest.mark.parametrize("effect, wanted", [("Allow", "Allow"), ("Deny", "Deny"), ("allow", None), ("", None)])
def test_an_effect_is_read_for_the_text_it_holds(effect, wanted):
    """A str subclass whose __eq__ lies is read as its characters: "allow" stays an error, not an Allow."""
    document = pol(stmt(Effect=EqualsAnything(effect)))
    if wanted is None:
        with pytest.raises(PolicyValidationError) as raised:
            parse_policy(document)
        assert [f.code for f in raised.value.findings] == ["E010"]
    else:
        assert str(parse_policy(document).statements[0].effect) == wanted


def test_nesting_deeper_than_any_policy_is_refused_without_recursion():
    deep: object = "x"
    for _ in range(100_000):
        deep = [deep]
    for document in (json.dumps(pol(stmt(Condition={"StringEquals": {"k": "v"}}))).replace('"v"', "[" * 50_000 + '"v"'
                                                                                        + "]" * 50_000),
                     pol(stmt(Condition={"StringEquals": {"k": deep}}))):
        with pytest.raises(PolicyValidationError) as raised:
            parse_policy(document)
        [finding] = raised.value.findings
        assert finding.code == "E001" and "nested more than" in finding.message


# --- catalog checks read a policy with errors -----------------------------------------------------------


def test_catalog_checks_run_on_every_statement_of_a_policy_with_errors():
    source = pol(stmt(Effect="allow", Action="s3:GetObjekt"),
                 stmt(Condition={"Bool": {"aws:SecureTransportt": "true"}}),
                 "not a statement",
                 stmt(Action=["nosuchservice:Get", 7]),
                 stmt(Action="s3 GetObject"))
    findings = validate_policy(source)
    assert [(f.code, f.pointer) for f in findings] == [
        ("E010", "/Statement/0/Effect"),
        ("E007", "/Statement/2"),
        ("E013", "/Statement/3/Action/1"),
        ("E015", "/Statement/4/Action"),  # not an action: the parser's error, and no catalog warning on top
        ("W003", "/Statement/0/Action"),
        ("W004", "/Statement/1/Condition/Bool/aws:SecureTransportt"),
        ("W002", "/Statement/3/Action/0"),
    ]
    assert findings[4].message.endswith("did you mean s3:GetObject?")
    assert findings[5].message.endswith("did you mean aws:SecureTransport?")


def test_text_that_cannot_be_read_gets_no_catalog_findings():
    assert [f.code for f in validate_policy('{"Statement": [{"Action": "s3:GetObjekt"')] == ["E001"]
    assert [f.code for f in validate_policy(pol(stmt(Action="s3:GetObjekt", Sid="\ud800")))] == ["E001"]


SUGGESTIONS = [  # (action or condition key, the warning's code, its message's end)
    ("s3:GetObjekt", "W003", "did you mean s3:GetObject?"),
    ("S3:getobjekt", "W003", "did you mean s3:GetObject?"),
    ("s4:GetObject", "W002", "did you mean s3:GetObject?"),
    ("lamda:InvokeFunction", "W002", "did you mean lambda:InvokeFunction?"),
    ("sts:AssumeRol", "W003", "did you mean sts:AssumeRole or sts:AssumeRoot?"),
    ("s3:Zap*", "W003", "'s3:Zap*' matches no s3 action of the IAM catalog"),
    ("aws:SourceIpp", "W004", "did you mean aws:SourceIp, aws:VpcSourceIp or aws:SourceVpc?"),
    ("aws:ResourceTagg/team", "W004", "did you mean aws:ResourceTag/team or aws:RequestTag/team?"),
    ("s3:x-amz-acll", "W004", "did you mean s3:x-amz-acl?"),
]


@pytest.mark.parametrize(("name", "code", "ending"), SUGGESTIONS, ids=[row[0] for row in SUGGESTIONS])
def test_unknown_names_come_with_the_closest_known_ones(name, code, ending):
    block = {"Action": name} if code != "W004" else {"Condition": {"StringEquals": {name: "x"}}}
    [finding] = validate_policy(pol(stmt(**block)))
    assert (finding.code, finding.message.endswith(ending)) == (code, True), finding.message


# --- policy types -----------------------------------------------------------------------------------------

RCP_FULL_AWS_ACCESS = pol(stmt(Principal="*", Action="*"))
DENY_WITHOUT_TLS = stmt(Effect="Deny", Principal="*", Action="s3:*", Resource="arn:aws:s3:::reports/*",
                        Condition={"Bool": {"aws:SecureTransport": "false"}})

TYPE_RULES = [  # (name, type, policy, expected (code, pointer) list)
    ("SCP with Principal", PolicyType.SCP, pol(stmt(Effect="Deny", Principal="*")),
     [("E018", "/Statement/0/Principal")]),
    ("boundary with NotPrincipal", PolicyType.BOUNDARY, pol(stmt(NotPrincipal={"AWS": "111122223333"})),
     [("E018", "/Statement/0/NotPrincipal")]),
    ("session policy with Principal", PolicyType.SESSION, pol(stmt(Principal={"AWS": "111122223333"})),
     [("E018", "/Statement/0/Principal")]),
    ("RCP with an Allow", PolicyType.RCP, pol(stmt(Principal="*", Action="s3:GetObject")),
     [("E027", "/Statement/0/Effect")]),
    ("RCPFullAWSAccess beside a Deny", PolicyType.RCP,
     pol(stmt(Principal="*", Action="*"), DENY_WITHOUT_TLS), [("E027", "/Statement/0/Effect")]),
    ("RCP with NotPrincipal", PolicyType.RCP, pol(stmt(Effect="Deny", NotPrincipal={"AWS": "111122223333"})),
     [("E028", "/Statement/0/NotPrincipal")]),
    ("RCP without Principal", PolicyType.RCP, pol(stmt(Effect="Deny")), [("E019", "/Statement/0")]),
    ("RCPFullAWSAccess", PolicyType.RCP, RCP_FULL_AWS_ACCESS, []),
    ("RCPFullAWSAccess with lists and a Sid", PolicyType.RCP,
     pol(stmt(Sid="FullAccess", Principal="*", Action=["*"], Resource=["*"])), []),
    ("RCP that denies", PolicyType.RCP, pol(DENY_WITHOUT_TLS), []),
    ("FullAWSAccess SCP", PolicyType.SCP, pol(stmt(Action="*")), []),
    ("boundary allowing all of IAM", PolicyType.BOUNDARY, pol(stmt(Action="iam:*")), []),
]


@pytest.mark.parametrize(("policy_type", "source", "expected"), [pytest.param(*row[1:], id=row[0])
                                                                  for row in TYPE_RULES])
def test_each_policy_type_has_its_rules(policy_type, source, expected):
    findings = validate_policy(source, kind=policy_type)
    assert [(f.code, f.pointer) for f in findings] == expected
    assert all(f.severity is Severity.ERROR for f in findings)


def test_a_policy_kind_reads_as_the_type_of_its_name():
    assert validate_policy(pol(stmt(Principal="*")), kind=PolicyKind.IDENTITY)[0].code == "E018"
    assert validate_policy(pol(stmt(Principal={"AWS": "111122223333"})), kind=PolicyKind.RESOURCE) == []


# --- security warnings ------------------------------------------------------------------------------------

ACCOUNT = {"AWS": "arn:aws:iam::111122223333:root"}
QUEUE = "arn:aws:sqs:us-east-1:111122223333:orders"
SECURITY = [  # (name, type, policy, expected (code, pointer) list)
    ("iam:PassRole on every role", PolicyType.IDENTITY, pol(stmt(Action="iam:PassRole", Resource=["*"])),
     [("W013", "/Statement/0/Resource/0")]),
    ("iam:Pass* on every role", PolicyType.IDENTITY, pol(stmt(Action=["iam:Get*", "iam:Pass*"])),
     [("W013", "/Statement/0/Resource")]),
    ("Allow with NotAction", PolicyType.IDENTITY, pol(stmt(Action=None, NotAction="iam:*")),
     [("W014", "/Statement/0/NotAction")]),
    ("Allow with NotResource", PolicyType.IDENTITY, pol(stmt(Resource=None, NotResource="arn:aws:s3:::secret/*")),
     [("W015", "/Statement/0/NotResource")]),
    ("public queue", PolicyType.RESOURCE, pol(stmt(Principal="*", Action="sqs:SendMessage", Resource=QUEUE)),
     [("W016", "/Statement/0/Principal")]),
    ("public queue, every AWS principal", PolicyType.RESOURCE,
     pol(stmt(Principal={"AWS": ["111122223333", "*"]}, Action="sqs:SendMessage", Resource=QUEUE)),
     [("W016", "/Statement/0/Principal")]),
    ("all of KMS", PolicyType.IDENTITY, pol(stmt(Action=["kms:Decrypt", "KMS:*"])),
     [("W017", "/Statement/0/Action/1")]),
    ("every action", PolicyType.IDENTITY, pol(stmt(Action="*")),
     [("W013", "/Statement/0/Resource"), ("W017", "/Statement/0/Action")]),
    ("bucket policy without a TLS deny", PolicyType.RESOURCE,
     pol(stmt(Principal=ACCOUNT, Resource=["arn:aws:s3:::reports", "arn:aws:s3:::reports/*"])),
     [("W018", "/Statement/0/Resource/0")]),
]
CLEAN = [  # (name, type, policy): no finding at all
    ("narrow identity policy", PolicyType.IDENTITY,
     pol(stmt(Action=["s3:GetObject", "s3:ListBucket"], Resource="arn:aws:s3:::reports/*"),
         stmt(Action="iam:PassRole", Resource="arn:aws:iam::111122223333:role/builder"),
         stmt(Effect="Deny", Action=None, NotAction="iam:*", Resource=None, NotResource="arn:aws:s3:::reports/*"),
         stmt(Action="ec2:*", Resource="*"))),
    ("bucket policy that denies insecure transport", PolicyType.RESOURCE,
     pol(stmt(Principal=ACCOUNT, Action="s3:GetObject", Resource="arn:aws:s3:::reports/*"), DENY_WITHOUT_TLS)),
    ("public queue for the organization only", PolicyType.RESOURCE,
     pol(stmt(Principal="*", Action="sqs:SendMessage", Resource=QUEUE,
              Condition={"StringEquals": {"aws:PrincipalOrgID": "o-a1b2c3d4e5"}}))),
]


@pytest.mark.parametrize(("policy_type", "source", "expected"), [pytest.param(*row[1:], id=row[0])
                                                                  for row in SECURITY])
def test_each_security_warning_fires(policy_type, source, expected):
    findings = validate_policy(source, kind=policy_type)
    assert [(f.code, f.pointer) for f in findings] == expected
    suggestions = {"W018"}  # a best practice the policy lacks: a note, not a warning
    assert all(f.severity is (Severity.NOTE if f.code in suggestions else Severity.WARNING) and f.message
               for f in findings)


@pytest.mark.parametrize(("policy_type", "source"), [pytest.param(*row[1:], id=row[0]) for row in CLEAN])
def test_a_clean_policy_gets_no_security_warning(policy_type, source):
    assert validate_policy(source, kind=policy_type) == []


def test_security_warnings_are_stable_codes_with_their_own_meaning():
    assert [code for code, _ in CODE_MEANINGS.items() if code >= "W013"] == \
        ["W013", "W014", "W015", "W016", "W017", "W018"]
    assert {"iam", "kms", "sts", "organizations", "s3"} <= SENSITIVE_SERVICES


def test_every_code_the_validator_can_give_has_a_meaning():
    sources = ["parse.py", "validate.py", "catalog_checks.py", "security_checks.py", "policy_types.py"]
    codes = {code for name in sources for code in re.findall(r'"([EW]\d{3})"', (PACKAGE / name).read_text())}
    assert codes == set(CODE_MEANINGS)
