"""A whole policy store compiled into one engine.

Every policy the store uses (managed, inline, group, boundary, SCP, RCP,
resource and trust policies) is compiled once, whatever the number of
principals that share it. A request resolves its layers to policy numbers
without compiling anything: its principal (a role, a user, or the role of an
assumed-role session) to its identity policies, boundary and SCP levels; its
resource to its policy (an S3 object's bucket) and its owner's RCP levels.
What the store knows of the principal replaces what the request says of it
(``facts``). An anonymous caller has an identity of its own, with no layers; a
request's ``aws:SourceVpce`` adds the policy of the endpoint it names. Building
one costs what compiling the store's distinct policies costs; memory grows with
distinct policies, not with principals.
"""
from __future__ import annotations

from .compile import CompiledPolicies, Profile, collector_paused, profiles_of
from .decision import Decision
from .memo import remember
from .principals import Caller, statement_grant
from .request import PolicySet
from .service_rules import ANONYMOUS, SOURCE_VPCE
from .store import PolicyStore, unknown_principal


class CompiledStore(CompiledPolicies):
    """Evaluates requests against a store. Immutable once built; safe to share between threads.

    An unknown principal is an implicit deny decided by ``principal``, not an error.
    """

    @collector_paused
    def __init__(self, store: PolicyStore) -> None:
        self.store = store
        policies = store.policies_in_use()
        numbers = {id(policy): number for number, policy in enumerate(policies)}
        # One principal's or one resource's policies grow in number with the store: scanned, not indexed.
        private = [*store.resource_policies.values(),
                   *(p for holder in (*store.principals.values(), *store.groups.values())
                     for p in holder.inline_policies.values())]
        super().__init__(policies, frozenset(numbers[id(p)] for p in private if id(p) in numbers),
                         (SOURCE_VPCE,) if store.vpc_endpoints else ())
        self.reads_endpoints = bool(store.vpc_endpoints)
        self._number = lambda policy: numbers[id(policy)]
        identities: dict[tuple, int] = {}
        self._identity_of: dict[str, int] = {}  # principal ARN -> identity class
        self._identity_sets: list[PolicySet] = []  # identity class -> its identity, boundary and SCP layers
        for record in store.principals.values():
            policy_set = store.policy_set(record.arn, "*", record.account)
            key = (tuple(map(id, policy_set.identity)), tuple(map(id, policy_set.permissions_boundary or ())),
                   policy_set.permissions_boundary is None,
                   tuple(tuple(map(id, level)) for level in policy_set.scp or ()), policy_set.scp is None)
            if key not in identities:
                identities[key] = len(self._identity_sets)
                self._identity_sets.append(policy_set)
            self._identity_of[record.arn] = identities[key]
        owners: dict[tuple | None, int] = {None: 0}
        self._owner_levels: list = [None]  # owner class -> RCP levels
        self._owner_of: dict[str, int] = {}  # account in the organisation -> owner class
        organization = store.organization
        for account in organization.account_paths if organization else ():
            levels = organization.rcp_levels(account)
            key = None if levels is None else tuple(tuple(map(id, level)) for level in levels)
            if key not in owners:
                owners[key] = len(self._owner_levels)
                self._owner_levels.append(levels)
            self._owner_of[account] = owners[key]
        self._callers: dict[str, tuple | None] = {}
        self._resources: dict[str, tuple[int, int | None]] = {}
        self._identity_profiles = [profiles_of(layers, self._number)[0] for layers in self._identity_sets]
        self._anonymous = len(self._identity_profiles)  # the identity of anonymous callers
        self._identity_profiles.append(Profile.of([], anonymous=True))
        self._resource_profiles: dict[tuple[int, int], Profile] = {}
        self._grants: dict[tuple[str, int], bytes] = {}

    def _unknown(self, principal: str) -> Decision:
        return unknown_principal(principal)

    # The resolver (see ``compile.CompiledPolicies``).
    def caller(self, principal: str) -> tuple[str, int, int, tuple, bool] | None:
        view = self._callers.get(principal, False)
        if view is False:
            caller = Caller.parse(principal)
            record = self.store.principal(principal)
            if caller.kind == ANONYMOUS:
                view = ("", self._anonymous, 0, self._fact_entries(self.store.facts(principal)), False)
            else:
                view = None if record is None else (
                    caller.account, self._identity_of[record.arn], self._owner_of.get(caller.account, 0),
                    self._fact_entries(self.store.facts(principal)), caller.kind == "assumed-role")
            remember(self._callers, principal, view)
        return view

    def _fact_entries(self, facts: dict) -> tuple[tuple[int, tuple[str, ...], bool], ...]:
        """The facts some policy tests, as the converter takes them: (key id, values, is a list)."""
        return tuple((self.key_ids[key], (value,) if isinstance(value, str) else tuple(value),
                      not isinstance(value, str)) for key, value in facts.items() if key in self.key_ids)

    def resource(self, resource: str) -> tuple[int, int | None]:
        place = self._resources.get(resource)
        if place is None:
            policy = self.store.resource_policy(resource)
            fields = resource.split(":", 5)
            owner = self.owner(fields[4]) if len(fields) == 6 and fields[4] else None
            place = (-1 if policy is None else self._number(policy)), owner
            remember(self._resources, resource, place)
        return place

    def owner(self, account: str) -> int:
        return self._owner_of.get(account, 0)

    def identity_profile(self, identity: int) -> Profile:
        return self._identity_profiles[identity]

    def resource_profile(self, resource_policy: int, owner: int) -> Profile:
        key = (resource_policy, owner)
        profile = self._resource_profiles.get(key)
        if profile is None:
            resource = None if resource_policy < 0 else self.policies[resource_policy]
            profile = profiles_of(PolicySet(resource=resource, rcp=self._owner_levels[owner]), self._number)[1]
            remember(self._resource_profiles, key, profile)
        return profile

    def grants(self, principal: str, identity: int, resource_policy: int) -> bytes:
        grants = self._grants.get((principal, resource_policy))
        if grants is None:
            caller = Caller.parse(principal)
            has_boundary = self._identity_profiles[identity].has_boundary
            grants = bytes(statement_grant(statement, caller, has_boundary)
                           for statement in self.policies[resource_policy].statements)
            remember(self._grants, (principal, resource_policy), grants)
        return grants

    def endpoint(self, source_vpce: str | None) -> int:
        policy = self.store.vpc_endpoint(source_vpce)
        return -1 if policy is None else self._number(policy)

    def get_stats(self) -> dict:
        """Sizes of the compiled tables, and how many principals share how many identities."""
        return {**super().get_stats(), "principals": len(self._identity_of), "identities": len(self._identity_sets)}
