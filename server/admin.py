"""The PolicyAdmin service: read the served store, change it through ``LiveStore``.

A change is a function over a copy of the store's snapshot; ``LiveStore`` checks
the result as a whole store, persists it and only then serves it, so a change
that fails (a bad document, a dangling reference, a stale expected_version)
changes nothing.
"""
from __future__ import annotations

from collections.abc import Callable

from iam_evaluator.catalog import Catalog
from iam_evaluator.context_keys import store_context_keys
from iam_evaluator.findings import Severity
from iam_evaluator.store import SECTION_TYPES
from iam_evaluator.usage import ServedUsage
from iam_evaluator.validate import validate_policy

from . import convert
from .api import iam_evaluator_pb2 as pb
from .api import iam_evaluator_pb2_grpc as pb_grpc
from .live_store import LiveStore, Serving
from .store_versions import EntryNotFound, delete_entry, entry_keys, find_entry, put_entry


def _section(kind: int) -> str:
    if kind not in convert.SECTIONS:
        named = pb.PolicyKind.Name(kind) if kind in pb.PolicyKind.values() else kind  # an open enum: any number
        raise ValueError(f"policy kind must be MANAGED, SCP, RCP, RESOURCE or VPC_ENDPOINT, not {named}")
    return convert.SECTIONS[kind]


class PolicyAdminServicer(pb_grpc.PolicyAdminServicer):
    def __init__(self, live: Callable[[], LiveStore], catalog: Catalog, usage: ServedUsage) -> None:
        self._live = live  # raises ServiceError(UNAVAILABLE) until the store is compiled
        self._catalog = catalog
        self._usage = usage

    def _serving(self) -> Serving:
        return self._live().current

    def ValidatePolicy(self, request: pb.ValidatePolicyRequest, context) -> pb.ValidatePolicyResponse:
        """The findings ``iam-eval validate`` gives the document, with the rules of the type its kind has in a
        store (an unspecified kind: MANAGED's)."""
        policy_type = SECTION_TYPES[_section(request.kind or pb.MANAGED)]
        findings = validate_policy(request.document, kind=policy_type, catalog=self._catalog)
        return pb.ValidatePolicyResponse(valid=not any(f.severity is Severity.ERROR for f in findings),
                                         findings=[convert.finding(f) for f in findings])

    def PutPolicy(self, request: pb.PutPolicyRequest, context) -> pb.StoreChange:
        _section(request.policy.kind)
        if not request.policy.name:
            raise ValueError("the policy needs a name (an ARN for MANAGED and RESOURCE, an id for VPC_ENDPOINT)")
        section, entry = convert.policy_entry(request.policy)
        kind = pb.PolicyKind.Name(request.policy.kind).lower()
        return self._change(lambda snapshot: put_entry(snapshot, section, entry),
                            f"put {kind} policy {request.policy.name}", request.expected_version)

    def GetPolicy(self, request: pb.PolicyName, context) -> pb.StoredPolicy:
        entry = find_entry(self._serving().version.store, _section(request.kind), request.name)
        return convert.stored_policy(request.kind, entry)

    def ListPolicies(self, request: pb.ListPoliciesRequest, context) -> pb.ListPoliciesResponse:
        serving = self._serving()
        kinds = [request.kind] if request.kind else list(convert.SECTIONS)
        names = [pb.PolicyName(kind=kind, name=name) for kind in kinds
                 for name in entry_keys(serving.version.store, _section(kind))]
        return pb.ListPoliciesResponse(policies=names, store_version=serving.version.number)

    def DeletePolicy(self, request: pb.DeletePolicyRequest, context) -> pb.StoreChange:
        section, name = _section(request.policy.kind), request.policy.name
        kind = pb.PolicyKind.Name(request.policy.kind).lower()
        return self._change(lambda snapshot: delete_entry(snapshot, section, name),
                            f"delete {kind} policy {name}", request.expected_version)

    def PutPrincipal(self, request: pb.PutPrincipalRequest, context) -> pb.StoreChange:
        entry = convert.principal_entry(request.principal)
        return self._change(lambda snapshot: put_entry(snapshot, "principals", entry),
                            f"put principal {request.principal.arn}", request.expected_version)

    def GetPrincipal(self, request: pb.PrincipalName, context) -> pb.Principal:
        return convert.principal(find_entry(self._serving().version.store, "principals", request.arn))

    def ListPrincipals(self, request: pb.ListPrincipalsRequest, context) -> pb.ListPrincipalsResponse:
        serving = self._serving()
        return pb.ListPrincipalsResponse(arns=entry_keys(serving.version.store, "principals"),
                                         store_version=serving.version.number)

    def DeletePrincipal(self, request: pb.DeletePrincipalRequest, context) -> pb.StoreChange:
        return self._change(lambda snapshot: delete_entry(snapshot, "principals", request.arn),
                            f"delete principal {request.arn}", request.expected_version)

    def GetStoreVersion(self, request: pb.GetStoreVersionRequest, context) -> pb.StoreVersion:
        version = self._serving().version
        return pb.StoreVersion(version=version.number, created=version.created, description=version.description)

    def ListStoreVersions(self, request: pb.ListStoreVersionsRequest, context) -> pb.ListStoreVersionsResponse:
        live = self._live()
        return pb.ListStoreVersionsResponse(
            versions=[pb.StoreVersion(version=v.number, created=v.created, description=v.description)
                      for v in live.versions.history()],
            current=live.current.version.number)

    def Rollback(self, request: pb.RollbackRequest, context) -> pb.StoreChange:
        serving = self._live().rollback(request.version, request.expected_version)
        return pb.StoreChange(version=serving.version.number)

    def GetContextKeys(self, request: pb.GetContextKeysRequest, context) -> pb.GetContextKeysResponse:
        serving = self._serving()
        try:
            keys = store_context_keys(serving.compiled.store, request.principal or None, request.action or None)
        except LookupError as exc:
            raise EntryNotFound(str(exc)) from None
        return pb.GetContextKeysResponse(keys=convert.context_keys(keys), store_version=serving.version.number)

    def GetStatementUsage(self, request: pb.GetStatementUsageRequest, context) -> pb.GetStatementUsageResponse:
        serving = self._serving()
        counts = [c for c in self._usage.report(serving.compiled) if not (request.never_applied and c.applied)]
        return pb.GetStatementUsageResponse(statements=convert.statement_uses(counts),
                                            since=convert.rfc3339(self._usage.started),
                                            store_version=serving.version.number)

    def _change(self, edit: Callable[[dict], None], description: str, expected_version: int) -> pb.StoreChange:
        serving = self._live().change(edit, description, expected_version)
        return pb.StoreChange(version=serving.version.number)
