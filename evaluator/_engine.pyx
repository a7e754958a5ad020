# cython: language_level=3, embedsignature=True
"""The compiled engine's hot path: candidate statements from two indexes, then conditions, then IAM's rule.

An engine holds the statements of many policies (one policy set, or a whole
store); each statement knows its policy. A request names a *profile*: the
role every policy plays for it (identity, resource, boundary, session, or an
SCP or RCP level; a policy may play several). For one request the resource
trie marks the statements whose Resource (or NotResource) patterns match; the
action trie yields the statements whose Action patterns match (NotAction
statements are candidates unless one of their patterns matched); a candidate
whose policy plays no role for the request is dropped at once; the rest are
checked further (resource, the caller for resource-policy statements,
conditions), and the layers are combined exactly as ``decision.combine``
does. Everything after the batch's conversion runs in C without the GIL.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport INT32_MAX, int32_t, int64_t, intptr_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from ._arntrie cimport ArnTrie, at_caches, at_free_scratch, at_grown_bytes
from ._conditions cimport ConditionSet
from ._globtrie cimport GlobTrie, gt_cache, gt_free_scratch, gt_scratch_bytes
from ._identity cimport identity_clear, identity_get, identity_put, identity_table
from ._pattern cimport PatternSet, pseg
from ._request cimport (N_FIELDS, account_field, arn_account, arn_fields, checked_action, checked_resource,
                       request_fields, shown, valid_action)
from ._text cimport MAX_PROBES, hash_text
from ._types cimport cstr, ctx_entry, prefetch

import os
from collections.abc import Mapping

from . import service_rules
from .principals import RequestError
from ._request import context_text, text

# The roles a policy plays for a request (the layers of ``decision.Layers``).
LAYER_IDENTITY, LAYER_RESOURCE, LAYER_BOUNDARY, LAYER_SESSION, LAYER_SCP, LAYER_RCP, LAYER_ENDPOINT = range(7)
# Statement flags.
FLAG_DENY = 1
FLAG_NOT_ACTION = 2
FLAG_NOT_RESOURCE = 4
FLAG_ANY_RESOURCE = 8  # Resource holds "*" or is absent: every request resource matches, "*" too
FLAG_NOT_RESOURCE_STAR = 16  # NotResource holds "*": it excludes every request resource
FLAG_RESOURCE_INDEXED = 32  # only fixed Resource patterns: found through the resource trie alone
# Decision codes: ``decision.DecisionKind.code`` (the proto's numbers), and FAILED, the engine's own mark
# for a request it could not evaluate (denied; the Python APIs report it as ImplicitDeny with an error).
ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, FAILED = 1, 2, 3, 4
# Rows that never reach the engine: converted with an error, or a principal the resolver does not know.
ROW_FAILED, ROW_UNKNOWN = -1, -2

cdef enum:
    R_IDENTITY = 1
    R_RESOURCE = 2
    R_BOUNDARY = 4
    R_SESSION = 8
    R_ENDPOINT = 16
    F_DENY = 1
    F_NOT_ACTION = 2
    F_NOT_RESOURCE = 4
    F_ANY_RESOURCE = 8
    F_NOT_RESOURCE_STAR = 16
    F_RESOURCE_INDEXED = 32
    D_ALLOW = 1
    D_EXPLICIT = 2
    D_IMPLICIT = 3
    D_FAILED = 4
    # principals.Grant
    G_NONE = 0
    G_ACCOUNT = 1
    G_BOUNDED = 2
    G_DIRECT = 3
    MAX_LEVELS = 64
    SPARE_SCRATCH = 8
    NOGIL_LOOP = 4096  # a C loop longer than this lets other threads run: shorter ones would pay more to switch
    ENGINE_MAGIC = 0x49414d45
    C_ROW_FAILED = -1
    C_ROW_UNKNOWN = -2

cdef int64_t OWNER_SPAN = 1LL << 32  # owner classes are numbers below it

# The per-service rules (``service_rules``): flags of a batch's distinct actions and kinds of its resources.
cdef uint8_t RULE_ALWAYS = service_rules.ALWAYS
cdef uint8_t RULE_RCP_APPLIES = service_rules.RCP_APPLIES
cdef int RULE_MUST_ALLOW_SHIFT = service_rules.MUST_ALLOW_SHIFT
cdef uint8_t RULE_BOUNDED_KINDS = sum(1 << kind for kind in service_rules.LIMITED_BY_BOUNDARY)
cdef tuple RESOURCE_KINDS = tuple((service.encode(), start.encode(), kind)
                                  for service, start, kind in service_rules.RESOURCE_KINDS)
# The same as C arrays (pointing into RESOURCE_KINDS' bytes), read per distinct resource without the GIL.
cdef enum: MAX_RESOURCE_KINDS = 8
cdef enum: ENTRY_ACTIONS = 2  # action pattern ids kept in a resource_entry_t: most statements name one or two
cdef const char* KIND_SERVICE[MAX_RESOURCE_KINDS]
cdef const char* KIND_START[MAX_RESOURCE_KINDS]
cdef Py_ssize_t KIND_SERVICE_LEN[MAX_RESOURCE_KINDS]
cdef Py_ssize_t KIND_START_LEN[MAX_RESOURCE_KINDS]
cdef uint8_t KIND_OF[MAX_RESOURCE_KINDS]
cdef Py_ssize_t N_RESOURCE_KINDS = len(RESOURCE_KINDS)


cdef int _load_resource_kinds() except -1:
    cdef bytes service, start
    if N_RESOURCE_KINDS > MAX_RESOURCE_KINDS:
        raise ImportError("service_rules.RESOURCE_KINDS has more kinds than the engine holds")
    for k, (service, start, kind) in enumerate(RESOURCE_KINDS):
        KIND_SERVICE[k], KIND_SERVICE_LEN[k] = <const char*>service, len(service)
        KIND_START[k], KIND_START_LEN[k] = <const char*>start, len(start)
        KIND_OF[k] = kind
    return 0


_load_resource_kinds()

# Spare scratch buffers kept by all engines of the process, and the most they may hold (bytes
# allocated, an upper bound on what they commit); changed with the GIL held.
cdef Py_ssize_t spare_held = 0
cdef Py_ssize_t spare_budget = 512 * 1024 * 1024


def set_spare_scratch_budget(Py_ssize_t nbytes):
    """Bound the bytes of spare scratch buffers the process keeps across all engines; a buffer
    released past it is freed (the next request allocates one again and warms its DFA caches)."""
    global spare_budget
    if nbytes < 0:
        raise ValueError("the spare scratch budget is a number of bytes, 0 or more")
    spare_budget = nbytes


def spare_scratch_bytes():
    """Bytes of spare scratch buffers the process keeps now."""
    return spare_held


ctypedef struct statement_t:
    int32_t policy           # the policy it belongs to
    uint8_t flags
    int32_t group            # condition group, -1 without conditions
    int32_t dyn_start        # first of this statement's resource patterns with policy variables
    int32_t dyn_count
    int32_t slot             # its index in its policy (the caller's grants of a resource policy)
    int32_t act_start        # this statement's action pattern ids in Engine.statement_actions
    int32_t act_count
    int32_t res_start        # its fixed resource pattern ids in Engine.statement_resources (private policies)
    int32_t res_count


ctypedef struct resource_entry_t:  # a statement found through a fixed resource pattern: what the hot loop reads first
    int32_t statement
    int32_t policy
    int32_t act_start        # as in statement_t
    int32_t act_count
    int32_t actions[ENTRY_ACTIONS]  # its action pattern ids, when it has no more
    uint8_t flags
    uint8_t marked           # its resource mark is kept: it is not resource-indexed (resource_applies reads the mark),
                             # or it has several fixed patterns (the mark finds it once)


ctypedef struct role_t:      # what one policy is for the requests of a profile
    int32_t policy
    uint8_t bits             # R_* roles
    uint64_t scp             # SCP levels it stands at
    uint64_t rcp             # RCP levels it stands at


ctypedef struct profile_t:   # the layers of a request, as policies and what is present
    int32_t role_start       # its roles in Batch.roles
    int32_t role_count
    uint8_t has_boundary
    uint8_t has_session
    uint8_t has_endpoint     # a VPC endpoint policy stands in it, which must allow (a resource's profile)
    uint8_t anonymous        # the caller signed nothing: only resource policies that name everyone allow
                             # (a caller's profile)
    uint8_t n_scp
    uint8_t n_rcp


ctypedef struct request_t:
    cstr action
    cstr resource
    int32_t action_ix        # the action among the batch's distinct actions (Batch.actions)
    int32_t resource_ix      # the resource among the batch's distinct resources (Batch.resources)
    int32_t caller           # row of the batch's caller table; ROW_FAILED or ROW_UNKNOWN: never decided
    int32_t identity_profile # index in Batch.profiles: the caller's identity layers (identity, boundary, session, SCPs)
    int32_t resource_profile # index in Batch.profiles: the resource's layers (its policy, its owner's RCPs)
    int32_t grants           # offset of the caller's grants for the profile's resource policy; -1: none
    int32_t endpoint_grants  # likewise for the VPC endpoint policy of its resource profile; -1: none
    uint8_t same_account
    int32_t ctx_start        # this request's context entries in the batch
    int32_t ctx_count


ctypedef struct matches_t:   # a batch's distinct actions (or resources) and the trie's patterns matching each
    cstr* texts
    Py_ssize_t n
    uint8_t* rules           # per text: service_rules.action_flags (actions) or resource_kind (resources)
    int32_t* start           # n + 1 offsets into ids
    int32_t* ids


ctypedef struct keyed_entry:
    int32_t key
    ctx_entry entry


ctypedef struct mark_t:      # per policy: its roles for the profile last marked, valid when gen matches
    uint64_t gen
    uint8_t bits
    uint64_t scp
    uint64_t rcp


ctypedef struct scratch_t:
    uint32_t magic           # ENGINE_MAGIC while owned by an engine
    void* owner              # the Engine it was made for
    Py_ssize_t nbytes        # bytes allocated for it, as of its last release (the tries' DFA caches grow)
    Py_ssize_t fixed_bytes   # the part that does not grow
    void* action_scratch
    void* resource_scratch
    int32_t* action_ids
    int32_t* resource_ids
    uint64_t* action_mark    # per statement: generation in which an action pattern matched it
    uint64_t* resource_mark  # per statement: generation in which a static resource pattern matched it (kept for
                             # private statements and resource_entry_t.marked ones)
    uint64_t* pattern_mark   # per action pattern: generation in which it matched
    uint64_t* resource_pattern_mark  # per fixed resource pattern: generation in which it matched
    uint64_t gen
    mark_t* policy_mark      # per policy: its roles for the current profile
    uint64_t profile_gen
    uint64_t marked_batch    # serial of the batch whose profiles are marked, 0: none
    int32_t marked_identity  # the profiles marked
    int32_t marked_resource
    bint marked_private      # whether they name a private policy (whose statements are scanned)
    int32_t* candidates
    ctx_entry* ctx           # dense context of the current request; count -1 between requests
    pseg* condition_scratch
    pseg* pattern_scratch
    int32_t* group_missing


ctypedef struct explain_t:   # what one request's explanation needs; NULL when not explaining
    int32_t* applicable
    int32_t n_applicable
    int32_t* needy           # statements that may have needed context keys the request did not give: a policy
    int32_t n_needy          # variable did not resolve, or a condition met an absent key (``reference.needed_keys``)
    int32_t failed_statement # the statement whose condition could not read a context value


cdef extern from *:
    """
    static inline int engine_is_star(const char* p, Py_ssize_t n) { return n == 1 && p[0] == '*'; }
    """
    int engine_is_star(const char* p, Py_ssize_t n) nogil


cdef class PatternStatements:
    """The distinct patterns of one trie, numbered as first added, and per pattern the statements found
    through it: what ``Engine`` indexes statements by. Built while compiling, where most entries repeat a
    pattern already known: looked up here in C rather than with a Python call each."""

    cdef readonly object trie    # a GlobTrie (actions) or an ArnTrie (resources)
    cdef readonly list lists     # per pattern id, the statements found through it, ascending
    cdef dict _ids               # pattern text (lower-cased for a case-insensitive trie) -> id
    cdef bint _lower

    def __init__(self, trie, bint lower):
        self.trie = trie
        self.lists = []
        self._ids = {}
        self._lower = lower

    def add(self, texts, number):
        """The ids of ``texts``, each new one added to the trie; ``number`` (a statement, or None: one found
        otherwise) joins the list of each."""
        cdef list ids = []
        cdef list statements
        for text in texts:
            if self._lower:
                text = text.lower()
            pattern_id = self._ids.get(text)
            if pattern_id is None:
                pattern_id = self._ids[text] = len(self.lists)
                self.lists.append([])
                self.trie.add(text, pattern_id)
            if number is not None:
                statements = self.lists[pattern_id]
                if not statements or statements[-1] != number:
                    statements.append(number)
            ids.append(pattern_id)
        return tuple(ids)


cdef uint64_t _batch_serial = 0

cdef class Batch


cdef class Engine:
    """Compiled policies' C tables; built once by ``compile.py``, immutable after."""

    cdef GlobTrie action_trie
    cdef ArnTrie resource_trie
    cdef PatternSet patterns
    cdef ConditionSet conditions
    cdef statement_t* statements
    cdef readonly int32_t n_statements
    cdef readonly int32_t n_policies
    cdef int32_t* action_start       # CSR: action pattern id -> statements
    cdef int32_t* action_statements
    cdef int32_t* resource_start     # CSR: static resource pattern id -> statements
    cdef resource_entry_t* resource_entries
    cdef int32_t* statement_actions  # per statement, its action pattern ids (statement_t.act_start)
    cdef int32_t* statement_resources  # per statement, its fixed resource pattern ids (statement_t.res_start)
    cdef int32_t n_resource_patterns
    cdef uint8_t* private            # per policy: its statements are scanned per request, not indexed
    cdef int32_t* private_start      # CSR: private policy -> its statements
    cdef int32_t* private_statements
    cdef readonly int32_t n_statement_actions
    cdef int32_t n_action_patterns
    cdef int32_t* not_action         # statements with NotAction that the action side finds
    cdef int32_t n_not_action
    cdef int32_t* dynamic_patterns   # PatternSet indices, per statement a run [dyn_start, +dyn_count)
    cdef readonly int32_t n_keys
    cdef uint8_t* principal_keys     # per key id: a key AWS sets for the principal (``facts``)
    cdef int32_t* policy_sizes       # per policy: its number of statements
    cdef int32_t max_group_missing
    cdef scratch_t* spare[SPARE_SCRATCH]  # scratch kept for reuse: allocating and zeroing it is costly
    cdef int n_spare
    cdef Py_ssize_t table_bytes       # bytes of the C tables above, tries and condition sets included

    def __cinit__(self):
        self.statements = NULL
        self.action_start = self.action_statements = NULL
        self.resource_start = NULL
        self.resource_entries = NULL
        self.not_action = self.dynamic_patterns = self.statement_actions = NULL
        self.principal_keys = NULL
        self.policy_sizes = NULL
        self.statement_resources = self.private_start = self.private_statements = NULL
        self.private = NULL

    def __dealloc__(self):
        global spare_held
        while self.n_spare:
            self.n_spare -= 1
            spare_held -= self.spare[self.n_spare].nbytes
            free_scratch(self.spare[self.n_spare])
        free(self.statements)
        free(self.action_start)
        free(self.action_statements)
        free(self.resource_start)
        free(self.resource_entries)
        free(self.not_action)
        free(self.dynamic_patterns)
        free(self.statement_actions)
        free(self.principal_keys)
        free(self.policy_sizes)
        free(self.statement_resources)
        free(self.private)
        free(self.private_start)
        free(self.private_statements)

    def __init__(self, statements, PatternStatements actions, PatternStatements resources,
                 list dynamic, PatternSet patterns, ConditionSet conditions, dict key_ids, int n_policies,
                 principal_key_ids, private_policies=()):
        """Take the tables built in Python.

        ``statements``: (policy, flags, group, dynamic pattern indices, index in its policy,
        action pattern ids, fixed resource pattern ids) per statement; ``actions``/``resources``:
        the frozen tries and, per pattern id, the statements found through it (resource-indexed
        statements are absent from the former's lists, statements of private policies from both);
        ``principal_key_ids``: the key ids of keys AWS sets for the principal;
        ``private_policies``: the policies whose statements are scanned for the requests whose
        profiles name them instead of indexed (a policy of one principal or one resource: their
        number grows with the store, which indexes would make every request pay for).
        """
        self.action_trie = actions.trie
        self.resource_trie = resources.trie
        cdef list action_lists = actions.lists, resource_lists = resources.lists
        self.patterns = patterns
        self.conditions = conditions
        self.n_keys = len(key_ids)
        self.n_policies = n_policies
        self.n_statements = len(statements)
        self.statements = <statement_t*>calloc(max(1, self.n_statements), sizeof(statement_t))
        self.dynamic_patterns = <int32_t*>calloc(max(1, len(dynamic)), sizeof(int32_t))
        self.principal_keys = <uint8_t*>calloc(max(1, self.n_keys), sizeof(uint8_t))
        self.policy_sizes = <int32_t*>calloc(max(1, n_policies), sizeof(int32_t))
        if self.statements == NULL or self.dynamic_patterns == NULL or self.principal_keys == NULL \
                or self.policy_sizes == NULL:
            raise MemoryError()
        for i, p in enumerate(dynamic):
            self.dynamic_patterns[i] = p
        for k in principal_key_ids:
            if not 0 <= k < self.n_keys:
                raise ValueError("principal key id out of range")
            self.principal_keys[k] = 1
        cdef int32_t s = 0, start = 0
        self.n_action_patterns = len(action_lists)
        self.n_statement_actions = sum(len(st[5]) for st in statements)
        self.statement_actions = <int32_t*>calloc(max(1, self.n_statement_actions), sizeof(int32_t))
        self.statement_resources = <int32_t*>calloc(max(1, sum(len(st[6]) for st in statements)), sizeof(int32_t))
        self.private = <uint8_t*>calloc(max(1, n_policies), sizeof(uint8_t))
        if self.statement_actions == NULL or self.statement_resources == NULL or self.private == NULL:
            raise MemoryError()
        self.n_resource_patterns = len(resource_lists)
        for p in private_policies:
            if not 0 <= p < n_policies:
                raise ValueError("private policy out of range")
            self.private[p] = 1
        cdef int32_t res_at = 0
        cdef Py_ssize_t policy, pid  # C numbers: checked and stored without Python arithmetic
        for policy, flags, group, dyn, slot, action_ids, resource_ids in statements:
            if not 0 <= policy < n_policies:
                raise ValueError("statement policy out of range")
            self.statements[s].act_start = start
            self.statements[s].act_count = len(action_ids)
            for pid in action_ids:
                if not 0 <= pid < self.n_action_patterns:
                    raise ValueError("action pattern id out of range")
                self.statement_actions[start] = pid
                start += 1
            self.statements[s].res_start = res_at
            self.statements[s].res_count = len(resource_ids)
            for pid in resource_ids:
                if not 0 <= pid < self.n_resource_patterns:
                    raise ValueError("resource pattern id out of range")
                self.statement_resources[res_at] = pid
                res_at += 1
            self.statements[s].policy = policy
            self.policy_sizes[policy] += 1
            self.statements[s].flags = flags
            self.statements[s].group = group
            self.statements[s].dyn_start = dyn[0] if dyn else 0
            self.statements[s].dyn_count = len(dyn)
            self.statements[s].slot = slot
            s += 1
        for s in range(self.n_statements):
            if not 0 <= self.statements[s].slot < self.policy_sizes[self.statements[s].policy]:
                raise ValueError("a statement's index lies outside its policy")
        _csr(action_lists, &self.action_start, &self.action_statements)
        self.set_resource_entries(resource_lists)
        not_action = [i for i, st in enumerate(statements)
                      if st[1] & F_NOT_ACTION and not st[1] & F_RESOURCE_INDEXED and not self.private[st[0]]]
        private_lists = [[] for _ in range(n_policies)]
        for i, st in enumerate(statements):
            if self.private[st[0]]:
                private_lists[st[0]].append(i)
        _csr(private_lists, &self.private_start, &self.private_statements)
        self.n_not_action = len(not_action)
        self.not_action = <int32_t*>calloc(max(1, len(not_action)), sizeof(int32_t))
        if self.not_action == NULL:
            raise MemoryError()
        for i, s in enumerate(not_action):
            self.not_action[i] = s
        self.max_group_missing = max(1, conditions.max_missing_any())
        self.table_bytes = (self.action_trie.nbytes + self.resource_trie.nbytes + conditions.nbytes
                            + self.n_statements * (sizeof(statement_t) + 2 * sizeof(int32_t))
                            + (len(dynamic) + n_policies + self.n_statement_actions + res_at + len(not_action)
                               + len(action_lists) + len(resource_lists) + 3) * sizeof(int32_t)
                            + sum(map(len, action_lists)) * sizeof(int32_t)
                            + sum(map(len, resource_lists)) * sizeof(resource_entry_t)
                            + self.n_keys + 2 * n_policies)

    cdef int set_resource_entries(self, list resource_lists) except -1:
        """The statements of each fixed resource pattern, each with what the hot loop reads before it is a
        candidate: one read a statement, where a large engine's tables are read at random."""
        cdef int32_t* listed = NULL
        cdef resource_entry_t* entry
        cdef const statement_t* st
        cdef int32_t j, k
        _csr(resource_lists, &self.resource_start, &listed)
        try:
            self.resource_entries = <resource_entry_t*>calloc(max(1, self.resource_start[len(resource_lists)]),
                                                              sizeof(resource_entry_t))
            if self.resource_entries == NULL:
                raise MemoryError()
            for j in range(self.resource_start[len(resource_lists)]):
                st = &self.statements[listed[j]]
                entry = &self.resource_entries[j]
                entry.statement = listed[j]
                entry.policy = st.policy
                entry.act_start = st.act_start
                entry.act_count = st.act_count
                for k in range(min(st.act_count, ENTRY_ACTIONS)):
                    entry.actions[k] = self.statement_actions[st.act_start + k]
                entry.flags = st.flags
                entry.marked = not st.flags & F_RESOURCE_INDEXED or st.res_count > 1
        finally:
            free(listed)
        return 0

    @property
    def nbytes(self):
        """Bytes of C memory the engine holds: its tables and its spare scratch buffers."""
        cdef Py_ssize_t total = self.table_bytes
        cdef int k
        for k in range(self.n_spare):
            total += self.spare[k].nbytes
        return total

    def dfa_stats(self):
        """The lazy-DFA caches of the spare scratch buffers, per trie: states cached now, states
        built, times emptied, times grown, inputs finished by the NFA because the cache filled
        up, inputs matched by the NFA alone (thrashing), inputs matched, bytes of cache."""
        names = ("states", "built", "flushes", "grows", "fallbacks", "nfa_matches", "matches", "bytes")
        stats = {"action": dict.fromkeys(names, 0), "resource": dict.fromkeys(names, 0)}
        cdef const gt_cache* caches[4]
        cdef const gt_cache* cache
        cdef int k, j, n
        for k in range(self.n_spare):
            caches[0] = <const gt_cache*>self.spare[k].action_scratch
            n = 1 + at_caches(self.spare[k].resource_scratch, caches + 1)
            for j in range(n):
                cache = caches[j]
                for name, value in zip(names, (max(cache.n_states - 1, 0), cache.built, cache.flushes, cache.grows,
                                               cache.fallbacks, cache.nfa_calls, cache.calls, cache.block_bytes)):
                    stats["action" if j == 0 else "resource"][name] += value
        return stats

    # ---------------------------------------------------------------- scratch

    cdef scratch_t* new_scratch(self) except NULL:
        """Per-thread working memory; every buffer zero-filled, the dense context all absent."""
        cdef scratch_t* sc = <scratch_t*>calloc(1, sizeof(scratch_t))
        if sc == NULL:
            raise MemoryError()
        cdef int32_t n = max(1, self.n_statements)
        sc.action_scratch = calloc(1, self.action_trie.scratch_size())
        sc.resource_scratch = self.resource_trie.new_scratch()
        sc.action_ids = <int32_t*>malloc(max(1, self.action_trie.result_capacity()) * sizeof(int32_t))
        sc.resource_ids = <int32_t*>malloc(max(1, self.resource_trie.result_capacity()) * sizeof(int32_t))
        sc.action_mark = <uint64_t*>calloc(n, sizeof(uint64_t))
        sc.resource_mark = <uint64_t*>calloc(n, sizeof(uint64_t))
        sc.pattern_mark = <uint64_t*>calloc(max(1, self.n_action_patterns), sizeof(uint64_t))
        sc.resource_pattern_mark = <uint64_t*>calloc(max(1, self.n_resource_patterns), sizeof(uint64_t))
        sc.policy_mark = <mark_t*>calloc(max(1, self.n_policies), sizeof(mark_t))
        sc.candidates = <int32_t*>malloc(n * sizeof(int32_t))
        sc.ctx = <ctx_entry*>calloc(max(1, self.n_keys), sizeof(ctx_entry))
        sc.condition_scratch = <pseg*>calloc(self.conditions.scratch_segments(), sizeof(pseg))
        sc.pattern_scratch = <pseg*>calloc(self.patterns.max_segments(), sizeof(pseg))
        sc.group_missing = <int32_t*>malloc(self.max_group_missing * sizeof(int32_t))
        if (sc.action_scratch == NULL or sc.resource_scratch == NULL or sc.action_ids == NULL
                or sc.resource_ids == NULL or sc.action_mark == NULL or sc.resource_mark == NULL
                or sc.pattern_mark == NULL or sc.policy_mark == NULL or sc.resource_pattern_mark == NULL
                or sc.candidates == NULL or sc.ctx == NULL
                or sc.condition_scratch == NULL or sc.pattern_scratch == NULL or sc.group_missing == NULL):
            free_scratch(sc)
            raise MemoryError()
        for k in range(self.n_keys):
            sc.ctx[k].count = -1
        sc.fixed_bytes = (sizeof(scratch_t) + self.action_trie.scratch_size() + self.resource_trie.scratch_size()
                          + (self.action_trie.result_capacity() + self.resource_trie.result_capacity()
                             + n + self.max_group_missing) * sizeof(int32_t)
                          + (2 * n + self.n_action_patterns + self.n_resource_patterns) * sizeof(uint64_t)
                          + self.n_policies * sizeof(mark_t) + self.n_keys * sizeof(ctx_entry)
                          + (self.conditions.scratch_segments() + self.patterns.max_segments()) * sizeof(pseg))
        sc.nbytes = sc.fixed_bytes
        sc.magic = ENGINE_MAGIC
        sc.owner = <void*>self
        return sc

    cdef scratch_t* acquire(self) except NULL:
        """A scratch for one thread's use; called with the GIL held, which guards the spares."""
        cdef scratch_t* sc
        global spare_held
        if self.n_spare:
            self.n_spare -= 1
            sc = self.spare[self.n_spare]
            spare_held -= sc.nbytes
        else:
            sc = self.new_scratch()
        if sc.magic != ENGINE_MAGIC or sc.owner != <void*>self:
            raise RuntimeError("a scratch buffer does not belong to this engine")
        sc.marked_batch = 0  # profiles are numbered per batch: mark afresh
        return sc

    cdef void release(self, scratch_t* sc) noexcept:
        """Keep the scratch for reuse while this engine and the process have room (GIL held)."""
        global spare_held
        sc.nbytes = sc.fixed_bytes + gt_scratch_bytes(sc.action_scratch) + at_grown_bytes(sc.resource_scratch)
        if self.n_spare < SPARE_SCRATCH and spare_held + sc.nbytes <= spare_budget:
            self.spare[self.n_spare] = sc
            self.n_spare += 1
            spare_held += sc.nbytes
        else:
            free_scratch(sc)

    cdef int check_batch(self, Batch batch, Py_ssize_t start, Py_ssize_t stop) except -1:
        """A batch is decided only by the engine it was converted for, and only inside its rows
        (as Hyperscan checks that a scratch belongs to its database)."""
        if batch.engine is not self or batch.n_keys != self.n_keys or batch.n_policies != self.n_policies:
            raise ValueError("this batch was converted for another engine")
        if not 0 <= start <= stop <= batch.n:
            raise IndexError("range outside the batch")
        return 0

    cdef int match_distinct(self, Batch batch, bint decide=False) except -1:
        """Match each distinct action and resource of a batch once (without the GIL), for every
        request to read: request logs repeat both heavily. With ``decide``, decide the whole batch
        too, on the same scratch (the single-request path). The batch's value offsets become pointers
        first, in the same pass without the GIL."""
        cdef scratch_t* sc = self.acquire()
        cdef bint ok
        try:
            with nogil:
                batch.point_entries()
                ok = _match_all(self.action_trie, None, &batch.actions, sc.action_scratch, sc.action_ids) \
                    and _match_all(None, self.resource_trie, &batch.resources, sc.resource_scratch, sc.resource_ids)
                if ok and decide:
                    self.run(batch, 0, batch.n, sc)
            if not ok:
                raise MemoryError()
        finally:
            self.release(sc)
        return 0

    # ---------------------------------------------------------------- hot path

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline bint resource_applies(self, const statement_t* st, int32_t s, const request_t* rq,
                                      bint star_request, scratch_t* sc, bint* unresolvable) noexcept nogil:
        """Resource/NotResource of one statement against the request (variables resolved first)."""
        cdef bint dynamic_hit = False
        cdef int r
        cdef int32_t k
        for k in range(st.dyn_start, st.dyn_start + st.dyn_count):
            r = self.patterns.match(self.dynamic_patterns[k], rq.resource.ptr, rq.resource.len, sc.ctx,
                                    sc.pattern_scratch)
            if r == 2:
                unresolvable[0] = True
                return False
            if r == 1 and not star_request:
                dynamic_hit = True
        if st.flags & (F_NOT_RESOURCE | F_ANY_RESOURCE) == F_ANY_RESOURCE:
            return True  # without reading its mark: most statements the action side finds are these
        cdef bint static_hit = not star_request and sc.resource_mark[s] == sc.gen
        if st.flags & F_NOT_RESOURCE:
            return not (static_hit or dynamic_hit or (st.flags & F_NOT_RESOURCE_STAR))
        return static_hit or dynamic_hit or (st.flags & F_ANY_RESOURCE)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline bint actions_match(self, const int32_t* action_ids, int32_t act_count, uint8_t flags, scratch_t* sc,
                                   uint64_t gen) noexcept nogil:
        """Action/NotAction of one statement (its action pattern ids and flags), from the action patterns marked
        for this request."""
        cdef int32_t k
        cdef bint hit = False
        for k in range(act_count):
            if sc.pattern_mark[action_ids[k]] == gen:
                hit = True
                break
        return hit != <bint>(flags & F_NOT_ACTION)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void mark_profiles(self, Batch batch, const request_t* rq, scratch_t* sc) noexcept nogil:
        """Note what each policy is for the request: its identity and its resource profile (skipped
        when the last request noted the same two)."""
        if sc.marked_batch == batch.serial and sc.marked_identity == rq.identity_profile \
                and sc.marked_resource == rq.resource_profile:
            return
        sc.marked_batch = batch.serial
        sc.marked_identity = rq.identity_profile
        sc.marked_resource = rq.resource_profile
        sc.profile_gen += 1
        mark_roles(batch, &batch.profile_table[rq.identity_profile], sc)
        mark_roles(batch, &batch.profile_table[rq.resource_profile], sc)
        sc.marked_private = self.names_private(batch, &batch.profile_table[rq.identity_profile]) \
            or self.names_private(batch, &batch.profile_table[rq.resource_profile])

    cdef inline bint names_private(self, Batch batch, const profile_t* profile) noexcept nogil:
        """Whether a profile names a private policy: the requests of the others skip the scan of every role."""
        cdef int32_t r
        for r in range(profile.role_start, profile.role_start + profile.role_count):
            if self.private[batch.roles[r].policy]:
                return True
        return False

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int32_t scan_private(self, Batch batch, const profile_t* profile, scratch_t* sc, uint64_t gen,
                              int32_t n_candidates) noexcept nogil:
        """Add the statements of the profile's private policies whose actions and fixed resources
        match, from the patterns marked for this request; returns the new number of candidates."""
        cdef int32_t r, j, k, s, p
        cdef const statement_t* st
        for r in range(profile.role_start, profile.role_start + profile.role_count):
            p = batch.roles[r].policy
            if not self.private[p]:
                continue
            for j in range(self.private_start[p], self.private_start[p + 1]):
                s = self.private_statements[j]
                if sc.action_mark[s] == gen:  # scanned already for this request
                    continue
                sc.action_mark[s] = gen
                st = &self.statements[s]
                if not self.actions_match(self.statement_actions + st.act_start, st.act_count, st.flags, sc, gen):
                    continue
                for k in range(st.res_start, st.res_start + st.res_count):
                    if sc.resource_pattern_mark[self.statement_resources[k]] == gen:
                        sc.resource_mark[s] = gen
                        break
                if st.flags & F_RESOURCE_INDEXED and sc.resource_mark[s] != gen:
                    continue
                sc.candidates[n_candidates] = s
                n_candidates += 1
        return n_candidates


    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int decide(self, Batch batch, const request_t* rq, scratch_t* sc, explain_t* ex) noexcept nogil:
        """One request's decision code; with ``ex``, also its applicable statements and those that may have
        needed context keys."""
        cdef Py_ssize_t n, k
        cdef int32_t i, j, s, pid, n_candidates = 0, n_group_missing
        cdef const statement_t* st
        cdef const resource_entry_t* entry
        cdef const mark_t* mark
        cdef const keyed_entry* entries = batch.entries + rq.ctx_start
        cdef const uint8_t* grants = batch.grant_bytes + rq.grants if rq.grants >= 0 else NULL
        cdef const uint8_t* endpoint_grants = batch.grant_bytes + rq.endpoint_grants if rq.endpoint_grants >= 0 \
            else NULL
        cdef const profile_t* identity = &batch.profile_table[rq.identity_profile]
        cdef uint8_t action_rules = batch.actions.rules[rq.action_ix]
        if action_rules & RULE_ALWAYS and not identity.anonymous:
            return D_ALLOW
        cdef bint rcp_applies = action_rules & RULE_RCP_APPLIES
        cdef int must_allow = (action_rules >> RULE_MUST_ALLOW_SHIFT) & 3
        if must_allow != batch.resources.rules[rq.resource_ix] or rq.grants < 0:
            must_allow = 0
        cdef uint64_t rcp_marks

        cdef bint star_request = engine_is_star(rq.resource.ptr, rq.resource.len)
        cdef bint unresolvable
        cdef int held, result = -1
        cdef bint any_deny = False, identity_allow = False, boundary_allow = False, session_allow = False
        cdef bint endpoint_allow = False
        cdef uint64_t scp_allow = 0, rcp_allow = 0
        cdef uint8_t grant = G_NONE, names, bits
        self.mark_profiles(batch, rq, sc)
        cdef uint64_t profile_gen = sc.profile_gen
        sc.gen += 1
        cdef uint64_t gen = sc.gen

        for i in range(rq.ctx_count):
            sc.ctx[entries[i].key] = entries[i].entry
        # Action side: mark matching patterns; statements open to many resources become candidates.
        cdef const int32_t* matched = batch.actions.ids + batch.actions.start[rq.action_ix]
        n = batch.actions.start[rq.action_ix + 1] - batch.actions.start[rq.action_ix]
        for k in range(n):
            pid = matched[k]
            sc.pattern_mark[pid] = gen
            for j in range(self.action_start[pid], self.action_start[pid + 1]):
                s = self.action_statements[j]
                if sc.action_mark[s] != gen:
                    sc.action_mark[s] = gen
                    if not (self.statements[s].flags & F_NOT_ACTION) \
                            and sc.policy_mark[self.statements[s].policy].gen == profile_gen:
                        sc.candidates[n_candidates] = s
                        n_candidates += 1
        for i in range(self.n_not_action):
            s = self.not_action[i]
            if sc.action_mark[s] != gen and sc.policy_mark[self.statements[s].policy].gen == profile_gen:
                sc.candidates[n_candidates] = s
                n_candidates += 1
        # Resource side: mark statements whose fixed patterns match; resource-indexed ones
        # become candidates here when their actions match too.
        if not star_request:
            matched = batch.resources.ids + batch.resources.start[rq.resource_ix]
            n = batch.resources.start[rq.resource_ix + 1] - batch.resources.start[rq.resource_ix]
            # A large engine's tables are read at random: start every read of a statement before the first waits.
            for k in range(n):
                prefetch(&self.resource_start[matched[k]])
            for k in range(n):
                prefetch(&self.resource_entries[self.resource_start[matched[k]]])
            for k in range(n):
                pid = matched[k]
                sc.resource_pattern_mark[pid] = gen
                for j in range(self.resource_start[pid], self.resource_start[pid + 1]):
                    entry = &self.resource_entries[j]
                    s = entry.statement
                    if entry.marked:
                        if sc.resource_mark[s] == gen:
                            continue
                        sc.resource_mark[s] = gen
                    if entry.flags & F_RESOURCE_INDEXED and sc.policy_mark[entry.policy].gen == profile_gen \
                            and self.actions_match(&entry.actions[0] if entry.act_count <= ENTRY_ACTIONS
                                                   else self.statement_actions + entry.act_start,
                                                   entry.act_count, entry.flags, sc, gen):
                        prefetch(&self.statements[s])  # read when the candidates are decided
                        sc.candidates[n_candidates] = s
                        n_candidates += 1

        if sc.marked_private:
            n_candidates = self.scan_private(batch, &batch.profile_table[rq.identity_profile], sc, gen, n_candidates)
            n_candidates = self.scan_private(batch, &batch.profile_table[rq.resource_profile], sc, gen, n_candidates)

        for i in range(n_candidates):
            s = sc.candidates[i]
            st = &self.statements[s]
            mark = &sc.policy_mark[st.policy]
            bits = mark.bits
            rcp_marks = mark.rcp if rcp_applies else 0  # RCPs apply to some services only
            names = G_NONE
            if bits & R_RESOURCE:
                names = grants[st.slot] if grants != NULL else G_NONE
                if names == G_NONE:  # a resource-policy statement applies only to the callers it names
                    bits &= ~R_RESOURCE
            if bits & R_ENDPOINT and (endpoint_grants == NULL or endpoint_grants[st.slot] == G_NONE):
                bits &= ~R_ENDPOINT  # so does an endpoint policy's
            if bits == 0 and mark.scp == 0 and rcp_marks == 0:
                continue
            unresolvable = False
            if not (st.flags & F_RESOURCE_INDEXED) and not self.resource_applies(st, s, rq, star_request, sc,
                                                                                 &unresolvable):
                if unresolvable and ex != NULL:
                    ex.needy[ex.n_needy] = s
                    ex.n_needy += 1
                continue
            if st.group >= 0:
                n_group_missing = 0
                held = self.conditions.holds(st.group, sc.ctx, sc.group_missing, &n_group_missing,
                                             sc.condition_scratch)
                if held == -1:
                    if ex != NULL:
                        ex.failed_statement = s
                    result = D_FAILED
                    break
                if ex != NULL and (held == 2 or n_group_missing > 0):
                    ex.needy[ex.n_needy] = s
                    ex.n_needy += 1
                if held != 1:
                    continue
            if ex != NULL:
                ex.applicable[ex.n_applicable] = s
                ex.n_applicable += 1
            if st.flags & F_DENY:
                any_deny = True
                continue
            if bits & R_IDENTITY:
                identity_allow = True
            if bits & R_RESOURCE and names > grant:
                grant = names
            if bits & R_BOUNDARY:
                boundary_allow = True
            if bits & R_SESSION:
                session_allow = True
            if bits & R_ENDPOINT:
                endpoint_allow = True
            scp_allow |= mark.scp
            rcp_allow |= rcp_marks

        for i in range(rq.ctx_count):
            sc.ctx[entries[i].key].count = -1
        if result == D_FAILED:
            return D_FAILED
        return combine(identity, &batch.profile_table[rq.resource_profile], any_deny, identity_allow,
                       boundary_allow, session_allow, endpoint_allow, scp_allow, rcp_allow, rcp_applies, grant,
                       rq.same_account, must_allow)

    # ---------------------------------------------------------------- batches

    cdef void run(self, Batch batch, Py_ssize_t start, Py_ssize_t stop, scratch_t* sc) noexcept nogil:
        """Decide requests [start, stop) of a converted batch into its codes."""
        cdef Py_ssize_t i
        cdef const request_t* rq
        for i in range(start, stop):
            rq = &batch.requests[i]
            if rq.caller == C_ROW_UNKNOWN:
                batch.codes[i] = D_IMPLICIT
            elif rq.caller < 0:
                batch.codes[i] = D_FAILED
            else:
                batch.codes[i] = self.decide(batch, rq, sc, NULL)

    def evaluate_range(self, Batch batch, Py_ssize_t start, Py_ssize_t stop):
        """Decide a slice of a converted batch without the GIL (threads may share one batch)."""
        self.check_batch(batch, start, stop)
        cdef scratch_t* sc = self.acquire()
        try:
            with nogil:
                self.run(batch, start, stop, sc)
        finally:
            self.release(sc)

    cdef int open_explain(self, explain_t* ex) except -1:
        """Buffers for one thread's explanations: every statement may apply, or need keys."""
        ex.applicable = <int32_t*>malloc(max(1, self.n_statements) * sizeof(int32_t))
        ex.needy = <int32_t*>malloc(max(1, self.n_statements) * sizeof(int32_t))
        if ex.applicable == NULL or ex.needy == NULL:
            close_explain(ex)
            raise MemoryError()
        return 0

    cdef int decide_explained(self, Batch batch, Py_ssize_t i, scratch_t* sc, explain_t* ex) noexcept nogil:
        """Decide request i of a batch into its code, recording what explains it in ``ex``."""
        cdef const request_t* rq = &batch.requests[i]
        ex.n_applicable = ex.n_needy = 0
        ex.failed_statement = -1
        cdef int code = D_FAILED
        if rq.caller == C_ROW_UNKNOWN:
            code = D_IMPLICIT
        elif rq.caller >= 0:
            code = self.decide(batch, rq, sc, ex)
        batch.codes[i] = code
        return code

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def tally_range(self, Batch batch, Py_ssize_t start, Py_ssize_t stop, uint64_t[::1] applied,
                    uint64_t[::1] decided, uint64_t[::1] action_patterns):
        """Decide a slice and count, without the GIL, per statement how many requests it applied
        to (``applied``) and how many of those it decided (an Allow in an allowed request, a
        Deny in a denied one: ``decided``), and per action pattern of each statement how many
        applied requests it matched (``action_patterns``, in ``statement_action_patterns`` order)."""
        self.check_batch(batch, start, stop)
        if applied.shape[0] < self.n_statements or decided.shape[0] < self.n_statements \
                or action_patterns.shape[0] < self.n_statement_actions:
            raise ValueError("count arrays are smaller than the compiled set")
        cdef explain_t ex
        self.open_explain(&ex)
        cdef scratch_t* sc = NULL
        cdef const statement_t* st
        cdef int code
        cdef Py_ssize_t i, k, p
        cdef int32_t s
        try:
            sc = self.acquire()
            with nogil:
                for i in range(start, stop):
                    code = self.decide_explained(batch, i, sc, &ex)
                    if code == D_FAILED:
                        continue
                    for k in range(ex.n_applicable):
                        s = ex.applicable[k]
                        st = &self.statements[s]
                        applied[s] += 1
                        if (code == D_ALLOW and not st.flags & F_DENY) or (code == D_EXPLICIT and st.flags & F_DENY):
                            decided[s] += 1
                        if not st.flags & F_NOT_ACTION:
                            for p in range(st.act_start, st.act_start + st.act_count):
                                if sc.pattern_mark[self.statement_actions[p]] == sc.gen:
                                    action_patterns[p] += 1
        finally:
            close_explain(&ex)
            if sc != NULL:
                self.release(sc)

    def explain_range(self, Batch batch, Py_ssize_t start, Py_ssize_t stop):
        """Per request of a slice: (code, applicable statement ids, ids of the statements that may have
        needed context keys it did not give, the statement whose condition failed to read a context value
        or -1)."""
        self.check_batch(batch, start, stop)
        cdef explain_t ex
        self.open_explain(&ex)
        cdef scratch_t* sc = NULL
        cdef int code
        cdef Py_ssize_t i
        results = []
        try:
            sc = self.acquire()
            for i in range(start, stop):
                code = self.decide_explained(batch, i, sc, &ex)
                results.append((code, sorted([ex.applicable[k] for k in range(ex.n_applicable)]),
                                sorted([ex.needy[k] for k in range(ex.n_needy)]), ex.failed_statement))
        finally:
            close_explain(&ex)
            if sc != NULL:
                self.release(sc)
        return results


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void mark_roles(Batch batch, const profile_t* profile, scratch_t* sc) noexcept nogil:
    cdef const role_t* role
    cdef mark_t* mark
    cdef int32_t r
    for r in range(profile.role_start, profile.role_start + profile.role_count):
        role = &batch.roles[r]
        mark = &sc.policy_mark[role.policy]
        if mark.gen != sc.profile_gen:
            mark.gen = sc.profile_gen
            mark.bits = 0
            mark.scp = mark.rcp = 0
        mark.bits |= role.bits
        mark.scp |= role.scp
        mark.rcp |= role.rcp


