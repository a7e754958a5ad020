"""Decisions, and IAM's rule for combining the policy layers into one.

The rule lives in ``combine`` alone, so the reference evaluator and the
compiled engine cannot disagree about it. It follows the AWS IAM User Guide,
"Policy evaluation logic": an applicable Deny in any policy wins; otherwise
every SCP and RCP level must allow, and then either an identity-based policy
allows within the permissions boundary and session policy, or a resource-based
policy allows (on its own when it names the caller in the same account; together
with an identity-based Allow across accounts). The per-service rules of
``service_rules`` join here: a role's trust policy and a KMS key policy must allow,
an anonymous caller is allowed by resource policies alone, and a VPC endpoint's
policy must allow as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from . import service_rules
from .model import Effect
from .principals import Grant


class DecisionKind(StrEnum):
    """The three decisions, by the names AWS gives them; every output prints these names.

    Where a decision is a number (the batch APIs' codes, the proto's ``Decision`` enum, the
    engine) it is ``code``: 1 Allow, 2 ExplicitDeny, 3 ImplicitDeny; 0 is no decision.
    """

    ALLOW = "Allow"
    EXPLICIT_DENY = "ExplicitDeny"
    IMPLICIT_DENY = "ImplicitDeny"

    @property
    def code(self) -> int:
        return BY_CODE.index(self)


BY_CODE: tuple[DecisionKind | None, ...] = (None, DecisionKind.ALLOW, DecisionKind.EXPLICIT_DENY,
                                            DecisionKind.IMPLICIT_DENY)
"""Each decision at its code."""


@dataclass(frozen=True, slots=True, order=True)
class StatementRef:
    """A statement named the way users find it: policy name, index, Sid."""

    policy: str
    index: int
    sid: str | None
    effect: Effect

    def __str__(self) -> str:
        sid = f" ({self.sid})" if self.sid else ""
        return f"{self.effect} {self.policy}#{self.index}{sid}"

    def to_json(self) -> dict:
        return {"policy": self.policy, "index": self.index, "sid": self.sid, "effect": str(self.effect)}


@dataclass(frozen=True, slots=True)
class MissingKey:
    """A context key the request did not give, and the statements that needed it: each could have applied
    (its action and resource match, or would once its policy variables are given) and tests the key in a
    condition or names it in a policy variable."""

    key: str  # as the policy spells it
    statements: tuple[StatementRef, ...]

    def to_json(self) -> dict:
        return {"key": self.key, "statements": [s.to_json() for s in self.statements]}


class MissKind(StrEnum):
    """Why a statement whose action matched did not make the request allowed (``NearMiss``)."""

    RESOURCE = "resource"        # Resource does not match the request's resource, or NotResource does
    VARIABLE = "variable"        # a policy variable has no single value in the request
    MISSING_KEY = "missing_key"  # a condition needed a context key the request did not give
    CONDITION = "condition"      # a condition is false for the value sent
    PRINCIPAL = "principal"      # a resource-based policy's Principal does not name the caller
    LAYER = "layer"              # it applied, but the layer that decided cut it (boundary, SCP level, a Deny, ...)
    ERROR = "error"              # a condition cannot read the value sent


@dataclass(frozen=True, slots=True)
class Miss:
    """The first reason a statement did not apply, with what it compared (values sent and wanted cut short:
    ``reference.SHOWN_VALUES``)."""

    kind: MissKind
    reason: str                   # the reason in words
    patterns: tuple[str, ...] = ()  # RESOURCE: the Resource (or NotResource) patterns, as written
    operator: str = ""            # CONDITION, MISSING_KEY: the operator, as written
    key: str = ""                 # CONDITION, MISSING_KEY: the condition key; VARIABLE: the variable's key
    sent: tuple[str, ...] = ()    # CONDITION, VARIABLE: the request's values of the key
    wanted: tuple[str, ...] = ()  # CONDITION: the policy's values, policy variables resolved
    cut_by: str = ""              # LAYER: the layer that decided the request (``Decision.decided_by``)


@dataclass(frozen=True, slots=True)
class NearMiss:
    """An Allow statement whose action matched a denied request, in the layer it stands in, and why it did
    not allow it."""

    statement: StatementRef
    layer: str
    miss: Miss

    def __str__(self) -> str:
        return f"{self.statement}: {self.miss.reason}"

    def to_json(self) -> dict:
        miss = self.miss
        return {**self.statement.to_json(), "layer": self.layer, "kind": str(miss.kind), "reason": miss.reason,
                "patterns": list(miss.patterns), "operator": miss.operator, "key": miss.key, "sent": list(miss.sent),
                "wanted": list(miss.wanted), "cut_by": miss.cut_by}


NEAR_MISSES = 5
"""Near misses an explained decision lists (the first, by layer and policy order); it counts the rest."""


@dataclass(frozen=True, slots=True)
class LayerResult:
    """The applicable statements of one policy layer, by effect."""

    denies: tuple[StatementRef, ...] = ()
    allows: tuple[StatementRef, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    decision: DecisionKind
    decided_by: str  # the layer that denied, the first layer that failed to allow, or "error"
    statements: tuple[StatementRef, ...] = ()
    missing_keys: tuple[str, ...] = ()
    reason: str = ""
    error: str | None = None
    # Explained decisions only: the statements that needed each missing key; for a deny, the Allow
    # statements that nearly applied (the first NEAR_MISSES) and how many more there are.
    missing_key_statements: tuple[MissingKey, ...] = ()
    near_misses: tuple[NearMiss, ...] = ()
    more_near_misses: int = 0

    @property
    def allowed(self) -> bool:
        return self.decision is DecisionKind.ALLOW

    def to_json(self) -> dict:
        return {
            "decision": str(self.decision),
            "decided_by": self.decided_by,
            "statements": [s.to_json() for s in self.statements],
            "missing_keys": list(self.missing_keys),
            "reason": self.reason,
            "error": self.error,
            "missing_key_statements": [m.to_json() for m in self.missing_key_statements],
            "near_misses": [m.to_json() for m in self.near_misses],
            "more_near_misses": self.more_near_misses,
        }


def failed(error: str) -> Decision:
    """An evaluation error denies the request (fail closed) and says why."""
    return Decision(DecisionKind.IMPLICIT_DENY, "error", reason=f"evaluation failed: {error}", error=error)


@dataclass(frozen=True, slots=True)
class Layers:
    """Every layer's result for one request; ``None`` is an absent layer."""

    identity: LayerResult
    resource: LayerResult | None
    resource_grant: Grant  # how the resource policy's applicable Allows name the caller
    permissions_boundary: LayerResult | None
    session: LayerResult | None
    scp: tuple[LayerResult, ...] | None
    rcp: tuple[LayerResult, ...] | None
    vpc_endpoint: LayerResult | None = None

    def named(self) -> list[tuple[str, LayerResult]]:
        named = [("identity", self.identity)]
        named += [("resource", self.resource)] if self.resource else []
        named += [("permissions_boundary", self.permissions_boundary)] if self.permissions_boundary else []
        named += [("session", self.session)] if self.session else []
        named += [(f"scp[{i}]", level) for i, level in enumerate(self.scp or ())]
        named += [(f"rcp[{i}]", level) for i, level in enumerate(self.rcp or ())]
        named += [("vpc_endpoint", self.vpc_endpoint)] if self.vpc_endpoint else []
        return named