cdef inline int combine(const profile_t* identity, const profile_t* resource, bint any_deny, bint identity_allow,
                        bint boundary_allow, bint session_allow, bint endpoint_allow, uint64_t scp_allow,
                        uint64_t rcp_allow, bint rcp_applies, uint8_t grant, bint same_account,
                        int must_allow) noexcept nogil:
    """``decision.combine`` in C (the decision only): deny wins; every SCP and RCP level (RCPs
    for the services they apply to) and the VPC endpoint policy must allow; an anonymous caller
    needs a resource policy that names everyone; then the identity path within boundary and
    session policy, or the resource policy's grant (on its own in the same account, beside the
    identity path across). Where the resource's own policy must allow (``must_allow``: a role's
    trust policy, a key policy), the identity path counts only if that policy names the account."""
    if any_deny:
        return D_EXPLICIT
    cdef uint64_t all_scp = ((<uint64_t>1) << identity.n_scp) - 1 if identity.n_scp < 64 else ~(<uint64_t>0)
    cdef uint64_t all_rcp = 0
    if rcp_applies:
        all_rcp = ((<uint64_t>1) << resource.n_rcp) - 1 if resource.n_rcp < 64 else ~(<uint64_t>0)
    if (scp_allow & all_scp) != all_scp or (rcp_allow & all_rcp) != all_rcp:
        return D_IMPLICIT
    if resource.has_endpoint and not endpoint_allow:
        return D_IMPLICIT
    if identity.anonymous:
        return D_ALLOW if grant != G_NONE else D_IMPLICIT
    cdef bint boundary_ok = not identity.has_boundary or boundary_allow
    cdef bint session_ok = not identity.has_session or session_allow
    cdef bint identity_path = identity_allow and boundary_ok and session_ok
    if grant == G_DIRECT and (RULE_BOUNDED_KINDS >> must_allow) & 1:
        grant = G_BOUNDED
    if same_account:
        if must_allow and grant == G_NONE:
            identity_path = False
        if identity_path or grant == G_DIRECT or (grant == G_BOUNDED and boundary_ok and session_ok):
            return D_ALLOW
        return D_IMPLICIT
    return D_ALLOW if identity_path and grant != G_NONE else D_IMPLICIT


cdef bint _match_all(GlobTrie actions, ArnTrie resources, matches_t* m, void* scratch, int32_t* out) noexcept nogil:
    """Fill ``m.start``/``m.ids`` with the matches of each text in ``actions``, or else in ``resources``;
    False if memory ran out."""
    cdef Py_ssize_t i, k, total = 0, cap = max(16, 2 * m.n)
    cdef void* grown
    m.start = <int32_t*>malloc((m.n + 1) * sizeof(int32_t))
    m.ids = <int32_t*>malloc(cap * sizeof(int32_t))
    if m.start == NULL or m.ids == NULL:
        return False
    for i in range(m.n):
        m.start[i] = <int32_t>total
        if actions is not None:
            k = actions.match_into(<const unsigned char*>m.texts[i].ptr, m.texts[i].len, scratch, out)
        else:
            k = resources.match_into(<const unsigned char*>m.texts[i].ptr, m.texts[i].len, scratch, out)
        if k < 0:
            return False
        if total + k > cap:
            cap = max(2 * cap, total + k)
            grown = realloc(m.ids, cap * sizeof(int32_t))
            if grown == NULL:
                return False
            m.ids = <int32_t*>grown
        memcpy(m.ids + total, out, k * sizeof(int32_t))
        total += k
    m.start[m.n] = <int32_t>total
    return True


cdef void free_matches(matches_t* m) noexcept:
    free(m.texts)
    free(m.start)
    free(m.ids)
    free(m.rules)
    m.texts = NULL
    m.start = m.ids = NULL
    m.rules = NULL


cdef int _alloc_rules(matches_t* m) except -1:
    m.rules = <uint8_t*>malloc(max(1, m.n))
    if m.rules == NULL:
        raise MemoryError()
    return 0


cdef int _set_action_flags(matches_t* m) except -1:
    """Per distinct action, its ``service_rules.action_flags``. A text that is not UTF-8 belongs to rows
    that fail; it is read with replacement characters only to fill its slot."""
    _alloc_rules(m)
    cdef Py_ssize_t k
    cdef bytes text
    for k in range(m.n):
        text = m.texts[k].ptr[:m.texts[k].len]
        flags = _action_flags.get(text)
        if flags is None:
            if len(_action_flags) >= ACTION_FLAGS_KEPT:
                _action_flags.clear()
            flags = _action_flags[text] = service_rules.action_flags(text.decode("utf-8", "replace"))
        m.rules[k] = flags
    return 0


cdef int _set_resource_kinds(matches_t* m) except -1:
    """Per distinct resource, its kind (``service_rules.RESOURCE_KINDS``)."""
    _alloc_rules(m)
    if m.n > NOGIL_LOOP:
        with nogil:
            _resource_kinds(m)
    else:
        _resource_kinds(m)
    return 0


cdef void _resource_kinds(matches_t* m) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(m.n):
        m.rules[k] = _resource_kind(m.texts[k].ptr, m.texts[k].len)


cdef dict _action_flags = {}  # action as given (UTF-8) -> its flags: a batch's actions are mostly known ones
cdef Py_ssize_t ACTION_FLAGS_KEPT = 1 << 16


cdef uint8_t _resource_kind(const char* text, Py_ssize_t n) noexcept nogil:
    """``service_rules.resource_kind`` without making a string: the ARN's service and resource part
    against ``RESOURCE_KINDS``."""
    cdef Py_ssize_t at[6]
    if not arn_fields(text, n, at):
        return 0
    return _kind_of_arn(text, n, at)


cdef uint8_t _kind_of_arn(const char* text, Py_ssize_t n, const Py_ssize_t* at) noexcept nogil:
    """``_resource_kind`` of an ARN whose fields start at ``at`` (``arn_fields``)."""
    cdef Py_ssize_t k
    for k in range(N_RESOURCE_KINDS):
        if at[3] - 1 - at[2] == KIND_SERVICE_LEN[k] \
                and memcmp(text + at[2], KIND_SERVICE[k], KIND_SERVICE_LEN[k]) == 0 \
                and n - at[5] >= KIND_START_LEN[k] and memcmp(text + at[5], KIND_START[k], KIND_START_LEN[k]) == 0:
            return KIND_OF[k]
    return 0


cdef void close_explain(explain_t* ex) noexcept:
    free(ex.applicable)
    free(ex.needy)
    ex.applicable = ex.needy = NULL


cdef void free_scratch(scratch_t* sc) noexcept:
    if sc == NULL:
        return
    sc.magic = 0
    gt_free_scratch(sc.action_scratch)
    at_free_scratch(sc.resource_scratch)
    free(sc.action_ids)
    free(sc.resource_ids)
    free(sc.action_mark)
    free(sc.resource_mark)
    free(sc.pattern_mark)
    free(sc.resource_pattern_mark)
    free(sc.policy_mark)
    free(sc.candidates)
    free(sc.ctx)
    free(sc.condition_scratch)
    free(sc.pattern_scratch)
    free(sc.group_missing)
    free(sc)


cdef int _csr(list lists, int32_t** start_out, int32_t** flat_out) except -1:
    """Per-id lists of statement ids as two C arrays: starts (one more than ids) and the ids."""
    cdef Py_ssize_t total = sum(len(ids) for ids in lists)
    cdef int32_t* start = <int32_t*>malloc((len(lists) + 1) * sizeof(int32_t))
    cdef int32_t* flat = <int32_t*>malloc(max(1, total) * sizeof(int32_t))
    if start == NULL or flat == NULL:
        free(start)
        free(flat)
        raise MemoryError()
    cdef Py_ssize_t at = 0, i = 0
    for ids in lists:
        start[i] = at
        for s in ids:
            flat[at] = s
            at += 1
        i += 1
    start[i] = at
    start_out[0] = start
    flat_out[0] = flat
    return 0


# ==================================================================== conversion

cdef extern from "Python.h":
    ctypedef struct PyObject


cdef extern from *:
    """
    static inline PyObject* engine_list_item(PyObject* list, Py_ssize_t i) { return PyList_GET_ITEM(list, i); }
    static inline int engine_ascii_str(PyObject* o) { return PyUnicode_CheckExact(o) && PyUnicode_IS_ASCII(o); }
    static inline const char* engine_ascii_data(PyObject* o) { return (const char*)PyUnicode_DATA(o); }
    static inline Py_ssize_t engine_str_length(PyObject* o) { return PyUnicode_GET_LENGTH(o); }
    static inline int engine_list_or_tuple(PyObject* o) { return PyList_CheckExact(o) || PyTuple_CheckExact(o); }
    static inline PyObject* engine_seq_item(PyObject* o, Py_ssize_t i) {
        return PyList_CheckExact(o) ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
    }
    /* Empty a list in place, keeping its room when it held a few items (a single call's batch refills it each
       call). The items are released from a copy once the list is empty: their release may run code that uses it. */
    static inline int engine_list_clear(PyObject* list) {
        PyObject* held[16];
        Py_ssize_t n = PyList_GET_SIZE(list), i;
        if (n > 16)
            return PyList_SetSlice(list, 0, PY_SSIZE_T_MAX, NULL);
        memcpy(held, ((PyListObject*)list)->ob_item, n * sizeof(PyObject*));
        Py_SET_SIZE(list, 0);
        for (i = 0; i < n; i++)
            Py_DECREF(held[i]);
        return 0;
    }
    """
    PyObject* engine_list_item(PyObject* list, Py_ssize_t i)
    bint engine_ascii_str(PyObject* o)
    const char* engine_ascii_data(PyObject* o)
    Py_ssize_t engine_str_length(PyObject* o)
    bint engine_list_or_tuple(PyObject* o)
    PyObject* engine_seq_item(PyObject* o, Py_ssize_t i)
    Py_ssize_t Py_SIZE(PyObject* o)
    int engine_list_clear(list items) except -1  # emptied in place


def pack_roles(roles):
    """A profile's roles as the engine reads them: one record per policy with every role it
    plays ((policy, layer, level) triples merged); returns (bytes, highest policy number or -1)."""
    merged = {}
    for policy, layer, level in roles:
        if policy < 0 or not 0 <= layer <= LAYER_ENDPOINT or not 0 <= level < MAX_LEVELS:
            raise ValueError("a role names a policy, layer or level the engine cannot have")
        bits, scp, rcp = merged.get(policy, (0, 0, 0))
        if layer == LAYER_SCP:
            scp |= 1 << level
        elif layer == LAYER_RCP:
            rcp |= 1 << level
        else:
            bits |= {LAYER_IDENTITY: R_IDENTITY, LAYER_RESOURCE: R_RESOURCE, LAYER_BOUNDARY: R_BOUNDARY,
                     LAYER_SESSION: R_SESSION, LAYER_ENDPOINT: R_ENDPOINT}[layer]
        merged[policy] = (bits, scp, rcp)
    cdef bytearray packed = bytearray(len(merged) * sizeof(role_t))
    cdef role_t* out = <role_t*><char*>packed
    cdef Py_ssize_t k = 0
    for policy, (bits, scp, rcp) in merged.items():
        out[k].policy = policy
        out[k].bits = bits
        out[k].scp = scp
        out[k].rcp = rcp
        k += 1
    return bytes(packed), max(merged, default=-1)