def always_allowed() -> Decision:
    """An action that needs no permission (``service_rules.ALWAYS_ALLOWED``), whatever the policies say."""
    return Decision(DecisionKind.ALLOW, "always_allowed",
                    reason="no permissions are required for this action, and no policy can deny it")


def combine(layers: Layers, same_account: bool, missing_keys: tuple[str, ...] = (), *, must_allow: int = 0,
            anonymous: bool = False) -> Decision:
    """``must_allow``: the kind of resource (``service_rules``) whose own policy, present, must allow;
    ``anonymous``: the caller signed nothing (its identity-side layers are absent)."""
    named = layers.named()
    denies = tuple(ref for _, result in named for ref in result.denies)
    if denies:
        first = next(name for name, result in named if result.denies)
        return Decision(DecisionKind.EXPLICIT_DENY, first, denies, missing_keys, f"explicitly denied by {denies[0]}")
    allows = tuple(ref for _, result in named for ref in result.allows)

    def implicit(layer: str, reason: str) -> Decision:
        return Decision(DecisionKind.IMPLICIT_DENY, layer, allows, missing_keys, reason)

    for kind, levels in (("scp", layers.scp), ("rcp", layers.rcp)):
        for i, level in enumerate(levels or ()):
            if not level.allows:
                return implicit(f"{kind}[{i}]", f"no {kind.upper()} at organisation level {i} allows the request")

    if layers.vpc_endpoint is not None and not layers.vpc_endpoint.allows:
        return implicit("vpc_endpoint", "the VPC endpoint's policy does not allow the request")
    grant = layers.resource_grant
    if anonymous:
        if grant is Grant.NONE:
            return implicit("resource", "an anonymous request is allowed only by a resource-based policy "
                                        "that allows everyone (Principal \"*\")")
        return Decision(DecisionKind.ALLOW, "resource", allows, missing_keys, "allowed by the resource policy")

    boundary_ok = layers.permissions_boundary is None or bool(layers.permissions_boundary.allows)
    session_ok = layers.session is None or bool(layers.session.allows)
    identity_allows = bool(layers.identity.allows)

    def limiting_layer() -> Decision:
        if not boundary_ok:
            return implicit("permissions_boundary", "the permissions boundary does not allow the request")
        return implicit("session", "the session policy does not allow the request")

    identity_path = identity_allows and boundary_ok and session_ok
    if must_allow in service_rules.LIMITED_BY_BOUNDARY and grant is Grant.DIRECT:
        grant = Grant.BOUNDED
    if same_account:
        if must_allow and grant is Grant.NONE:  # the identity path counts only if the resource's policy delegates
            return implicit(service_rules.RULE_NAMES[must_allow], service_rules.RULE_REASONS[must_allow])
        if identity_path or grant is Grant.DIRECT or (grant is Grant.BOUNDED and boundary_ok and session_ok):
            layer = "identity" if identity_path else "resource"
            return Decision(DecisionKind.ALLOW, layer, allows, missing_keys, f"allowed by the {layer} policies")
        if identity_allows or grant is Grant.BOUNDED:
            return limiting_layer()
        return implicit("identity", "no identity-based or resource-based policy allows the request")

    if not identity_allows:
        return implicit("identity", "cross-account: no identity-based policy allows the request")
    if not identity_path:
        return limiting_layer()
    if grant is Grant.NONE:
        if must_allow:
            return implicit(service_rules.RULE_NAMES[must_allow], service_rules.RULE_REASONS[must_allow])
        return implicit("resource", "cross-account: the resource's policy does not allow the caller or its account")
    return Decision(DecisionKind.ALLOW, "identity", allows, missing_keys,
                    "allowed by the identity and resource policies")