cdef class Batch:
    """Requests converted to C data once, with the GIL; evaluated in slices without it.

    It owns everything its C data points into: its own arrays, and a reference to every
    Python string (exact ``str``, immutable) or Arrow array whose bytes it reads, so no
    caller can free or change them while the batch lives. It knows the engine it was
    converted for, and that engine refuses any other batch.
    """

    cdef readonly Engine engine
    cdef uint64_t serial
    cdef int32_t n_keys, n_policies
    cdef request_t* requests
    cdef keyed_entry* entries
    cdef cstr* values
    cdef uint8_t* grant_bytes  # grant_table, once converted
    cdef uint8_t* codes
    cdef profile_t* profile_table
    cdef role_t* roles
    cdef matches_t actions        # the distinct actions and the patterns each matches
    cdef matches_t resources      # the distinct resources (likewise)
    cdef readonly Py_ssize_t n
    cdef Py_ssize_t n_entries, cap_entries, n_values, cap_values
    cdef Py_ssize_t profiles_packed, roles_packed, grants_packed  # what finish() has made C data of
    cdef list owned              # the Python objects the C data points into
    cdef bytearray grant_table   # grants, while converting
    cdef readonly dict errors    # request index -> why it could not be evaluated
    cdef readonly dict unknown   # request index -> a principal the resolver does not know (implicit deny)
    cdef readonly list callers   # caller row -> principal ARN
    cdef readonly list profile_objects  # profile index -> the resolver's profile

    def __cinit__(self, Engine engine, Py_ssize_t n):
        global _batch_serial
        _batch_serial += 1
        self.serial = _batch_serial
        self.engine = engine
        self.n_keys = engine.n_keys
        self.n_policies = engine.n_policies
        self.n = n
        self.owned = []
        self.grant_table = bytearray()
        self.errors = {}
        self.unknown = {}
        self.callers = []
        self.profile_objects = []
        self.requests = <request_t*>calloc(max(1, n), sizeof(request_t))
        self.codes = <uint8_t*>calloc(max(1, n), sizeof(uint8_t))
        if self.requests == NULL or self.codes == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.requests)
        free(self.entries)
        free(self.values)
        free(self.grant_bytes)
        free(self.codes)
        free(self.profile_table)
        free(self.roles)
        free_matches(&self.actions)
        free_matches(&self.resources)

    def codes_view(self):
        """The decision codes, one byte a request."""
        return bytes((<char*>self.codes)[:self.n]) if self.n else b""

    def same_account(self, Py_ssize_t i):
        return bool(self.requests[i].same_account)

    def profiles(self, Py_ssize_t i):
        """The resolver's identity and resource profiles of request i, or None when it was never decided."""
        if self.requests[i].caller < 0:
            return None
        return self.profile_objects[self.requests[i].identity_profile], \
            self.profile_objects[self.requests[i].resource_profile]

    def grants(self, Py_ssize_t i):
        """How the resource policy of request i names its caller, per statement; None without one."""
        return self._grants(i, False)

    def endpoint_grants(self, Py_ssize_t i):
        """How the VPC endpoint policy of request i names its caller, per statement; None without one."""
        return self._grants(i, True)

    cdef object _grants(self, Py_ssize_t i, bint endpoint):
        cdef const request_t* rq = &self.requests[i]
        cdef int32_t at = rq.endpoint_grants if endpoint else rq.grants
        if rq.caller < 0 or at < 0:
            return None
        profile = self.profile_objects[rq.resource_profile]
        policy = profile.endpoint_policy if endpoint else profile.resource_policy
        return bytes(self.grant_table[at:at + self.engine.policy_sizes[policy]])

    def place(self, Py_ssize_t i):
        """Everything of request i an explained decision depends on besides its statements, as numbers
        that mean the same for every request of a converter (profiles and grants by where they stand)."""
        cdef const request_t* rq = &self.requests[i]
        return (rq.same_account, rq.identity_profile, rq.resource_profile, rq.grants, rq.endpoint_grants,
                self.actions.rules[rq.action_ix], self.resources.rules[rq.resource_ix])

    def rules(self, Py_ssize_t i):
        """The ``service_rules`` flags of request i's action, and its resource's kind."""
        return self.actions.rules[self.requests[i].action_ix], self.resources.rules[self.requests[i].resource_ix]

    def decided(self, Py_ssize_t i):
        """Request i as the engine decided it, to explain it: its action, its resource, and its context as
        (key id, values, is a list) per key some policy tests (the session's tags and the store's facts of
        the principal in place of what the request said). None when it was never decided."""
        if not 0 <= i < self.n:
            raise IndexError("no such request in the batch")
        cdef const request_t* rq = &self.requests[i]
        if rq.caller < 0:
            return None
        cdef const cstr* action = &self.actions.texts[rq.action_ix]
        cdef const keyed_entry* entry
        cdef const cstr* value
        cdef Py_ssize_t k, v
        context = []
        for k in range(rq.ctx_start, rq.ctx_start + rq.ctx_count):
            entry = &self.entries[k]
            values = []
            for v in range(entry.entry.count):
                value = &entry.entry.values[v]
                values.append(value.ptr[:value.len].decode("utf-8"))
            context.append((entry.key, tuple(values), bool(entry.entry.is_list)))
        return (action.ptr[:action.len].decode("utf-8"), rq.resource.ptr[:rq.resource.len].decode("utf-8"),
                context)

    cdef int grow(self, Py_ssize_t entries, Py_ssize_t values) except -1:
        if self.room(entries, values) < 0:
            raise MemoryError()
        return 0

    cdef int room(self, Py_ssize_t entries, Py_ssize_t values) noexcept nogil:
        """``grow`` without the GIL: -1 when memory ran out (the arrays are as they were)."""
        cdef void* p
        cdef Py_ssize_t cap
        if self.n_entries + entries > self.cap_entries:
            cap = max(2 * self.cap_entries, self.n_entries + entries, 64)
            p = realloc(self.entries, cap * sizeof(keyed_entry))
            if p == NULL:
                return -1
            self.entries, self.cap_entries = <keyed_entry*>p, cap
        if self.n_values + values > self.cap_values:
            cap = max(2 * self.cap_values, self.n_values + values, 64)
            p = realloc(self.values, cap * sizeof(cstr))
            if p == NULL:
                return -1
            self.values, self.cap_values = <cstr*>p, cap
        return 0

    cdef int32_t add_profile(self, object profile) except -1:
        """Number a profile of this batch (checked against the engine: its roles were packed by ``pack_roles``)."""
        if not 0 <= profile.n_scp <= MAX_LEVELS or not 0 <= profile.n_rcp <= MAX_LEVELS \
                or profile.highest_policy >= self.n_policies or profile.resource_policy >= self.n_policies \
                or len(profile.packed) % sizeof(role_t):
            raise ValueError("a profile names a policy or level the engine does not have")
        self.profile_objects.append(profile)
        return <int32_t>(len(self.profile_objects) - 1)

    cdef int32_t add_grants(self, object grants, int32_t policy) except -2:
        """Append a caller's grants for the statements of a resource policy; returns their offset."""
        if len(grants) != self.engine.policy_sizes[policy]:
            raise ValueError("grants must give one byte per statement of the resource policy")
        cdef Py_ssize_t at = len(self.grant_table)
        self.grant_table += grants
        return <int32_t>at

    cdef int set_texts(self, matches_t* m, list texts) except -1:
        """The distinct actions or resources, as exact encodable strings the batch owns."""
        cdef Py_ssize_t size, k
        m.n = len(texts)
        m.texts = <cstr*>malloc(max(1, m.n) * sizeof(cstr))
        if m.texts == NULL:
            raise MemoryError()
        for k in range(m.n):
            m.texts[k].ptr = PyUnicode_AsUTF8AndSize(texts[k], &size)
            m.texts[k].len = size
        self.owned.append(texts)
        return 0

    cdef int finish(self, bint decide=False) except -1:
        """The arrays stop moving: value offsets become pointers; profiles and grants become C
        arrays (``pack``); each distinct action and resource is matched (and, with ``decide``, every
        request decided)."""
        self.pack()
        _set_action_flags(&self.actions)
        if self.resources.rules == NULL:  # else set as the resources were read (convert_arrow)
            _set_resource_kinds(&self.resources)
        self.engine.match_distinct(self, decide)
        return 0

    cdef int pack(self) except -1:
        """Profiles and grants become C arrays: only those added since the last time, for a batch that
        is ``reset``."""
        cdef Py_ssize_t n_grants = len(self.grant_table), n_profiles = len(self.profile_objects)
        cdef Py_ssize_t total = self.roles_packed, p
        cdef void* grown
        cdef const char* packed
        if self.grant_bytes == NULL or n_grants > self.grants_packed:
            grown = realloc(self.grant_bytes, max(1, n_grants))
            if grown == NULL:
                raise MemoryError()
            self.grant_bytes = <uint8_t*>grown
            if n_grants > self.grants_packed:
                memcpy(self.grant_bytes + self.grants_packed,
                       <const char*>self.grant_table + self.grants_packed, n_grants - self.grants_packed)
            self.grants_packed = n_grants
        if self.profile_table == NULL or n_profiles > self.profiles_packed:
            packs = [<bytes?>self.profile_objects[p].packed for p in range(self.profiles_packed, n_profiles)]
            for pack in packs:
                total += len(<bytes>pack) // sizeof(role_t)
            grown = realloc(self.profile_table, max(1, n_profiles) * sizeof(profile_t))
            if grown == NULL:
                raise MemoryError()
            self.profile_table = <profile_t*>grown
            grown = realloc(self.roles, max(1, total) * sizeof(role_t))
            if grown == NULL:
                raise MemoryError()
            self.roles = <role_t*>grown
            for p in range(self.profiles_packed, n_profiles):
                profile = self.profile_objects[p]
                pack = packs[p - self.profiles_packed]
                packed = <bytes>pack
                memset(&self.profile_table[p], 0, sizeof(profile_t))
                self.profile_table[p].role_start = <int32_t>self.roles_packed
                self.profile_table[p].role_count = <int32_t>(len(<bytes>pack) // sizeof(role_t))
                self.profile_table[p].has_boundary = profile.has_boundary
                self.profile_table[p].has_session = profile.has_session
                self.profile_table[p].has_endpoint = profile.has_endpoint
                self.profile_table[p].anonymous = profile.anonymous
                self.profile_table[p].n_scp = profile.n_scp
                self.profile_table[p].n_rcp = profile.n_rcp
                memcpy(&self.roles[self.roles_packed], packed, self.profile_table[p].role_count * sizeof(role_t))
                self.roles_packed += self.profile_table[p].role_count
            self.profiles_packed = n_profiles
        return 0

    cdef void point_entries(self) noexcept nogil:
        """Each entry's values, an offset while the value array grew, made a pointer."""
        cdef Py_ssize_t k
        for k in range(self.n_entries):
            self.entries[k].entry.values = self.values + <size_t>self.entries[k].entry.values

    cdef int reset(self) except -1:
        """Empty the batch of its requests for the next ones of the same converter, keeping what the
        converter remembers between them (profiles, grants, callers) and its buffers: the single-request
        path (``SingleRequests``), which fills ``actions`` and ``resources`` in place (``hold_one``)."""
        global _batch_serial
        _batch_serial += 1
        self.serial = _batch_serial
        self.n_entries = self.n_values = 0
        engine_list_clear(self.owned)
        if self.errors:
            self.errors.clear()
        if self.unknown:
            self.unknown.clear()
        memset(self.requests, 0, max(1, self.n) * sizeof(request_t))
        memset(self.codes, 0, max(1, self.n))
        return 0

    cdef int hold_one(self, matches_t* m, Py_ssize_t patterns) except -1:
        """Room in ``m`` (empty) for one text and the ``patterns`` it may match at most."""
        m.n = 1
        m.texts = <cstr*>calloc(1, sizeof(cstr))
        m.rules = <uint8_t*>calloc(1, sizeof(uint8_t))
        m.start = <int32_t*>calloc(2, sizeof(int32_t))
        m.ids = <int32_t*>malloc(max(1, patterns) * sizeof(int32_t))
        if m.texts == NULL or m.rules == NULL or m.start == NULL or m.ids == NULL:
            free_matches(m)
            raise MemoryError()
        return 0

    cdef inline int add_entry(self, int32_t key, object texts, bint is_list) except -1:
        """Append one context entry of exact, encodable strings (a list or tuple ``texts``, whose
        strings the batch must own; no code of the caller's runs while it is read)."""
        cdef Py_ssize_t size
        cdef const char* data
        self.grow(1, len(texts))
        self.entries[self.n_entries].key = key
        self.entries[self.n_entries].entry.count = <int32_t>len(texts)
        self.entries[self.n_entries].entry.is_list = is_list
        self.entries[self.n_entries].entry.values = <const cstr*><size_t>self.n_values  # an offset until finish()
        for value in texts:
            data = PyUnicode_AsUTF8AndSize(value, &size)
            self.values[self.n_values].ptr = data
            self.values[self.n_values].len = size
            self.n_values += 1
        self.n_entries += 1
        return 0

    cdef inline int add_text(self, int32_t key, str value, bint owned=False) except -1:
        """Append a single-valued context entry of an exact, encodable string, which the batch now owns
        (``owned``: it held it already)."""
        cdef Py_ssize_t size
        cdef const char* data = PyUnicode_AsUTF8AndSize(value, &size)
        self.grow(1, 1)
        self.entries[self.n_entries].key = key
        self.entries[self.n_entries].entry.count = 1
        self.entries[self.n_entries].entry.is_list = False
        self.entries[self.n_entries].entry.values = <const cstr*><size_t>self.n_values
        self.values[self.n_values].ptr = data
        self.values[self.n_values].len = size
        self.n_values += 1
        self.n_entries += 1
        if not owned:
            self.owned.append(value)
        return 0


cdef object _exact(object value, object rule, object what):
    """``value`` as an exact ``str`` that encodes to UTF-8, by ``rule`` (``request.text`` or
    ``request.context_text``), which raises ``RequestError`` with the reason otherwise. The
    common case, an exact encodable string, is settled here without calling the rule."""
    cdef Py_ssize_t size
    if engine_ascii_str(<PyObject*>value):
        return value
    if type(value) is str:
        try:
            PyUnicode_AsUTF8AndSize(value, &size)
            return value
        except UnicodeEncodeError:
            pass
    return rule(value, what)


cdef list _texts(object key, object value):
    """A list context value as the exact strings IAM reads, all materialised before any is used
    (a list subclass may run code as it is iterated)."""
    return [_exact(item, context_text, key) for item in tuple(value)]


cdef bint _plain_column(list column):
    """Whether every value of a context column is None or an exact ASCII string (a value every path reads as
    it is): the common case, told in one pass."""
    for item in column:
        if item is not None and not engine_ascii_str(<PyObject*>item):
            return False
    return True


cdef bint _plain_strings(object value):
    """Whether ``value`` is an exact list or tuple of exact, encodable strings: read as it is, no
    code of the caller's can run while it is (nothing to materialise first)."""
    cdef Py_ssize_t size
    if type(value) is not list and type(value) is not tuple:
        return False
    for item in value:
        if type(item) is not str:
            return False
        try:
            PyUnicode_AsUTF8AndSize(item, &size)
        except UnicodeEncodeError:
            return False
    return True


cdef class _Converter:
    """Turns requests into a ``Batch``, asking the resolver once per distinct principal,
    resource, owner, profile and (caller, resource policy); both converters use it."""

    cdef Engine engine
    cdef object resolver
    cdef dict key_ids
    cdef readonly Batch batch
    cdef dict rows            # principal -> caller row, or ROW_UNKNOWN
    cdef dict caller_errors   # principal -> why it cannot be evaluated
    cdef list accounts        # caller row -> account (bytes)
    cdef list identities      # caller row -> identity (what selects its identity policies)
    cdef list own_owners      # caller row -> owner class of its own account
    cdef list facts           # caller row -> ((key id, texts, is_list), ...) the store sets, or None
    cdef list sessions        # caller row -> an assumed-role session
    cdef dict action_memo     # action -> its index among the batch's distinct actions
    cdef list action_texts    # the distinct actions
    cdef dict resource_memo   # resource -> its index among the batch's distinct resources
    cdef list resource_texts  # the distinct resources
    cdef list resource_places # per distinct resource: (resource policy, owner class or None)
    cdef readonly tuple every_place  # the place of every resource, when the resolver gives all one (else None)
    cdef dict owner_memo      # account -> owner class
    cdef dict identity_memo   # identity -> its profile's index
    cdef dict resource_profile_memo  # (resource policy, owner class) as one number -> its profile's index
    cdef dict grant_memo      # (caller row, resource policy) as one number -> grants offset
    cdef dict key_cache       # context key as given -> key id (n_keys and above: no policy tests it)
    cdef identity_table key_table  # its exact strings by address: the first look (``_identity``)
    cdef dict untested_ids    # context key no policy tests, case folded -> its id, from n_keys up
    cdef Py_ssize_t n_columns # context columns:
    cdef int32_t* column_kids #   their key ids (-1: a name that cannot be read)
    cdef uint8_t* column_plain #  each value None or an exact ASCII string, and no other column gives the key
    cdef list column_lists    #   the batch's copies of them
    cdef list column_names    #   their names as given
    cdef list column_problems #   why a name cannot be read, or None
    cdef uint64_t* seen       # per key id, untested ones too: the row that gave it (stamp)
    cdef Py_ssize_t seen_cap  # ids seen has room for
    cdef uint64_t* overridden # per key id: the row whose session tags or facts set it (stamp)
    cdef uint64_t stamp_base  # rows converted before the last reset: stamps stay unique across them
    cdef readonly dict explained  # for single requests: (statements, place) -> combined decision and layers
    cdef readonly dict candidates  # for single requests: (action, layers) -> the Allows a near miss may be
    cdef dict settled         # for single requests: their explained decisions by ``SingleRequests.settled_key``
    # The last row's answers: rows repeat their neighbours' principal and place (no dict lookup then).
    cdef object last_principal
    cdef object last_owner    # the last resource account given, and its owner class
    cdef int last_owner_class
    cdef int32_t last_row, last_identity_row, last_identity_profile, last_resource_profile
    cdef int64_t last_place
    # A converter of single requests (``SingleRequests``) holds one request at a time: its action and resource
    # are the batch's first and only, kept without the memos of distinct values.
    cdef bint single
    cdef str single_action    # the request's action (exact)

    def __cinit__(self, Engine engine, object resolver, Py_ssize_t n):
        self.engine = engine
        self.resolver = resolver
        self.key_ids = resolver.key_ids
        self.batch = Batch(engine, n)
        self.rows = {}
        self.caller_errors = {}
        self.accounts = []
        self.identities = []
        self.own_owners = []
        self.facts = []
        self.sessions = []
        self.action_memo = {}
        self.action_texts = []
        self.resource_memo = {}
        self.resource_texts = []
        self.resource_places = []
        self.owner_memo = {}
        self.identity_memo = {}
        self.resource_profile_memo = {}
        self.grant_memo = {}
        self.key_cache = {}
        self.untested_ids = {}
        self.explained = {}
        self.candidates = {}
        self.settled = {}
        self.last_identity_row = self.last_place = -1
        self.every_place = self.resource_place("*") if resolver.places_every_resource else None
        self.seen_cap = max(1, engine.n_keys)
        self.seen = <uint64_t*>calloc(self.seen_cap, sizeof(uint64_t))
        self.overridden = <uint64_t*>calloc(max(1, engine.n_keys), sizeof(uint64_t))
        if self.seen == NULL or self.overridden == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.seen)
        free(self.overridden)
        free(self.column_kids)
        free(self.column_plain)
        identity_clear(&self.key_table)

    cpdef int32_t caller_row(self, object principal) except -3:
        """The caller row of an exact principal string (registered on first sight), or
        ROW_UNKNOWN; raises RequestError for a principal that cannot be evaluated."""
        cdef object row = self.rows.get(principal)
        if row is not None:
            return row
        message = self.caller_errors.get(principal)
        if message is not None:
            raise RequestError(message)
        try:
            view = self.resolver.caller(principal)
        except ValueError as exc:
            self.caller_errors[principal] = str(exc)
            raise RequestError(str(exc)) from None
        if view is None:
            self.rows[principal] = ROW_UNKNOWN
            return ROW_UNKNOWN
        account, identity, own_owner, facts, session = view
        number = len(self.accounts)
        self.accounts.append(text(account, "caller account").encode())
        self.identities.append(identity)
        self.own_owners.append(own_owner)
        self.sessions.append(bool(session))
        if facts is not None:
            for kid, texts, is_list in facts:
                if not 0 <= kid < self.engine.n_keys or not _plain_strings(texts):
                    raise ValueError("the resolver gave facts the engine cannot read")
            self.batch.owned.append(facts)
        self.facts.append(facts)
        self.batch.callers.append(principal)
        self.rows[principal] = number
        return number

    # The steps of placing a request, each memoised per batch; ``convert_arrow`` calls them once per
    # distinct value of a column, the converter of Python objects once per request (``locate_into``).

    cpdef int32_t identity_profile(self, int32_t row) except -1:
        """The index of the caller's identity profile (identity, boundary, session, SCP levels)."""
        identity = self.identities[row]
        profile = self.identity_memo.get(identity)
        if profile is None:
            if identity < 0:
                raise ValueError("the resolver gave an identity out of range")
            profile = self.identity_memo[identity] = self.batch.add_profile(self.resolver.identity_profile(identity))
        return profile

    cpdef int own_owner(self, int32_t row) except -1:
        """The owner class of the caller's own account."""
        return self.own_owners[row]

    cpdef tuple resource_place(self, object resource):
        """(resource policy or -1, owner class or -1: the caller's own) of an exact resource string."""
        policy, owner_class = self.resolver.resource(resource)
        if not -1 <= policy < self.engine.n_policies:
            raise ValueError("the resolver gave a policy out of range")
        return policy, -1 if owner_class is None else owner_class

    cpdef int owner_class(self, object account) except -1:
        """The owner class of an exact account string given as the resource's owner."""
        owner_class = self.owner_memo.get(account)
        if owner_class is None:
            owner_class = self.owner_memo[account] = self.resolver.owner(account)
        return owner_class

    cpdef int32_t resource_profile(self, int32_t policy, int64_t owner_class) except -1:
        """The index of the resource's profile (its policy, its owner's RCP levels)."""
        if not 0 <= owner_class < OWNER_SPAN:
            raise ValueError("the resolver gave an owner class out of range")
        cdef int64_t key = (<int64_t>policy + 1) * OWNER_SPAN + owner_class
        profile = self.resource_profile_memo.get(key)
        if profile is None:
            profile = self.resource_profile_memo[key] = self.batch.add_profile(
                self.resolver.resource_profile(policy, owner_class))
        return profile

    cpdef int32_t grants(self, int32_t row, int32_t policy) except -2:
        """The offset of the caller's grants for the statements of a resource policy."""
        cdef int64_t key = <int64_t>row * self.engine.n_policies + policy
        offset = self.grant_memo.get(key)
        if offset is None:
            offset = self.grant_memo[key] = self.batch.add_grants(
                self.resolver.grants(self.batch.callers[row], self.identities[row], policy), policy)
        return offset

    cdef int locate_into(self, int32_t row, object resource, object owner, request_t* rq) except -1:
        """Place request ``rq`` of caller ``row`` on an exact resource string (an ARN or "*"), owned by
        ``owner`` (an exact account string) or else as the ARN says."""
        if self.single:
            rq.resource_ix = 0
            where = self.every_place if self.every_place is not None else self.resource_place(resource)
        else:
            ix = self.resource_memo.get(resource)
            if ix is None:
                ix = self.resource_memo[resource] = len(self.resource_texts)
                self.resource_texts.append(resource)
                self.resource_places.append(self.every_place if self.every_place is not None
                                            else self.resource_place(resource))
            rq.resource_ix = ix
            where = self.resource_places[ix]
        policy, owner_class = where
        if owner is not None:
            if owner is not self.last_owner:
                self.last_owner_class = self.owner_class(owner)
                self.last_owner = owner
            owner_class = self.last_owner_class
        elif owner_class < 0:
            owner_class = self.own_owners[row]
        if row != self.last_identity_row:
            self.last_identity_profile = self.identity_profile(row)
            self.last_identity_row = row
        rq.identity_profile = self.last_identity_profile
        cdef int64_t place = (<int64_t>policy + 1) * OWNER_SPAN + <int64_t>owner_class
        if place != self.last_place:
            self.last_resource_profile = self.resource_profile(policy, owner_class)
            self.last_place = place
        rq.resource_profile = self.last_resource_profile
        rq.grants = self.grants(row, policy) if policy >= 0 else -1
        return 0

    cdef int place_endpoints(self) except -1:
        """Add to each converted request the policy of the VPC endpoint it came through, if the resolver
        has any (``endpoint``): the value of its ``aws:SourceVpce`` selects it. After every row is converted,
        so that the value is read as every other context value is, whichever path gave it."""
        if not self.resolver.reads_endpoints:
            return 0
        cdef Batch batch = self.batch
        cdef request_t* rq
        cdef keyed_entry* entry
        cdef const cstr* value
        cdef Py_ssize_t i, k
        cdef int32_t vpce = self.key_ids.get(service_rules.SOURCE_VPCE, -1)
        endpoints = {}  # aws:SourceVpce as given (None: absent or not one string) -> policy
        derived = {}    # (resource profile, endpoint policy) -> profile
        for i in range(batch.n):
            rq = &batch.requests[i]
            if rq.caller < 0:
                continue
            given = None
            for k in range(rq.ctx_start, rq.ctx_start + rq.ctx_count):
                entry = &batch.entries[k]
                if entry.key == vpce and entry.entry.count == 1 and not entry.entry.is_list:
                    value = batch.values + <size_t>entry.entry.values
                    given = value.ptr[:value.len].decode("utf-8")
            policy = endpoints.get(given)
            if policy is None:
                policy = endpoints[given] = self.resolver.endpoint(given)
                if not -1 <= policy < self.engine.n_policies:
                    raise ValueError("the resolver gave a policy out of range")
            if policy < 0:
                continue
            profile = derived.get((rq.resource_profile, policy))
            if profile is None:
                profile = derived[rq.resource_profile, policy] = batch.add_profile(
                    batch.profile_objects[rq.resource_profile].with_endpoint(policy))
            rq.resource_profile = profile
            rq.endpoint_grants = self.grants(rq.caller, policy)
        return 0

    cdef int32_t key_id(self, object key) except -1:
        """The id of a context key as given (``n_keys`` and above: no policy tests it, but its spellings share
        an id, so a request is checked as ``Request.create`` checks it); raises RequestError for a bad key."""
        cdef intptr_t found
        if identity_get(&self.key_table, <PyObject*>key, &found):
            return <int32_t>found
        cdef object kid = self.key_cache.get(key) if type(key) is str else None
        if kid is None:
            exact = _exact(key, text, "context key")
            if not exact:
                raise RequestError("context key names must be non-empty")
            folded = exact.lower()
            kid = self.key_ids.get(folded)
            if kid is None:
                kid = self.untested_id(folded)
            if type(key) is str:
                self.key_cache[key] = kid
                if identity_put(&self.key_table, <PyObject*>key, <int32_t>kid) < 0:
                    raise MemoryError()
        return kid

    cdef object untested_id(self, str folded):
        """The id of a key no policy tests, by its case-folded name; ``seen`` grows to hold it."""
        cdef uint64_t* grown
        kid = self.untested_ids.get(folded)
        if kid is not None:
            return kid
        kid = self.untested_ids[folded] = self.engine.n_keys + len(self.untested_ids)
        if kid >= self.seen_cap:
            grown = <uint64_t*>realloc(self.seen, 2 * self.seen_cap * sizeof(uint64_t))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self.seen_cap, 0, self.seen_cap * sizeof(uint64_t))
            self.seen, self.seen_cap = grown, 2 * self.seen_cap
        return kid

    cdef int add_request_value(self, int32_t kid, object key, object value, uint64_t stamp, bint known,
                               bint owned=False) except -1:
        """One context entry of the request itself (``owned``: held by a list the batch owns already);
        raises RequestError if it cannot be read. Every value is read, kept or not: a request is refused
        for what ``Request.create`` refuses, whether a policy tests the key or not."""
        cdef object texts = None
        if self.seen[kid] == stamp:  # a malformed request, whoever supplies the key in the end
            raise RequestError(f"context key {shown(key)} is given twice (key names are case-insensitive)")
        self.seen[kid] = stamp
        if engine_ascii_str(<PyObject*>value):  # the common value: read as it is
            exact = value
        elif type(value) is str:
            exact = _exact(value, context_text, key)
        elif isinstance(value, (list, tuple)):
            texts = value if _plain_strings(value) else _texts(key, value)
        else:
            exact = context_text(value, key)
        if kid >= self.engine.n_keys:
            return 0  # no policy tests it
        if known and self.engine.principal_keys[kid]:
            return 0  # the store alone says who the principal is
        if self.overridden[kid] == stamp:
            return 0  # the session's tags win
        if texts is None:
            self.batch.add_text(kid, exact, owned and exact is value)
            return 0
        if type(texts) is tuple:
            self.batch.owned.append(texts)
        else:  # a list can change later: the batch holds its strings, without a new container
            self.batch.owned.extend(texts)
        self.batch.add_entry(kid, texts, True)
        return 0

    cdef int add_context(self, Py_ssize_t i, int32_t row, object context, object tags) except -1:
        """Request i's context: its session tags, the store's facts of its caller, then its own keys."""
        cdef uint64_t stamp = self.stamp_base + <uint64_t>(i + 1)
        cdef int32_t kid
        cdef tuple facts = self.facts[row]
        cdef bint known = facts is not None
        if tags is not None:
            if type(tags) is not dict and not isinstance(tags, Mapping):
                raise RequestError("session tags must map tag keys to values")
            if not self.sessions[row]:
                raise RequestError("session tags belong to an assumed-role session principal")
            folded = set()  # every tag is checked, tested by a policy or not, as Request.create checks it
            for tag, value in dict(tags).items():
                tag = _exact(tag, text, "session tag key")
                value = _exact(value, text, "session tag value")
                if tag.lower() in folded:
                    raise RequestError(f"session tag {shown(tag)} is given twice (tag keys ignore case)")
                folded.add(tag.lower())
                kid = self.key_id("aws:PrincipalTag/" + tag)
                if kid < self.engine.n_keys:
                    self.overridden[kid] = stamp
                    self.batch.add_text(kid, value)
        if known:
            for kid, texts, is_list in facts:
                if self.overridden[kid] != stamp:
                    self.overridden[kid] = stamp
                    self.batch.add_entry(kid, texts, is_list)
        if context is not None:
            if type(context) is not dict and not isinstance(context, Mapping):
                raise RequestError(f"request context must be an object, not {type(context).__name__}")
            for key, value in (<dict>context if type(context) is dict else dict(context)).items():
                self.add_request_value(self.key_id(key), key, value, stamp, known)
        cdef Py_ssize_t c
        cdef PyObject* item
        for c in range(self.n_columns):  # borrowed items of the batch's own lists: nothing per cell but a look
            item = engine_list_item(engine_list_item(<PyObject*>self.column_lists, c), i)
            if item == <PyObject*>None:
                continue
            kid = self.column_kids[c]
            if self.column_plain[c]:  # read and checked already: a policy tests it
                if not (known and self.engine.principal_keys[kid]) and self.overridden[kid] != stamp:
                    self.batch.add_text(kid, <str>item, True)
                continue
            if kid < 0:
                raise RequestError(self.column_problems[c])
            self.add_request_value(kid, self.column_names[c], <object>item, stamp, known, True)
        return 0

    cdef int set_columns(self, list columns) except -1:
        """The context columns: (key id, or why the name cannot be read; name; list). A column whose values
        are all plain (``_plain_column``) and whose key no other column gives is read once, here: its values
        need no check per request, and if no policy tests it, it is not read again."""
        cdef Py_ssize_t c, n = len(columns)
        self.column_kids = <int32_t*>malloc(max(1, n) * sizeof(int32_t))
        self.column_plain = <uint8_t*>malloc(max(1, n) * sizeof(uint8_t))
        if self.column_kids == NULL or self.column_plain == NULL:
            raise MemoryError()
        givers = {}  # key id -> how many columns give it
        for kid, _, _ in columns:
            givers[kid] = givers.get(kid, 0) + 1
        self.column_lists, self.column_names, self.column_problems = [], [], []
        c = 0
        for kid, name, column in columns:
            plain = type(kid) is not str and givers[kid] == 1 and _plain_column(column)
            if plain and kid >= self.engine.n_keys:
                continue
            self.column_kids[c] = kid if type(kid) is not str else -1
            self.column_plain[c] = plain
            self.column_problems.append(kid if type(kid) is str else None)
            self.column_names.append(name)
            self.column_lists.append(column)
            c += 1
        self.n_columns = c
        return 0

    cdef int convert_row(self, Py_ssize_t i, object principal, object action, object resource, object owner,
                         object context, object tags) except -1:
        cdef request_t* rq = &self.batch.requests[i]
        cdef Py_ssize_t size, account_start = 0, account_len = 0, owner_len
        cdef const char* data
        cdef const char* owner_data
        cdef int32_t row
        cdef bytes caller_account
        rq.caller = ROW_FAILED
        rq.grants = rq.endpoint_grants = -1
        rq.ctx_start = <int32_t>self.batch.n_entries
        try:
            if type(principal) is str and principal is self.last_principal:
                row = self.last_row
            else:
                row = self.caller_row(_exact(principal, text, "request principal"))
                self.last_principal, self.last_row = principal, row
            if row == ROW_UNKNOWN:
                rq.caller = ROW_UNKNOWN
                self.batch.unknown[i] = principal
                return 0
            exact_action = _exact(action, text, "request action")
            exact_resource = _exact(resource, text, "request resource")
            if exact_action is not action or exact_resource is not resource:
                self.batch.owned.append((exact_action, exact_resource))
            data = PyUnicode_AsUTF8AndSize(exact_action, &size)
            rq.action.ptr = data
            rq.action.len = size
            ix = 0 if self.single else self.action_memo.get(exact_action)  # a batch's action seen is checked
            if (self.single or ix is None) and not checked_action(exact_action) and not valid_action(data, size):
                raise RequestError(f"request action {shown(exact_action)} is not service:Action")
            data = PyUnicode_AsUTF8AndSize(exact_resource, &size)
            rq.resource.ptr = data
            rq.resource.len = size
            if engine_is_star(data, size):
                account_len = 0
            elif not checked_resource(exact_resource, &account_start, &account_len) \
                    and not arn_account(data, size, &account_start, &account_len):
                raise RequestError(f"request resource {shown(exact_resource)} is neither an ARN nor \"*\"")
            caller_account = self.accounts[row]
            if owner is not None:
                owner = _exact(owner, text, "resource account")
                owner_data = PyUnicode_AsUTF8AndSize(owner, &owner_len)
                rq.same_account = owner_len == len(caller_account) and memcmp(
                    owner_data, <const char*>caller_account, owner_len) == 0
            elif account_len:
                rq.same_account = account_len == len(caller_account) and memcmp(
                    data + account_start, <const char*>caller_account, account_len) == 0
            else:
                rq.same_account = True
            self.locate_into(row, exact_resource, owner, rq)
            if self.single:
                self.single_action = exact_action
            elif ix is None:
                ix = self.action_memo[exact_action] = len(self.action_texts)
                self.action_texts.append(exact_action)
            rq.action_ix = ix
            self.add_context(i, row, context, tags)
            rq.caller = row
            rq.ctx_count = <int32_t>(self.batch.n_entries - rq.ctx_start)
        except ValueError as exc:  # RequestError and the like: the request fails alone, and says why
            self.batch.n_entries = rq.ctx_start
            rq.caller = ROW_FAILED
            rq.ctx_count = 0
            self.batch.errors[i] = str(exc)
        return 0


    cdef bint remembers_too_much(self):
        """Whether what it keeps between single requests has outgrown ``SINGLE_KEPT`` (principals, owners,
        context keys, profiles, explained decisions, near-miss candidates) or ``SINGLE_GRANT_BYTES``: then it
        is dropped for a fresh one."""
        return (len(self.rows) + len(self.caller_errors) > SINGLE_KEPT or len(self.owner_memo) > SINGLE_KEPT
                or len(self.key_cache) > SINGLE_KEPT or len(self.untested_ids) > SINGLE_KEPT
                or len(self.batch.profile_objects) > SINGLE_KEPT
                or len(self.explained) > SINGLE_KEPT or len(self.candidates) > SINGLE_KEPT
                or len(self.batch.grant_table) > SINGLE_GRANT_BYTES)

    cdef int reset(self, object resolver) except -1:
        """Ready for the next single request: what the resolver said of principals, owners, profiles
        and grants is kept (a compiled set or store never changes its answers), the request is not."""
        self.resolver = resolver
        self.batch.reset()
        self.stamp_base += <uint64_t>max(1, self.batch.n)
        return 0


cdef Py_ssize_t SINGLE_KEPT = 4096            # entries of each kind a single-request converter keeps
cdef Py_ssize_t SINGLE_GRANT_BYTES = 1 << 20  # and bytes of grants
cdef Py_ssize_t SINGLE_SPARE = 8              # converters kept per engine for single requests
cdef Py_ssize_t SINGLE_MATCH_BYTES = 1 << 20  # bytes of action matches kept per engine


ctypedef struct place_t:     # an explained single decision's inputs besides its statements (``Batch.place``)
    int32_t identity_profile
    int32_t resource_profile
    int32_t grants
    int32_t endpoint_grants
    uint8_t same_account
    uint8_t action_rules
    uint8_t resource_kind


cdef class SingleRequests:
    """Converters kept between single requests, so that a call pays for its request alone: the
    resolver's answers on its principal, profiles and grants are remembered (``_Converter.reset``),
    and so are the action patterns each action matches (the trie never changes), and the explained
    decisions that depend on nothing a request alone gives (``explain``).

    Each call takes a converter of its own (a call made from inside another, by a caller's mapping,
    takes another), so no request sees another's data. Callers hold the GIL throughout: a request is
    converted, matched and decided without releasing it.
    """

    cdef Engine engine
    cdef _Converter idle        # the converter given back last: taken again without the list
    cdef list spare             # the others kept (calls made from inside another take more than one)
    cdef tuple unexplained      # decision code -> its decision without explanation
    cdef dict action_matches    # action (exact str) -> its action flags, then the action patterns it matches
    cdef Py_ssize_t match_bytes  # bytes held by action_matches

    def __cinit__(self, Engine engine, tuple unexplained):
        self.engine = engine
        self.spare = []
        self.unexplained = unexplained
        self.action_matches = {}
        if len(unexplained) <= D_IMPLICIT:
            raise ValueError("a decision is needed for each decision code")

    cdef _Converter take(self, resolver):
        cdef _Converter conversion
        if self.idle is not None:
            conversion, self.idle = self.idle, None
            conversion.reset(resolver)
        elif self.spare:
            conversion = self.spare.pop()
            conversion.reset(resolver)
        else:
            conversion = _Converter(self.engine, resolver, 1)
            conversion.single = True
        return conversion

    def convert(self, resolver, request):
        """One request converted into the returned converter's ``batch``, and decided into its codes;
        give the converter back with ``release``."""
        cdef _Converter conversion = self.take(resolver)
        try:
            self.prepare(conversion, request, NULL)
        except BaseException:
            self.keep(conversion)
            raise
        return conversion

    def release(self, _Converter conversion):
        """Give back a converter ``convert`` returned."""
        self.keep(conversion)

    cdef int keep(self, _Converter conversion) except -1:
        """Keep a converter for the next call, unless enough are kept or it remembers too much."""
        conversion.resolver = None  # no cycle through the resolver while it waits
        if conversion.remembers_too_much():
            return 0
        if self.idle is None:
            self.idle = conversion
        elif len(self.spare) < SINGLE_SPARE - 1:
            self.spare.append(conversion)
        return 0

    cdef object decide(self, resolver, request):
        """``evaluate(request, explain=False)``: the decision without explanation of a request the engine
        decided, else the resolver's ``_unexplained(batch)`` (the request failed, or its principal is unknown)."""
        cdef _Converter conversion = self.take(resolver)
        cdef int code
        try:
            self.prepare(conversion, request, NULL)
            code = conversion.batch.codes[0]
            if conversion.batch.requests[0].caller >= 0 and D_ALLOW <= code <= D_IMPLICIT:
                return self.unexplained[code]
            return resolver._unexplained(conversion.batch)
        finally:
            self.keep(conversion)

    cdef object explain(self, resolver, request):
        """``evaluate(request)``: the resolver's ``_explain`` of the request, unless it gave the same
        decision to a request alike (``settled_key``), which is given again."""
        cdef _Converter conversion = self.take(resolver)
        cdef explain_t ex
        cdef bytes key = None
        cdef tuple combined
        self.engine.open_explain(&ex)
        ex.n_applicable = ex.n_needy = 0
        ex.failed_statement = -1
        try:
            self.prepare(conversion, request, &ex)
            key = self.settled_key(conversion, &ex)
            if key is not None:
                decision = conversion.settled.get(key)
                if decision is not None:
                    return decision
                applicable = tuple([ex.applicable[k] for k in range(ex.n_applicable)])
            decision = resolver._explain(conversion.batch, memo=conversion.explained,
                                         candidates=conversion.candidates)[0]
            if key is not None:
                combined = conversion.explained.get((applicable, conversion.batch.place(0)))
                # The very decision combined from its statements: nothing of the request's own was added.
                if combined is not None and combined[0] is decision \
                        and decision.allowed == (conversion.batch.codes[0] == D_ALLOW):
                    if len(conversion.settled) >= SINGLE_KEPT:
                        conversion.settled.clear()
                    conversion.settled[key] = decision
            return decision
        finally:
            close_explain(&ex)
            self.keep(conversion)

    cdef bytes settled_key(self, _Converter conversion, explain_t* ex):
        """What the explained decision of a decided request depends on when no statement needed a key it did
        not give: its statements (sorted), its place, and, for a deny, its action (the Allows of its action
        are its near misses: a deny is kept only when there are none). None for any other request."""
        cdef Batch batch = conversion.batch
        cdef const request_t* rq = &batch.requests[0]
        cdef int code = batch.codes[0]
        if rq.caller < 0 or ex.n_needy or not D_ALLOW <= code <= D_IMPLICIT:
            return None
        _sort_ids(ex.applicable, ex.n_applicable)
        cdef Py_ssize_t action_len = 0 if code == D_ALLOW else rq.action.len
        cdef Py_ssize_t ids_len = ex.n_applicable * sizeof(int32_t)
        cdef bytes key = PyBytes_FromStringAndSize(NULL, sizeof(place_t) + ids_len + action_len)
        cdef char* out = PyBytes_AS_STRING(key)
        cdef place_t place
        memset(&place, 0, sizeof(place_t))
        place.identity_profile = rq.identity_profile
        place.resource_profile = rq.resource_profile
        place.grants = rq.grants
        place.endpoint_grants = rq.endpoint_grants
        place.same_account = rq.same_account
        place.action_rules = batch.actions.rules[0]
        place.resource_kind = batch.resources.rules[0]
        memcpy(out, &place, sizeof(place_t))
        memcpy(out + sizeof(place_t), ex.applicable, ids_len)
        memcpy(out + sizeof(place_t) + ids_len, rq.action.ptr, action_len)
        return key

    cdef int prepare(self, _Converter conversion, object request, explain_t* ex) except -1:
        """Convert a request into the converter's batch, match its action and resource, and decide it into
        the batch's codes (recording what explains it in ``ex`` unless NULL)."""
        cdef Batch batch = conversion.batch
        cdef PyObject* fields[N_FIELDS]
        if request_fields(request, fields):  # a Request: its slots read in place
            principal, action, resource = <object>fields[0], <object>fields[1], <object>fields[2]
            owner, context, tags = <object>fields[3], <object>fields[4], <object>fields[5]
        else:
            principal, action, resource = request.principal, request.action, request.resource
            context, owner, tags = request.context, request.resource_account, request.session_tags
        if not tags:
            tags = None
        batch.owned.append((principal, action, resource, context, owner, tags))
        conversion.convert_row(0, principal, action, resource, owner, context, tags)
        conversion.place_endpoints()
        batch.pack()
        cdef request_t* rq = &batch.requests[0]
        if rq.caller < 0:
            batch.codes[0] = D_IMPLICIT if rq.caller == C_ROW_UNKNOWN else D_FAILED
            return 0
        if rq.action_ix != 0 or rq.resource_ix != 0:
            raise RuntimeError("a single request's converter held another request")
        if batch.actions.texts == NULL:  # the room is kept from call to call
            batch.hold_one(&batch.actions, self.engine.action_trie.result_capacity())
        if batch.resources.texts == NULL:
            batch.hold_one(&batch.resources, self.engine.resource_trie.result_capacity())
        batch.actions.texts[0] = rq.action
        batch.resources.texts[0] = rq.resource
        batch.resources.rules[0] = _resource_kind(rq.resource.ptr, rq.resource.len)
        cdef scratch_t* sc = self.engine.acquire()
        cdef bint matched
        try:
            self.match_action(batch, conversion.single_action, sc)
            if self.engine.n_statements > NOGIL_LOOP:  # a long decision lets other threads run
                with nogil:
                    matched = _decide_one(self.engine, batch, sc, ex)
            else:
                matched = _decide_one(self.engine, batch, sc, ex)
            if not matched:
                raise RuntimeError("the resource trie is not frozen")
        finally:
            self.engine.release(sc)
        return 0

    cdef int match_action(self, Batch batch, str action, scratch_t* sc) except -1:
        """The action's flags and the action patterns it matches, into the batch: matched once per action and
        kept (a bounded memo, emptied when full)."""
        cdef bytes known = self.action_matches.get(action)
        cdef Py_ssize_t n
        cdef int32_t* kept
        if known is None:
            n = self.engine.action_trie.match_into(<const unsigned char*>batch.actions.texts[0].ptr,
                                                   batch.actions.texts[0].len, sc.action_scratch, batch.actions.ids)
            if n < 0:
                raise RuntimeError("the action trie is not frozen")
            flags = service_rules.action_flags(action)
            known = PyBytes_FromStringAndSize(NULL, (n + 1) * sizeof(int32_t))
            kept = <int32_t*>PyBytes_AS_STRING(known)
            kept[0] = <uint8_t>flags
            memcpy(kept + 1, batch.actions.ids, n * sizeof(int32_t))
            if len(self.action_matches) >= SINGLE_KEPT or self.match_bytes > SINGLE_MATCH_BYTES:
                self.action_matches.clear()
                self.match_bytes = 0
            self.action_matches[action] = known
            self.match_bytes += len(known)
        else:
            kept = <int32_t*>PyBytes_AS_STRING(known)
            n = len(known) // sizeof(int32_t) - 1
            memcpy(batch.actions.ids, kept + 1, n * sizeof(int32_t))
        batch.actions.rules[0] = <uint8_t>kept[0]
        batch.actions.start[1] = <int32_t>n
        return 0


cdef bint _decide_one(Engine engine, Batch batch, scratch_t* sc, explain_t* ex) noexcept nogil:
    """Match the resource of a single request's batch, its action matched already, and decide it into the
    batch's codes (recording what explains it in ``ex`` unless NULL); False if the trie cannot match."""
    cdef const request_t* rq = &batch.requests[0]
    cdef Py_ssize_t n = engine.resource_trie.match_into(<const unsigned char*>rq.resource.ptr, rq.resource.len,
                                                        sc.resource_scratch, batch.resources.ids)
    if n < 0:
        return False
    batch.resources.start[1] = <int32_t>n
    batch.point_entries()
    if ex == NULL:
        batch.codes[0] = engine.decide(batch, rq, sc, NULL)
    else:
        engine.decide_explained(batch, 0, sc, ex)
    return True


cdef void _sort_ids(int32_t* ids, Py_ssize_t n) noexcept nogil:
    """Insertion sort: a request's applicable statements are few, and mostly in order already."""
    cdef Py_ssize_t i, j
    cdef int32_t x
    for i in range(1, n):
        x = ids[i]
        j = i - 1
        while j >= 0 and ids[j] > x:
            ids[j + 1] = ids[j]
            j -= 1
        ids[j + 1] = x


def evaluate(self, request, explain=True, usage=None):
    """Decide one request; with ``explain``, name the statements and missing keys; with ``usage``, count into
    it the statements that applied (``usage.StatementUsage``). This is ``CompiledPolicies.evaluate`` itself, so
    that no Python frame stands between a caller and the compiled policies' ``SingleRequests``."""
    if usage is not None:
        return self._evaluate_counted(request, explain, usage)
    cdef SingleRequests singles = self._singles
    return singles.explain(self, request) if explain else singles.decide(self, request)


def converter(Engine engine, resolver, Py_ssize_t n):
    """A converter of ``n`` requests for ``evaluator.arrow``, which hands it to ``convert_arrow``."""
    return _Converter(engine, resolver, n)


cdef list _owned(object values, bint fresh):
    """A list of the values that only the batch holds: ``values`` itself when it is a fresh list."""
    return values if fresh and type(values) is list else list(values)


def convert(Engine engine, resolver, principals, actions, resources, contexts=None, resource_accounts=None,
            session_tags=None, bint fresh=False):
    """Convert parallel sequences of requests into a ``Batch`` (the resolver's protocol is in
    ``compile.py``).

    ``contexts`` is None, one mapping (or None) per request, or a mapping of columns (one
    value or None per request; columns whose names differ only in case are one key, and a
    request that gives both fails). ``resource_accounts`` and ``session_tags`` are None or one
    entry (or None) per request. Every sequence is copied first, so nothing the caller does
    afterwards reaches the batch (``fresh``: the lists among them are the caller's own new copies, which
    nothing else holds). A request that cannot be evaluated is not an exception: it fails (denied) with
    its reason.
    """
    cdef list principal_list = _owned(principals, fresh)
    cdef list action_list = _owned(actions, fresh)
    cdef list resource_list = _owned(resources, fresh)
    cdef Py_ssize_t n = len(principal_list), i
    cdef list context_list = None, account_list = None, tag_list = None
    cdef list columns = []
    if len(action_list) != n or len(resource_list) != n:
        raise ValueError("principals, actions and resources must have the same length")
    if isinstance(contexts, Mapping):
        for key, column in dict(contexts).items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"context column names must be non-empty strings, not {shown(key)}")
            column = _owned(column, fresh)
            if len(column) != n:
                raise ValueError(f"context column {shown(key)} must have one entry per request")
            columns.append((key, column))
    elif contexts is not None:
        context_list = _owned(contexts, fresh)
        if len(context_list) != n:
            raise ValueError("contexts must have one entry per request")
    if resource_accounts is not None:
        account_list = _owned(resource_accounts, fresh)
        if len(account_list) != n:
            raise ValueError("resource_accounts must have one entry per request")
    if session_tags is not None:
        tag_list = _owned(session_tags, fresh)
        if len(tag_list) != n:
            raise ValueError("session_tags must have one entry per request")
    cdef _Converter conversion = _Converter(engine, resolver, n)
    cdef Batch batch = conversion.batch
    batch.owned.append((principal_list, action_list, resource_list, context_list, account_list, tag_list))
    cdef list used_columns = []
    for key, column in columns:
        try:
            kid = conversion.key_id(key)
        except RequestError as exc:  # fails each request that gives a value under this name
            kid = str(exc)
        used_columns.append((kid, key, column))
        batch.owned.append(column)
    conversion.set_columns(used_columns)
    batch.grow(4 * n + 1 if context_list is not None or used_columns else 1, 4 * n + 1)
    for i in range(n):
        conversion.convert_row(i, principal_list[i], action_list[i], resource_list[i],
                               None if account_list is None else account_list[i],
                               None if context_list is None else context_list[i],
                               None if tag_list is None else tag_list[i])
    conversion.place_endpoints()
    batch.set_texts(&batch.actions, conversion.action_texts)
    batch.set_texts(&batch.resources, conversion.resource_texts)
    batch.finish()
    return batch


# ==================================================================== Arrow conversion

ctypedef struct strcol:          # an Arrow string array: no Python object per row
    const int32_t* offsets       # already moved by the array's offset
    const char* data
    const uint8_t* validity      # NULL: no nulls
    Py_ssize_t bit_offset
    Py_ssize_t size              # bytes of data: every offset lies within


ctypedef struct listcol:         # an Arrow list<string> array
    const int32_t* offsets
    const uint8_t* validity
    Py_ssize_t bit_offset
    strcol items
    Py_ssize_t n_items           # every offset lies within


cdef inline bint _valid(const uint8_t* validity, Py_ssize_t bit) noexcept nogil:
    return validity == NULL or (validity[bit >> 3] >> (bit & 7)) & 1


cdef enum:
    BLOCK_ROWS = 56  # rows whose present context fields are listed at once: 56 bits from any bit lie in 8 bytes


cdef inline uint64_t _valid_rows(const uint8_t* validity, Py_ssize_t bit, Py_ssize_t rows) noexcept nogil:
    """The validity of ``rows`` (at most BLOCK_ROWS) rows from ``bit`` on, one bit a row; only their bytes are read."""
    cdef uint64_t word = 0
    cdef Py_ssize_t k, first = bit >> 3, last = (bit + rows - 1) >> 3
    if validity == NULL:
        return ((<uint64_t>1) << rows) - 1
    for k in range(first, last + 1):
        word |= (<uint64_t>validity[k]) << (8 * (k - first))
    return (word >> (bit & 7)) & (((<uint64_t>1) << rows) - 1)


cdef extern from *:
    """
    static inline int engine_lowest_bit(unsigned long long word) { return __builtin_ctzll(word); }
    """
    int lowest_bit "engine_lowest_bit"(uint64_t word) noexcept nogil


cdef const char* _EMPTY = ""


cdef list _header(object array, const uint8_t** validity, Py_ssize_t* bit_offset,
                  const int32_t** offsets):
    """The validity bitmap and offsets that string and list arrays share; returns the buffers, whose
    sizes Arrow has checked (not the offsets between the first and the last: ``_ascending``)."""
    array.validate()
    buffers = array.buffers()
    cdef Py_ssize_t shift = array.offset
    bit_offset[0] = shift
    validity[0] = NULL
    if buffers[0] is not None and array.null_count:
        validity[0] = <const uint8_t*><size_t>buffers[0].address
    offsets[0] = (<const int32_t*><size_t>buffers[1].address) + shift
    return buffers


cdef int _strcol(object array, strcol* out) except -1:
    """The C view of a string array; its offsets are checked (``_strcol_ok``) before any row is read."""
    buffers = _header(array, &out.validity, &out.bit_offset, &out.offsets)
    out.size = 0 if buffers[2] is None else buffers[2].size
    out.data = _EMPTY if out.size == 0 else <const char*><size_t>buffers[2].address
    return 0


cdef int _listcol(object array, listcol* out) except -1:
    """The C view of a list<string> array; likewise (``_listcol_ok``)."""
    _header(array, &out.validity, &out.bit_offset, &out.offsets)
    items = array.values
    out.n_items = len(items)
    _strcol(items, &out.items)
    return 0


cdef inline bint _strcol_ok(const strcol* column, Py_ssize_t n) noexcept nogil:
    return _ascending(column.offsets, n, column.size)


cdef inline bint _listcol_ok(const listcol* column, Py_ssize_t n) noexcept nogil:
    return _ascending(column.offsets, n, column.n_items) and _strcol_ok(&column.items, column.n_items)


cdef bint _ascending(const int32_t* offsets, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    """Whether the n + 1 offsets ascend within [0, limit]. Arrow's cheap validation checks only the
    last one, and reading a hostile array by its others would run outside its buffers."""
    cdef Py_ssize_t i
    if offsets[0] < 0 or offsets[n] > limit:
        return False
    for i in range(n):
        if offsets[i + 1] < offsets[i]:
            return False
    return True


cdef inline cstr _item(const strcol* column, Py_ssize_t i) noexcept nogil:
    cdef cstr text
    text.ptr = column.data + column.offsets[i]
    text.len = column.offsets[i + 1] - column.offsets[i]
    return text


cdef bint _utf8(const char* text, Py_ssize_t n) noexcept nogil:
    """Whether the bytes are UTF-8 as Python's strict decoder reads it: no overlong forms, no
    surrogates, nothing past U+10FFFF (what ``Request.create`` lets through on the other paths)."""
    cdef const uint8_t* p = <const uint8_t*>text
    cdef Py_ssize_t i = 0
    cdef uint64_t word
    cdef uint8_t c, low, high
    while i < n:
        if i + 8 <= n:
            memcpy(&word, p + i, 8)
            if not (word & 0x8080808080808080ULL):
                i += 8
                continue
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        low, high = 0x80, 0xBF  # the range of the byte after the lead
        if 0xC2 <= c <= 0xDF:
            if i + 1 >= n or not low <= p[i + 1] <= high:
                return False
            i += 2
            continue
        if c == 0xE0:
            low = 0xA0
        elif c == 0xED:
            high = 0x9F
        elif c == 0xF0:
            low = 0x90
        elif c == 0xF4:
            high = 0x8F
        if 0xE0 <= c <= 0xEF:
            if i + 2 >= n or not low <= p[i + 1] <= high or not 0x80 <= p[i + 2] <= 0xBF:
                return False
            i += 3
        elif 0xF0 <= c <= 0xF4:
            if i + 3 >= n or not low <= p[i + 1] <= high or not 0x80 <= p[i + 2] <= 0xBF \
                    or not 0x80 <= p[i + 3] <= 0xBF:
                return False
            i += 4
        else:
            return False
    return True


cdef bint _ascii(const strcol* column, Py_ssize_t n) noexcept nogil:
    """Whether all n items' bytes are ASCII (then each is UTF-8): one pass over the column's data."""
    cdef const uint8_t* p = <const uint8_t*>column.data + column.offsets[0]
    cdef Py_ssize_t i = 0, size = column.offsets[n] - column.offsets[0]
    cdef uint64_t word, seen = 0
    while i + 8 <= size:
        memcpy(&word, p + i, 8)
        seen |= word
        i += 8
    while i < size:
        seen |= p[i]
        i += 1
    return not (seen & 0x8080808080808080ULL)


cdef uint64_t _hash_seed = int.from_bytes(os.urandom(8), "little")  # a batch cannot be made to collide


cdef inline uint64_t _hash_key(int64_t key) noexcept nogil:
    cdef uint64_t h = (_hash_seed ^ <uint64_t>key) * 0xBF58476D1CE4E5B9ULL
    return h ^ (h >> 31)


ctypedef struct slot_t:          # a slot of a distinct_t's hash table
    uint32_t tag                 # the hash's high half: most probes of another value stop here
    int32_t number               # the value's number + 1; 0: empty


ctypedef struct distinct_t:      # the distinct values of a column, by hashing: rows repeat them heavily
    int32_t* of_row              # per row: its value's number; -1: null
    cstr* texts                  # per number: its text (strings: into the column)
    int64_t* keys                # per number: its key (numbers)
    uint8_t* utf8                # per number: whether its text is UTF-8
    uint64_t* hashes             # per number
    slot_t* slots                # open addressing over the hashes, at most half full
    Py_ssize_t n, cap, mask, n_not_utf8


cdef void _free_distinct(distinct_t* d) noexcept nogil:
    free(d.of_row)
    free(d.texts)
    free(d.keys)
    free(d.utf8)
    free(d.hashes)
    free(d.slots)
    memset(d, 0, sizeof(distinct_t))


cdef int _distinct_room(distinct_t* d, bint texts) noexcept nogil:
    """Room for one more number (the slots kept at most half full); -1 when memory ran out."""
    cdef Py_ssize_t cap, k
    cdef void* p
    if d.n < d.cap:
        return 0
    cap = max(64, 2 * d.cap)
    p = realloc(d.hashes, cap * sizeof(uint64_t))
    if p == NULL:
        return -1
    d.hashes = <uint64_t*>p
    if texts:
        p = realloc(d.texts, cap * sizeof(cstr))
        if p == NULL:
            return -1
        d.texts = <cstr*>p
        p = realloc(d.utf8, cap)
        if p == NULL:
            return -1
        d.utf8 = <uint8_t*>p
    else:
        p = realloc(d.keys, cap * sizeof(int64_t))
        if p == NULL:
            return -1
        d.keys = <int64_t*>p
    p = calloc(2 * cap, sizeof(slot_t))
    if p == NULL:
        return -1
    free(d.slots)
    d.slots, d.cap, d.mask = <slot_t*>p, cap, 2 * cap - 1
    for k in range(d.n):
        _claim(d, d.hashes[k], <int32_t>k, MAX_PROBES)
    return 0


cdef int32_t _text_number(distinct_t* d, cstr text) noexcept nogil:
    """The number of a text (numbered on first sight); -1 when memory ran out."""
    cdef uint64_t h = hash_text(text.ptr, text.len, _hash_seed)
    cdef uint32_t tag = <uint32_t>(h >> 32)
    cdef Py_ssize_t slot
    cdef int32_t k
    cdef int probes = 0
    if d.cap:
        slot = h & d.mask
        while d.slots[slot].number and probes < MAX_PROBES:
            if d.slots[slot].tag == tag:
                k = d.slots[slot].number - 1
                if d.texts[k].len == text.len and memcmp(d.texts[k].ptr, text.ptr, text.len) == 0:
                    return k
            slot = (slot + 1) & d.mask
            probes += 1
    if _distinct_room(d, True) < 0:
        return -1
    k = <int32_t>d.n
    _claim(d, h, k, MAX_PROBES)
    d.hashes[k], d.texts[k], d.utf8[k] = h, text, _utf8(text.ptr, text.len)
    d.n_not_utf8 += not d.utf8[k]
    d.n += 1
    return k


cdef inline void _claim(distinct_t* d, uint64_t h, int32_t k, Py_ssize_t limit) noexcept nogil:
    """Number k into the first empty slot from hash h's, unless ``limit`` slots are taken first: a run of
    colliding hashes that long leaves k out of the table, a number of its own (the slots are at most half
    full, so a limit past them always finds one)."""
    cdef Py_ssize_t slot = h & d.mask, taken = 0
    while d.slots[slot].number:
        taken += 1
        if taken >= limit:
            return
        slot = (slot + 1) & d.mask
    d.slots[slot].tag, d.slots[slot].number = <uint32_t>(h >> 32), k + 1


cdef int32_t _key_number(distinct_t* d, int64_t key) noexcept nogil:
    """The number of a key (numbered on first sight); -1 when memory ran out."""
    cdef uint64_t h = _hash_key(key)
    cdef Py_ssize_t slot
    cdef int32_t k
    if d.cap:
        slot = h & d.mask
        while d.slots[slot].number:
            k = d.slots[slot].number - 1
            if d.keys[k] == key:
                return k
            slot = (slot + 1) & d.mask
    if _distinct_room(d, False) < 0:
        return -1
    k = <int32_t>d.n
    _claim(d, h, k, d.mask + 1)
    d.hashes[k], d.keys[k] = h, key
    d.n += 1
    return k


cdef int _number_texts(const strcol* column, Py_ssize_t n, distinct_t* d) noexcept nogil:
    """Number each row's text by its distinct value; -1 when memory ran out."""
    cdef Py_ssize_t i
    d.of_row = <int32_t*>malloc(max(1, n) * sizeof(int32_t))
    if d.of_row == NULL:
        return -1
    for i in range(n):
        if not _valid(column.validity, column.bit_offset + i):
            d.of_row[i] = -1
            continue
        d.of_row[i] = _text_number(d, _item(column, i))
        if d.of_row[i] < 0:
            return -1
    return 0


cdef inline bint _all_valid(const strcol* column, Py_ssize_t start, Py_ssize_t count) noexcept nogil:
    """Whether items [start, start + count) are none of them null."""
    cdef Py_ssize_t j
    if column.validity == NULL:
        return True
    for j in range(start, start + count):
        if not _valid(column.validity, column.bit_offset + j):
            return False
    return True


cdef inline bint _distinct_utf8(const distinct_t* d, Py_ssize_t i) noexcept nogil:
    """Whether row i's value is null or UTF-8."""
    return d.of_row[i] < 0 or d.utf8[d.of_row[i]]


cdef inline bint _item_utf8(const strcol* column, Py_ssize_t i) noexcept nogil:
    """Whether item i is null or UTF-8."""
    cdef cstr text
    if not _valid(column.validity, column.bit_offset + i):
        return True
    text = _item(column, i)
    return _utf8(text.ptr, text.len)


cdef str _decoded(const distinct_t* d, Py_ssize_t k):
    return d.texts[k].ptr[:d.texts[k].len].decode("utf-8")


cdef int _push_items(Batch batch, int32_t key, const strcol* column, Py_ssize_t start, Py_ssize_t count,
                     bint is_list) noexcept nogil:
    """Append one context entry of a batch converted from Arrow: items [start, start + count) of
    ``column``; -1 when memory ran out (nothing appended)."""
    cdef Py_ssize_t k
    if batch.room(1, count) < 0:
        return -1
    batch.entries[batch.n_entries].key = key
    batch.entries[batch.n_entries].entry.count = <int32_t>count
    batch.entries[batch.n_entries].entry.is_list = is_list
    batch.entries[batch.n_entries].entry.values = <const cstr*><size_t>batch.n_values  # an offset until finish()
    for k in range(start, start + count):
        batch.values[batch.n_values] = _item(column, k)
        batch.n_values += 1
    batch.n_entries += 1
    return 0


cdef enum:  # why a row of an Arrow batch fails alone
    ROW_BAD_TEXT = 1
    ROW_NULL_PRINCIPAL = 2
    ROW_PRINCIPAL_FAILED = 3
    ROW_UNKNOWN_PRINCIPAL = 4     # not a failure: an implicit deny
    ROW_NULL_ACTION_OR_RESOURCE = 5
    ROW_BAD_ACTION = 6
    ROW_BAD_RESOURCE = 7
    ROW_TAGS_WITHOUT_SESSION = 8
    ROW_TAG_SPELLED_TWICE = 9
    ROW_KEY_TWICE = 10
    ROW_NULL_ITEM = 11            # a list value holding a null, which no text is


cdef enum:  # why converting an Arrow batch stopped
    ROWS_OUT_OF_MEMORY = 1
    ROWS_OUT_OF_RANGE = 2


cdef class _ArrowRows:
    """The C views of one Arrow batch's columns and the tables built from them on the way into a
    ``Batch``: its distinct values, and per row its place and why it fails; freed with it."""

    cdef Py_ssize_t n
    cdef strcol principals, actions, resources, accounts
    cdef bint has_accounts
    cdef distinct_t principal_ids, action_ids, resource_ids, account_ids, place_ids, grant_ids
    cdef Py_ssize_t n_fields, n_tags
    cdef strcol* strings         # per context field: its strings, or
    cdef listcol* lists          #   its lists
    cdef int32_t* field_keys     # per context field: its key id (n_keys and above: no policy tests it)
    cdef uint8_t* is_list
    cdef strcol* tags            # per session tag field
    cdef int32_t* tag_keys       # per session tag field: the key id of aws:PrincipalTag/KEY, -1: untested
    cdef int32_t* tag_group      # per session tag field: its key, case folded, as a number
    cdef uint8_t* field_utf8     # per context and then tag field: all its values are UTF-8
    cdef int32_t* caller_of      # per distinct principal: its caller row (ROW_FAILED, ROW_UNKNOWN)
    cdef int32_t* identity_of    # per distinct principal: its identity profile
    cdef int64_t* own_of         # per distinct principal: its own account's owner class
    cdef int32_t* policy_of      # per distinct resource: its resource policy or -1
    cdef int64_t* owner_of       # per distinct resource: its owner class, -1: the caller's own
    cdef int64_t* class_of       # per distinct resource_account: its owner class
    cdef int32_t* profile_of     # per distinct place: its resource profile
    cdef int32_t* grants_of      # per distinct (caller, policy): its grants offset
    cdef int32_t* place_of_row
    cdef int32_t* grant_of_row   # -1: no resource policy
    cdef uint8_t* problems       # per row: ROW_* or 0
    cdef int32_t* problem_of     # per row: the context field or tag its problem names
    cdef uint64_t* seen          # per key id: the row that gave it, plus one
    cdef uint64_t* overridden    # per key id: the row whose session tags or facts set it, plus one
    cdef uint64_t* group_seen    # per tag key, case folded: the row that gave it, plus one
    cdef list copies             # the buffers of Python columns copied (``read_plain``)

    def __dealloc__(self):
        _free_distinct(&self.principal_ids)
        _free_distinct(&self.action_ids)
        _free_distinct(&self.resource_ids)
        _free_distinct(&self.account_ids)
        _free_distinct(&self.place_ids)
        _free_distinct(&self.grant_ids)
        free(self.strings)
        free(self.lists)
        free(self.field_keys)
        free(self.is_list)
        free(self.tags)
        free(self.tag_keys)
        free(self.tag_group)
        free(self.field_utf8)
        free(self.caller_of)
        free(self.identity_of)
        free(self.own_of)
        free(self.policy_of)
        free(self.owner_of)
        free(self.class_of)
        free(self.profile_of)
        free(self.grants_of)
        free(self.place_of_row)
        free(self.grant_of_row)
        free(self.problems)
        free(self.problem_of)
        free(self.seen)
        free(self.overridden)
        free(self.group_seen)

    cdef int read(self, Engine engine, Py_ssize_t n, principals, actions, resources, resource_accounts,
                  list context_fields, list tag_fields) except -1:
        """The Arrow arrays' C views and each field's key (``scan`` then checks their offsets)."""
        cdef Py_ssize_t f, t
        if not len(principals) == len(actions) == len(resources) == n \
                or resource_accounts is not None and len(resource_accounts) != n \
                or any(len(field[2]) != n for field in context_fields + tag_fields):
            raise ValueError("every column must have one entry per request")
        self.allocate(engine, n, context_fields, tag_fields)
        _strcol(principals, &self.principals)
        _strcol(actions, &self.actions)
        _strcol(resources, &self.resources)
        self.has_accounts = resource_accounts is not None
        if self.has_accounts:
            _strcol(resource_accounts, &self.accounts)
        for f, (_, _, array, field_is_list) in enumerate(context_fields):
            if field_is_list:
                _listcol(array, &self.lists[f])
            else:
                _strcol(array, &self.strings[f])
        for t, (_, _, array) in enumerate(tag_fields):
            _strcol(array, &self.tags[t])
        return 0

    cdef bint read_plain(self, Engine engine, Py_ssize_t start, Py_ssize_t stop, list principals, list actions,
                         list resources, list resource_accounts, list context_fields) except -1:
        """Rows [start, stop) of Python columns copied into the layout Arrow's arrays have, when every value is
        plain: principals, actions and resources exact ASCII strings; resource accounts and context values those
        or None; a context column's values all strings or all lists or tuples of them. False otherwise: the
        converter of Python objects then reads them, and says what is wrong. The copies live in ``self.copies``,
        which the batch must hold (its texts point into them)."""
        cdef Py_ssize_t f
        self.copies = []
        if not (_copy_texts(principals, start, stop, &self.principals, False, self.copies)
                and _copy_texts(actions, start, stop, &self.actions, False, self.copies)
                and _copy_texts(resources, start, stop, &self.resources, False, self.copies)):
            return False
        self.has_accounts = resource_accounts is not None
        if self.has_accounts and not _copy_texts(resource_accounts, start, stop, &self.accounts, True, self.copies):
            return False
        self.allocate(engine, stop - start, context_fields, [])
        for f, (_, _, column, field_is_list) in enumerate(context_fields):
            if not (_copy_lists(column, start, stop, &self.lists[f], self.copies) if field_is_list
                    else _copy_texts(column, start, stop, &self.strings[f], True, self.copies)):
                return False
        return True

    cdef int allocate(self, Engine engine, Py_ssize_t n, list context_fields, list tag_fields) except -1:
        """The tables of n rows and their fields, and each field's key: (key id, or -1 when no policy tests the
        key, key, values, is_list) per context field, (key id of aws:PrincipalTag/KEY or -1, KEY, values) per
        session tag field."""
        cdef Py_ssize_t f, t
        self.n = n
        self.n_fields, self.n_tags = len(context_fields), len(tag_fields)
        self.strings = <strcol*>calloc(max(1, self.n_fields), sizeof(strcol))
        self.lists = <listcol*>calloc(max(1, self.n_fields), sizeof(listcol))
        self.field_keys = <int32_t*>calloc(max(1, self.n_fields), sizeof(int32_t))
        self.is_list = <uint8_t*>calloc(max(1, self.n_fields), sizeof(uint8_t))
        self.tags = <strcol*>calloc(max(1, self.n_tags), sizeof(strcol))
        self.tag_keys = <int32_t*>calloc(max(1, self.n_tags), sizeof(int32_t))
        self.tag_group = <int32_t*>calloc(max(1, self.n_tags), sizeof(int32_t))
        self.field_utf8 = <uint8_t*>calloc(max(1, self.n_fields + self.n_tags), sizeof(uint8_t))
        self.problems = <uint8_t*>calloc(max(1, n), sizeof(uint8_t))
        self.problem_of = <int32_t*>calloc(max(1, n), sizeof(int32_t))
        self.place_of_row = <int32_t*>calloc(max(1, n), sizeof(int32_t))
        self.grant_of_row = <int32_t*>calloc(max(1, n), sizeof(int32_t))
        self.seen = <uint64_t*>calloc(max(1, engine.n_keys + self.n_fields), sizeof(uint64_t))
        self.overridden = <uint64_t*>calloc(max(1, engine.n_keys), sizeof(uint64_t))
        self.group_seen = <uint64_t*>calloc(max(1, self.n_tags), sizeof(uint64_t))
        if self.strings == NULL or self.lists == NULL or self.field_keys == NULL or self.is_list == NULL \
                or self.tags == NULL or self.tag_keys == NULL or self.tag_group == NULL or self.field_utf8 == NULL \
                or self.problems == NULL or self.problem_of == NULL or self.place_of_row == NULL \
                or self.grant_of_row == NULL or self.seen == NULL or self.overridden == NULL \
                or self.group_seen == NULL:
            raise MemoryError()
        untested = {}  # a key no policy tests, case folded -> its id (its spellings are one key)
        for f, (key_id, name, _, field_is_list) in enumerate(context_fields):
            if not -1 <= key_id < engine.n_keys:
                raise ValueError("context field key id out of range")
            if key_id < 0:
                key_id = untested.setdefault(name.lower(), engine.n_keys + len(untested))
            self.field_keys[f], self.is_list[f] = key_id, field_is_list
        groups = {}
        for t, (key_id, name, _) in enumerate(tag_fields):
            if not -1 <= key_id < engine.n_keys:
                raise ValueError("session tag key id out of range")
            self.tag_keys[t] = key_id
            self.tag_group[t] = groups.setdefault(name.lower(), len(groups))
        return 0

    cdef int scan(self) noexcept nogil:
        """Check every offset, tell which fields are ASCII throughout, and number the distinct principals,
        actions, resources and owners: one pass without the GIL (each pass given back and taken again may wait
        for another thread's Python work). 0, ROWS_OUT_OF_RANGE (offsets outside their data) or
        ROWS_OUT_OF_MEMORY."""
        cdef Py_ssize_t f
        if not self.offsets_ok():
            return ROWS_OUT_OF_RANGE
        for f in range(self.n_fields):
            self.field_utf8[f] = _ascii(&self.lists[f].items, self.lists[f].n_items) if self.is_list[f] \
                else _ascii(&self.strings[f], self.n)
        for f in range(self.n_tags):
            self.field_utf8[self.n_fields + f] = _ascii(&self.tags[f], self.n)
        if _number_texts(&self.principals, self.n, &self.principal_ids) < 0 \
                or _number_texts(&self.actions, self.n, &self.action_ids) < 0 \
                or _number_texts(&self.resources, self.n, &self.resource_ids) < 0 \
                or self.has_accounts and _number_texts(&self.accounts, self.n, &self.account_ids) < 0:
            return ROWS_OUT_OF_MEMORY
        return 0

    cdef bint offsets_ok(self) noexcept nogil:
        """Whether every column's offsets lie within its buffers, as Arrow checks only the last one cheaply."""
        cdef Py_ssize_t f
        if not (_strcol_ok(&self.principals, self.n) and _strcol_ok(&self.actions, self.n)
                and _strcol_ok(&self.resources, self.n)):
            return False
        if self.has_accounts and not _strcol_ok(&self.accounts, self.n):
            return False
        for f in range(self.n_fields):
            if not (_listcol_ok(&self.lists[f], self.n) if self.is_list[f] else _strcol_ok(&self.strings[f], self.n)):
                return False
        for f in range(self.n_tags):
            if not _strcol_ok(&self.tags[f], self.n):
                return False
        return True

    cdef dict ask(self, _Converter conversion):
        """The converter's answers once per distinct principal, resource and owner (text that is not
        UTF-8 fails its rows, unasked); returns why the principals that fail do, by number."""
        cdef Py_ssize_t k
        cdef const distinct_t* d = &self.principal_ids
        cdef dict reasons = {}
        self.caller_of = <int32_t*>malloc(max(1, d.n) * sizeof(int32_t))
        self.identity_of = <int32_t*>calloc(max(1, d.n), sizeof(int32_t))
        self.own_of = <int64_t*>calloc(max(1, d.n), sizeof(int64_t))
        self.policy_of = <int32_t*>malloc(max(1, self.resource_ids.n) * sizeof(int32_t))
        self.owner_of = <int64_t*>malloc(max(1, self.resource_ids.n) * sizeof(int64_t))
        self.class_of = <int64_t*>calloc(max(1, self.account_ids.n), sizeof(int64_t))
        if self.caller_of == NULL or self.identity_of == NULL or self.own_of == NULL or self.policy_of == NULL \
                or self.owner_of == NULL or self.class_of == NULL:
            raise MemoryError()
        for k in range(d.n):
            self.caller_of[k] = ROW_FAILED
            if not d.utf8[k]:
                continue
            try:
                row = conversion.caller_row(_decoded(d, k))
            except ValueError as exc:
                reasons[k] = str(exc)
                continue
            self.caller_of[k] = row
            if row >= 0:
                self.identity_of[k] = conversion.identity_profile(row)
                self.own_of[k] = conversion.own_owner(row)
        d = &self.resource_ids
        cdef int32_t every_policy
        cdef int64_t every_owner
        if conversion.every_place is not None:  # one answer for all: no call per distinct resource
            every_policy, every_owner = conversion.every_place
            for k in range(d.n):
                self.policy_of[k], self.owner_of[k] = every_policy, every_owner
        else:
            for k in range(d.n):
                self.policy_of[k], self.owner_of[k] = conversion.resource_place(_decoded(d, k)) if d.utf8[k] \
                    else (-1, -1)
        d = &self.account_ids
        for k in range(d.n):
            if d.utf8[k]:
                self.class_of[k] = conversion.owner_class(_decoded(d, k))
        return reasons

    cdef bint row_utf8(self, Py_ssize_t i) noexcept nogil:
        """Whether every text of row i is UTF-8 (distinct values were checked as they were numbered)."""
        cdef Py_ssize_t f, j
        if not (_distinct_utf8(&self.principal_ids, i) and _distinct_utf8(&self.action_ids, i)
                and _distinct_utf8(&self.resource_ids, i)):
            return False
        if self.has_accounts and not _distinct_utf8(&self.account_ids, i):
            return False
        for f in range(self.n_fields):
            if self.field_utf8[f]:
                continue
            if self.is_list[f]:
                if _valid(self.lists[f].validity, self.lists[f].bit_offset + i):
                    for j in range(self.lists[f].offsets[i], self.lists[f].offsets[i + 1]):
                        if not _item_utf8(&self.lists[f].items, j):
                            return False
            elif not _item_utf8(&self.strings[f], i):
                return False
        for f in range(self.n_tags):
            if not self.field_utf8[self.n_fields + f] and not _item_utf8(&self.tags[f], i):
                return False
        return True

    cdef int find_problems(self) noexcept nogil:
        """Per row, the first reason it fails alone that can be told before its context is read, in the order
        the converter of Python objects meets them (``convert_row``): its principal, then its text."""
        cdef Py_ssize_t i, f
        cdef int32_t p
        cdef bint check_text = self.principal_ids.n_not_utf8 or self.action_ids.n_not_utf8 \
            or self.resource_ids.n_not_utf8 or self.account_ids.n_not_utf8
        for f in range(self.n_fields + self.n_tags):
            check_text = check_text or not self.field_utf8[f]
        for i in range(self.n):
            p = self.principal_ids.of_row[i]
            if p < 0:
                self.problems[i] = ROW_NULL_PRINCIPAL
            elif not self.principal_ids.utf8[p]:
                self.problems[i] = ROW_BAD_TEXT
            elif self.caller_of[p] == C_ROW_FAILED:
                self.problems[i] = ROW_PRINCIPAL_FAILED
            elif self.caller_of[p] == C_ROW_UNKNOWN:
                self.problems[i] = ROW_UNKNOWN_PRINCIPAL
            elif self.action_ids.of_row[i] < 0 or self.resource_ids.of_row[i] < 0:
                self.problems[i] = ROW_NULL_ACTION_OR_RESOURCE
            elif check_text and not self.row_utf8(i):
                self.problems[i] = ROW_BAD_TEXT
        return 0

    cdef int place_rows(self, int32_t n_policies) noexcept nogil:
        """Per row, its (policy, owner) and (caller, policy) keys, numbered; 0, ROWS_OUT_OF_RANGE (an owner
        class out of range) or ROWS_OUT_OF_MEMORY."""
        cdef Py_ssize_t i
        cdef int32_t p, r, a, policy
        cdef int64_t owner
        for i in range(self.n):
            self.place_of_row[i] = self.grant_of_row[i] = -1
            if self.problems[i]:
                continue
            p, r = self.principal_ids.of_row[i], self.resource_ids.of_row[i]
            policy, owner = self.policy_of[r], self.owner_of[r]
            if self.has_accounts:
                a = self.account_ids.of_row[i]
                if a >= 0:
                    owner = self.class_of[a]
            if owner < 0:
                owner = self.own_of[p]
            if not 0 <= owner < OWNER_SPAN:
                return ROWS_OUT_OF_RANGE
            self.place_of_row[i] = _key_number(&self.place_ids, (<int64_t>policy + 1) * OWNER_SPAN + owner)
            if policy >= 0:
                self.grant_of_row[i] = _key_number(&self.grant_ids, <int64_t>self.caller_of[p] * n_policies + policy)
            if self.place_of_row[i] < 0 or policy >= 0 and self.grant_of_row[i] < 0:
                return ROWS_OUT_OF_MEMORY
        return 0

    cdef int ask_places(self, _Converter conversion, int32_t n_policies) except -1:
        """The converter's resource profile of each distinct (policy, owner), and grants of each distinct
        (caller, policy)."""
        cdef Py_ssize_t k
        cdef int64_t key
        self.profile_of = <int32_t*>malloc(max(1, self.place_ids.n) * sizeof(int32_t))
        self.grants_of = <int32_t*>malloc(max(1, self.grant_ids.n) * sizeof(int32_t))
        if self.profile_of == NULL or self.grants_of == NULL:
            raise MemoryError()
        for k in range(self.place_ids.n):
            key = self.place_ids.keys[k]
            self.profile_of[k] = conversion.resource_profile(key // OWNER_SPAN - 1, key % OWNER_SPAN)
        for k in range(self.grant_ids.n):
            key = self.grant_ids.keys[k]
            self.grants_of[k] = conversion.grants(key // n_policies, key % n_policies)
        return 0

    cdef int fill(self, _Converter conversion) except -1:
        """Each request of the batch from its row, without the GIL: the places found, the caller's facts,
        its session tags and its context; rows that fail alone are marked with why."""
        cdef Batch batch = conversion.batch
        cdef Engine engine = batch.engine
        cdef Py_ssize_t n_callers = len(conversion.accounts), n_distinct_actions = self.action_ids.n
        cdef Py_ssize_t n_distinct_resources = self.resource_ids.n
        cdef const char** caller_accounts = <const char**>calloc(max(1, n_callers), sizeof(char*))
        cdef Py_ssize_t* caller_account_len = <Py_ssize_t*>calloc(max(1, n_callers), sizeof(Py_ssize_t))
        cdef Py_ssize_t* fact_start = <Py_ssize_t*>calloc(max(1, n_callers), sizeof(Py_ssize_t))
        cdef Py_ssize_t* fact_count = <Py_ssize_t*>calloc(max(1, n_callers), sizeof(Py_ssize_t))
        cdef uint8_t* sessions = <uint8_t*>calloc(max(1, n_callers), sizeof(uint8_t))
        # Per distinct action: whether it is service:Action; per distinct resource: where its account lies
        # (length 0: "*" or no account), or -1 if it is neither an ARN nor "*".
        cdef uint8_t* action_ok = <uint8_t*>malloc(max(1, n_distinct_actions))
        cdef Py_ssize_t* account_at = <Py_ssize_t*>malloc(max(1, n_distinct_resources) * sizeof(Py_ssize_t))
        cdef Py_ssize_t* account_len = <Py_ssize_t*>malloc(max(1, n_distinct_resources) * sizeof(Py_ssize_t))
        cdef Py_ssize_t i, j, k, f, t, start, count, block = 0, rows, room = 0, n_fields = self.n_fields
        cdef int32_t first[BLOCK_ROWS + 1]
        cdef int32_t* present = NULL  # per row of a block, its fields (``list_fields``)
        cdef int broken = 0
        cdef int32_t c, p, kid, key
        cdef request_t* rq
        cdef cstr account
        cdef const strcol* items
        cdef bint known
        cdef bytes account_bytes
        try:
            if caller_accounts == NULL or caller_account_len == NULL or fact_start == NULL or fact_count == NULL \
                    or sessions == NULL or action_ok == NULL or account_at == NULL or account_len == NULL:
                raise MemoryError()
            batch.resources.rules = <uint8_t*>malloc(max(1, n_distinct_resources))
            if batch.resources.rules == NULL:
                raise MemoryError()
            for k, session in enumerate(conversion.sessions):
                sessions[k] = session
            for k, account_bytes in enumerate(conversion.accounts):
                caller_accounts[k] = account_bytes
                caller_account_len[k] = len(account_bytes)
            batch.grow(self.n * min(n_fields, 8) + 64, self.n * min(n_fields, 8) + 64)
            for k, facts in enumerate(conversion.facts):  # each caller's facts once; rows copy them
                fact_start[k] = batch.n_entries
                if facts is None:
                    fact_count[k] = -1
                    continue
                for kid, texts, list_value in facts:
                    batch.add_entry(kid, texts, list_value)
                fact_count[k] = batch.n_entries - fact_start[k]
            with nogil:  # no Python object per row: threads convert their own batches side by side
                for k in range(n_distinct_actions):
                    action_ok[k] = valid_action(self.action_ids.texts[k].ptr, self.action_ids.texts[k].len)
                for k in range(n_distinct_resources):
                    self.read_arn(k, &account_at[k], &account_len[k], &batch.resources.rules[k])
                while block < self.n:
                    rows = min(<Py_ssize_t>BLOCK_ROWS, self.n - block)
                    if self.list_fields(block, rows, first, &present, &room) < 0:
                        broken = ROWS_OUT_OF_MEMORY
                        break
                    for i in range(block, block + rows):
                        rq = &batch.requests[i]
                        rq.caller = C_ROW_UNKNOWN if self.problems[i] == ROW_UNKNOWN_PRINCIPAL else C_ROW_FAILED
                        rq.grants = rq.endpoint_grants = -1
                        rq.ctx_start = <int32_t>batch.n_entries
                        if self.problems[i]:
                            continue
                        p = self.principal_ids.of_row[i]
                        c = self.caller_of[p]
                        rq.identity_profile = self.identity_of[p]
                        rq.resource_profile = self.profile_of[self.place_of_row[i]]
                        if self.grant_of_row[i] >= 0:
                            rq.grants = self.grants_of[self.grant_of_row[i]]
                        rq.action_ix = self.action_ids.of_row[i]
                        rq.resource_ix = self.resource_ids.of_row[i]
                        rq.action = self.action_ids.texts[rq.action_ix]
                        rq.resource = self.resource_ids.texts[rq.resource_ix]
                        if not action_ok[rq.action_ix]:
                            self.problems[i] = ROW_BAD_ACTION
                            continue
                        if account_len[rq.resource_ix] < 0:
                            self.problems[i] = ROW_BAD_RESOURCE
                            continue
                        if self.has_accounts and _valid(self.accounts.validity, self.accounts.bit_offset + i):
                            account = _item(&self.accounts, i)
                            rq.same_account = account.len == caller_account_len[c] and memcmp(
                                account.ptr, caller_accounts[c], account.len) == 0
                        elif account_len[rq.resource_ix]:
                            rq.same_account = account_len[rq.resource_ix] == caller_account_len[c] and memcmp(
                                rq.resource.ptr + account_at[rq.resource_ix], caller_accounts[c],
                                account_len[rq.resource_ix]) == 0
                        else:
                            rq.same_account = True
                        for t in range(self.n_tags):  # the session's tags, over the role's and the request's
                            if not _valid(self.tags[t].validity, self.tags[t].bit_offset + i):
                                continue
                            if not sessions[c]:
                                self.problems[i] = ROW_TAGS_WITHOUT_SESSION
                                break
                            if self.group_seen[self.tag_group[t]] == <uint64_t>(i + 1):  # tag keys ignore case
                                self.problems[i], self.problem_of[i] = ROW_TAG_SPELLED_TWICE, <int32_t>t
                                break
                            self.group_seen[self.tag_group[t]] = i + 1
                            kid = self.tag_keys[t]
                            if kid < 0:
                                continue
                            self.overridden[kid] = i + 1
                            if _push_items(batch, kid, &self.tags[t], i, 1, False) < 0:
                                broken = ROWS_OUT_OF_MEMORY
                                break
                        if broken:
                            break
                        if self.problems[i]:
                            batch.n_entries = rq.ctx_start
                            continue
                        known = fact_count[c] >= 0
                        if known and fact_count[c]:
                            if batch.room(fact_count[c], 0) < 0:
                                broken = ROWS_OUT_OF_MEMORY
                                break
                            for k in range(fact_start[c], fact_start[c] + fact_count[c]):
                                if self.overridden[batch.entries[k].key] != <uint64_t>(i + 1):
                                    batch.entries[batch.n_entries] = batch.entries[k]
                                    batch.n_entries += 1
                        for j in range(first[i - block], first[i - block + 1]):  # the fields it has
                            f = present[j]
                            key = self.field_keys[f]
                            if self.is_list[f]:
                                start = self.lists[f].offsets[i]
                                count = self.lists[f].offsets[i + 1] - start
                                items = &self.lists[f].items
                            else:
                                start, count, items = i, 1, &self.strings[f]
                            if self.seen[key] == <uint64_t>(i + 1):  # two spellings of one key in this row
                                self.problems[i], self.problem_of[i] = ROW_KEY_TWICE, <int32_t>f
                                break
                            self.seen[key] = i + 1
                            if self.is_list[f] and not _all_valid(items, start, count):
                                self.problems[i], self.problem_of[i] = ROW_NULL_ITEM, <int32_t>f
                                break
                            if key >= engine.n_keys:
                                continue  # no policy tests it
                            if known and engine.principal_keys[key]:
                                continue  # the store alone says who the principal is
                            if self.overridden[key] == <uint64_t>(i + 1):
                                continue  # the session's tags win
                            if _push_items(batch, key, items, start, count, self.is_list[f]) < 0:
                                broken = ROWS_OUT_OF_MEMORY
                                break
                        if broken:
                            break
                        if self.problems[i]:
                            batch.n_entries = rq.ctx_start
                            continue
                        rq.caller = c
                        rq.ctx_count = <int32_t>(batch.n_entries - rq.ctx_start)
                    if broken:
                        break
                    block += rows
            if broken:
                raise MemoryError()
        finally:
            free(caller_accounts)
            free(caller_account_len)
            free(fact_start)
            free(fact_count)
            free(sessions)
            free(action_ok)
            free(account_at)
            free(account_len)
            free(present)
        return 0

    cdef int list_fields(self, Py_ssize_t block, Py_ssize_t rows, int32_t* first, int32_t** present,
                         Py_ssize_t* room) noexcept nogil:
        """Each row's context fields that are not null, in field order, for the rows [block, block + rows): row
        block + r's are ``present[first[r]:first[r + 1]]``. Read a validity word a field, so that a row costs what
        it has, not every key of its batch (a log's batch may have a thousand); -1 when memory ran out."""
        cdef Py_ssize_t f, r
        cdef uint64_t word
        cdef int32_t at[BLOCK_ROWS]
        cdef int32_t* grown
        memset(first, 0, (rows + 1) * sizeof(int32_t))
        for f in range(self.n_fields):
            word = self.field_rows(f, block, rows)
            while word:
                first[lowest_bit(word) + 1] += 1
                word &= word - 1
        for r in range(rows):
            first[r + 1] += first[r]
            at[r] = first[r]
        if first[rows] > room[0]:
            grown = <int32_t*>realloc(present[0], first[rows] * sizeof(int32_t))
            if grown == NULL:
                return -1
            present[0], room[0] = grown, first[rows]
        for f in range(self.n_fields):
            word = self.field_rows(f, block, rows)
            while word:
                r = lowest_bit(word)
                present[0][at[r]] = <int32_t>f
                at[r] += 1
                word &= word - 1
        return 0

    cdef inline uint64_t field_rows(self, Py_ssize_t f, Py_ssize_t block, Py_ssize_t rows) noexcept nogil:
        """Which of the rows [block, block + rows) field f is not null in, one bit a row."""
        if self.is_list[f]:
            return _valid_rows(self.lists[f].validity, self.lists[f].bit_offset + block, rows)
        return _valid_rows(self.strings[f].validity, self.strings[f].bit_offset + block, rows)

    cdef void read_arn(self, Py_ssize_t k, Py_ssize_t* account_at, Py_ssize_t* account_len,
                       uint8_t* kind) noexcept nogil:
        """Where distinct resource k's account lies (length 0: "*" or no account; -1: neither an ARN nor "*"),
        and its kind (``_resource_kind``), from one reading of its fields."""
        cdef cstr text = self.resource_ids.texts[k]
        cdef Py_ssize_t at[6]
        account_at[0] = account_len[0] = kind[0] = 0
        if engine_is_star(text.ptr, text.len):
            return
        if not arn_fields(text.ptr, text.len, at):
            account_len[0] = -1
            return
        account_field(at, account_at, account_len)
        kind[0] = _kind_of_arn(text.ptr, text.len, at)

    cdef int tell(self, Batch batch, dict reasons, list context_fields, list tag_fields) except -1:
        """Why each row that failed alone did (``batch.errors``), and the principals not known
        (``batch.unknown``)."""
        cdef Py_ssize_t i
        cdef uint8_t problem
        cdef cstr text
        for i in range(self.n):
            problem = self.problems[i]
            if not problem:
                continue
            if problem == ROW_BAD_TEXT:
                batch.errors[i] = "request text is not valid UTF-8"
            elif problem == ROW_NULL_PRINCIPAL:
                batch.errors[i] = "request principal must not be null"
            elif problem == ROW_PRINCIPAL_FAILED:
                batch.errors[i] = reasons[self.principal_ids.of_row[i]]
            elif problem == ROW_NULL_ACTION_OR_RESOURCE:
                batch.errors[i] = "request action and resource must not be null"
            elif problem == ROW_TAG_SPELLED_TWICE:
                batch.errors[i] = f"session tag {shown(tag_fields[self.problem_of[i]][1])} is given twice " \
                                  "(tag keys ignore case)"
            elif problem == ROW_UNKNOWN_PRINCIPAL:
                batch.unknown[i] = _decoded(&self.principal_ids, self.principal_ids.of_row[i])
            elif problem == ROW_BAD_ACTION:
                batch.errors[i] = f"request action {shown(_decoded(&self.action_ids, self.action_ids.of_row[i]))} " \
                                  "is not service:Action"
            elif problem == ROW_BAD_RESOURCE:
                text = self.resource_ids.texts[self.resource_ids.of_row[i]]
                batch.errors[i] = (f"request resource {shown(text.ptr[:text.len].decode())}"
                                   " is neither an ARN nor \"*\"")
            elif problem == ROW_TAGS_WITHOUT_SESSION:
                batch.errors[i] = "session tags belong to an assumed-role session principal"
            elif problem == ROW_KEY_TWICE:
                batch.errors[i] = f"context key {shown(context_fields[self.problem_of[i]][1])} is given twice " \
                                  "(key names are case-insensitive)"
            elif problem == ROW_NULL_ITEM:
                try:  # the message every path gives for a value that is not text
                    context_text(None, context_fields[self.problem_of[i]][1])
                except RequestError as exc:
                    batch.errors[i] = str(exc)
        return 0



cdef int _stop(int broken, str out_of_range) except -1:
    """Raise for what stopped a pass without the GIL."""
    if broken == ROWS_OUT_OF_MEMORY:
        raise MemoryError()
    if broken == ROWS_OUT_OF_RANGE:
        raise ValueError(out_of_range)
    return 0


def convert_arrow(_Converter conversion, principals, actions, resources, resource_accounts, list context_fields,
                  list tag_fields):
    """Finish the ``Batch`` of ``conversion`` from Arrow string arrays, with no Python object per row.

    Each distinct principal, action, resource and owner is found by hashing without the GIL, checked to be
    UTF-8, and given to the converter once; each distinct (resource policy, owner) and (caller, resource
    policy) likewise. ``resource_accounts``: a string array or None; ``context_fields``: (key id, or -1
    when no policy tests the key, key, array, is_list) with string or list<string> arrays, already
    carrying the struct's nulls; ``tag_fields``: (key id of aws:PrincipalTag/KEY or -1, KEY, string array)
    for the session tags of assumed-role session principals. A row that cannot be evaluated fails alone,
    with its reason in ``batch.errors``; a principal the resolver does not know is in ``batch.unknown``.
    """
    cdef Batch batch = conversion.batch
    cdef _ArrowRows rows = _ArrowRows()
    batch.owned.append((principals, actions, resources, resource_accounts, context_fields, tag_fields))
    rows.read(batch.engine, batch.n, principals, actions, resources, resource_accounts, context_fields, tag_fields)
    return _convert_rows(conversion, rows, context_fields, tag_fields)


cdef Batch _convert_rows(_Converter conversion, _ArrowRows rows, list context_fields, list tag_fields):
    """The rest of ``convert_arrow``, on columns read (``_ArrowRows.read`` or ``read_plain``)."""
    cdef Batch batch = conversion.batch
    cdef int32_t n_policies = batch.engine.n_policies
    cdef int broken
    with nogil:
        broken = rows.scan()
    _stop(broken, "an array's offsets point outside its data (a malformed Arrow array)")
    reasons = rows.ask(conversion)
    with nogil:
        rows.find_problems()
        broken = rows.place_rows(n_policies)
    _stop(broken, "the resolver gave an owner class out of range")
    rows.ask_places(conversion, n_policies)
    rows.fill(conversion)
    rows.tell(batch, reasons, context_fields, tag_fields)
    batch.actions.texts, batch.actions.n = rows.action_ids.texts, rows.action_ids.n
    batch.resources.texts, batch.resources.n = rows.resource_ids.texts, rows.resource_ids.n
    rows.action_ids.texts = rows.resource_ids.texts = NULL  # the batch frees them now
    conversion.place_endpoints()
    batch.finish()
    return batch


def convert_plain(Engine engine, resolver, list principals, list actions, list resources, dict contexts,
                  list resource_accounts, Py_ssize_t start, Py_ssize_t stop):
    """Rows [start, stop) of ``convert``'s columns (``contexts``: a dict of columns, or None), read in place and
    copied into the layout of an Arrow batch, which is then converted as one is, mostly without the GIL (so
    threads convert side by side); when every value is plain (``_ArrowRows.read_plain``). None otherwise, and
    when the columns' lengths differ: ``convert`` reads those, and says what is wrong. Nothing of the caller's
    runs while the lists are read."""
    cdef Py_ssize_t n = len(principals), i
    cdef list fields = []
    cdef PyObject* item
    if not 0 <= start <= stop <= n or len(actions) != n or len(resources) != n \
            or resource_accounts is not None and len(resource_accounts) != n:
        return None
    for key, column in (contexts or {}).items():
        if not engine_ascii_str(<PyObject*>key) or not key or type(column) is not list \
                or len(<list>column) != n:
            return None
        is_list = False
        for i in range(start, stop):  # a column of lists, or of strings, as its first value says
            item = engine_list_item(<PyObject*>column, i)
            if item != <PyObject*>None:
                is_list = engine_list_or_tuple(item)
                break
        fields.append((resolver.key_ids.get(key.lower(), -1), key, column, is_list))
    cdef _ArrowRows rows = _ArrowRows()
    if not rows.read_plain(engine, start, stop, principals, actions, resources, resource_accounts, fields):
        return None
    cdef _Converter conversion = _Converter(engine, resolver, stop - start)
    conversion.batch.owned.append(rows.copies)
    return _convert_rows(conversion, rows, fields, [])


cdef class _Block:
    """A block of memory that grows, freed with its owner: the copy of a column (its texts, offsets or validity),
    which the batch holds as long as its requests point into it. Only what is written is read: a large block
    costs the pages it fills."""

    cdef char* data
    cdef Py_ssize_t size

    def __cinit__(self, Py_ssize_t size, bint zeroed=False):
        self.data = <char*>(calloc(max(1, size), 1) if zeroed else malloc(max(1, size)))
        if self.data == NULL:
            raise MemoryError()
        self.size = max(1, size)

    def __dealloc__(self):
        free(self.data)

    cdef int room(self, Py_ssize_t size) except -1:
        """At least ``size`` bytes; the data may move."""
        cdef Py_ssize_t grown = self.size
        cdef char* p
        if size <= self.size:
            return 0
        while grown < size:
            grown *= 2
        p = <char*>realloc(self.data, grown)
        if p == NULL:
            raise MemoryError()
        self.data, self.size = p, grown
        return 0


cdef uint8_t* _validity(list copies, Py_ssize_t n, Py_ssize_t valid_rows) except NULL:
    """A validity bitmap for n rows, the first ``valid_rows`` of them marked valid (a column's first null)."""
    cdef _Block block = _Block((n + 7) // 8, True)
    cdef uint8_t* bits = <uint8_t*>block.data
    cdef Py_ssize_t i
    copies.append(block)
    memset(bits, 0xFF, valid_rows >> 3)
    for i in range(valid_rows & ~7, valid_rows):
        bits[i >> 3] |= 1 << (i & 7)
    return bits


cdef inline int _append(_Block block, Py_ssize_t* at, PyObject* text) except -1:
    """The characters of an exact ASCII string appended at ``at``: 0, or 1 past what an Arrow offset can say."""
    cdef Py_ssize_t size = engine_str_length(text)
    if size > INT32_MAX - at[0]:
        return 1
    if at[0] + size > block.size:
        block.room(at[0] + size)
    memcpy(block.data + at[0], engine_ascii_data(text), size)
    at[0] += size
    return 0


cdef enum:
    AHEAD = 8  # rows between a string's prefetch and its copy


cdef bint _copy_texts(list values, Py_ssize_t start, Py_ssize_t stop, strcol* out, bint nulls,
                     list copies) except -1:
    """``values[start:stop]`` copied into a string array's layout, in one pass, when each is an exact ASCII string
    (or None, with ``nulls``); False otherwise. No code of the caller's runs while the list is read."""
    cdef Py_ssize_t n = stop - start, i, at = 0
    cdef PyObject* item
    cdef _Block offsets = _Block((n + 1) * sizeof(int32_t)), data = _Block(32 * n)
    cdef int32_t* offset = <int32_t*>offsets.data
    cdef uint8_t* valid = NULL
    copies.append(offsets)
    copies.append(data)
    offset[0] = 0
    for i in range(n):
        if i + AHEAD < n:  # the strings lie anywhere in memory: ask for one ahead while this one is copied
            prefetch(engine_list_item(<PyObject*>values, start + i + AHEAD))
        item = engine_list_item(<PyObject*>values, start + i)
        if item == <PyObject*>None:
            if not nulls:
                return False
            if valid == NULL:
                valid = _validity(copies, n, i)
        elif not engine_ascii_str(item) or _append(data, &at, item):
            return False
        else:
            if valid != NULL:
                valid[i >> 3] |= 1 << (i & 7)
        offset[i + 1] = <int32_t>at
    out.offsets, out.data, out.validity, out.bit_offset, out.size = offset, data.data, valid, 0, at
    return True


cdef bint _copy_lists(list values, Py_ssize_t start, Py_ssize_t stop, listcol* out, list copies) except -1:
    """``values[start:stop]`` copied into a list<string> array's layout, in one pass, when each is None or an
    exact list or tuple of exact ASCII strings; False otherwise."""
    cdef Py_ssize_t n = stop - start, i, k, at = 0, n_items = 0
    cdef PyObject* value
    cdef PyObject* item
    cdef _Block list_offsets = _Block((n + 1) * sizeof(int32_t)), item_offsets = _Block(4 * (n + 1))
    cdef _Block data = _Block(32 * n)
    cdef int32_t* list_offset = <int32_t*>list_offsets.data
    cdef uint8_t* valid = NULL
    copies.extend((list_offsets, item_offsets, data))
    list_offset[0] = (<int32_t*>item_offsets.data)[0] = 0
    for i in range(n):
        value = engine_list_item(<PyObject*>values, start + i)
        if value == <PyObject*>None:
            if valid == NULL:
                valid = _validity(copies, n, i)
        elif not engine_list_or_tuple(value):
            return False
        else:
            if Py_SIZE(value) > INT32_MAX - 1 - n_items:
                return False
            item_offsets.room((n_items + 1 + Py_SIZE(value)) * sizeof(int32_t))
            for k in range(Py_SIZE(value)):
                item = engine_seq_item(value, k)
                if not engine_ascii_str(item) or _append(data, &at, item):
                    return False
                n_items += 1
                (<int32_t*>item_offsets.data)[n_items] = <int32_t>at
            if valid != NULL:
                valid[i >> 3] |= 1 << (i & 7)
        list_offset[i + 1] = <int32_t>n_items
    out.offsets, out.validity, out.bit_offset, out.n_items = list_offset, valid, 0, n_items
    out.items.offsets, out.items.data, out.items.validity = <int32_t*>item_offsets.data, data.data, NULL
    out.items.bit_offset, out.items.size = 0, at
    return True
