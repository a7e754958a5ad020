# cython: language_level=3, embedsignature=True
"""The compiled engine's hot path: candidate statements from two indexes, then conditions, then IAM's rule.

For one request: the resource trie marks the statements whose Resource (or
NotResource) patterns match; the action trie yields the statements whose
Action patterns match (NotAction statements are candidates unless one of their
patterns matched); only those candidates are checked further (resource, the
caller for resource-policy statements, conditions), and the layers are
combined exactly as ``decision.combine`` does. Everything after the batch's
conversion runs in C without the GIL.

Statements are numbered in layer order (identity, resource, boundary, session,
SCP levels, RCP levels; policies and statements in their own order), so sorted
statement ids list matched statements in the order the reference lists them.
"""
cimport cython
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp

from ._conditions cimport ConditionSet
from ._globtrie cimport GlobTrie
from ._pattern cimport PatternSet, pseg
from ._types cimport cstr, ctx_entry

from collections.abc import Mapping

# Layers, in statement-id order.
LAYER_IDENTITY, LAYER_RESOURCE, LAYER_BOUNDARY, LAYER_SESSION, LAYER_SCP, LAYER_RCP = range(6)
# Statement flags.
FLAG_DENY = 1
FLAG_NOT_ACTION = 2
FLAG_NOT_RESOURCE = 4
FLAG_ANY_RESOURCE = 8  # Resource holds "*" or is absent: every request resource matches, "*" too
FLAG_NOT_RESOURCE_STAR = 16  # NotResource holds "*": it excludes every request resource
FLAG_RESOURCE_INDEXED = 32  # only fixed Resource patterns: found through the resource trie alone
# Decision codes of the batch API.
IMPLICIT_DENY, ALLOW, EXPLICIT_DENY, FAILED = range(4)

cdef enum:
    L_IDENTITY = 0
    L_RESOURCE = 1
    L_BOUNDARY = 2
    L_SESSION = 3
    L_SCP = 4
    L_RCP = 5
    F_DENY = 1
    F_NOT_ACTION = 2
    F_NOT_RESOURCE = 4
    F_ANY_RESOURCE = 8
    F_NOT_RESOURCE_STAR = 16
    F_RESOURCE_INDEXED = 32
    D_IMPLICIT = 0
    D_ALLOW = 1
    D_EXPLICIT = 2
    D_FAILED = 3
    # principals.Grant
    G_NONE = 0
    G_BOUNDED = 2
    G_DIRECT = 3
    MAX_LEVELS = 64
    SPARE_SCRATCH = 8


ctypedef struct statement_t:
    uint8_t layer
    uint8_t flags
    uint16_t level           # organisation level of an SCP or RCP
    int32_t group            # condition group, -1 without conditions
    int32_t dyn_start        # first of this statement's resource patterns with policy variables
    int32_t dyn_count
    int32_t slot             # index among resource-policy statements (for the caller's grants), else -1
    int32_t act_start        # this statement's action pattern ids in Engine.statement_actions
    int32_t act_count


ctypedef struct request_t:
    cstr action
    cstr resource
    int32_t caller           # row of the batch's grant table; -1: the request failed conversion
    uint8_t same_account
    int32_t ctx_start        # this request's context entries in the batch
    int32_t ctx_count


ctypedef struct keyed_entry:
    int32_t key
    ctx_entry entry


ctypedef struct scratch_t:
    void* action_scratch
    void* resource_scratch
    int32_t* action_ids
    int32_t* resource_ids
    uint64_t* action_mark    # per statement: generation in which an action pattern matched it
    uint64_t* resource_mark  # per statement: generation in which a static resource pattern matched it
    uint64_t* pattern_mark   # per action pattern: generation in which it matched
    uint64_t* name_mark      # per condition-key spelling: generation in which it was noted missing
    uint64_t gen
    int32_t* candidates
    ctx_entry* ctx           # dense context of the current request; count -1 between requests
    pseg* condition_scratch
    pseg* pattern_scratch
    int32_t* group_missing


ctypedef struct explain_t:   # what one request's explanation needs; NULL when not explaining
    int32_t* applicable
    int32_t n_applicable
    int32_t* missing         # condition-key spellings (ConditionSet.key_names ids)
    int32_t n_missing
    int32_t failed_statement # the statement whose condition could not read a context value


cdef extern from *:
    """
    static inline int engine_is_star(const char* p, Py_ssize_t n) { return n == 1 && p[0] == '*'; }
    """
    int engine_is_star(const char* p, Py_ssize_t n) nogil


cdef class Engine:
    """A compiled policy set's C tables; built once by ``compile.py``, immutable after."""

    cdef GlobTrie action_trie
    cdef GlobTrie resource_trie
    cdef PatternSet patterns
    cdef ConditionSet conditions
    cdef statement_t* statements
    cdef int32_t n_statements
    cdef int32_t* action_start       # CSR: action pattern id -> statements
    cdef int32_t* action_statements
    cdef int32_t* resource_start     # CSR: static resource pattern id -> statements
    cdef int32_t* resource_statements
    cdef int32_t* statement_actions  # per statement, its action pattern ids (statement_t.act_start)
    cdef readonly int32_t n_statement_actions
    cdef int32_t n_action_patterns
    cdef int32_t* not_action         # statements with NotAction that the action side finds
    cdef int32_t n_not_action
    cdef int32_t* dynamic_patterns   # PatternSet indices, per statement a run [dyn_start, +dyn_count)
    cdef readonly int32_t n_keys
    cdef readonly int32_t n_slots
    cdef readonly bint has_boundary
    cdef readonly bint has_session
    cdef readonly int n_scp
    cdef readonly int n_rcp
    cdef int32_t max_group_missing
    cdef int32_t n_names
    cdef scratch_t* spare[SPARE_SCRATCH]  # scratch kept for reuse: allocating and zeroing it is costly
    cdef int n_spare

    def __cinit__(self):
        self.statements = NULL
        self.action_start = self.action_statements = NULL
        self.resource_start = self.resource_statements = NULL
        self.not_action = self.dynamic_patterns = self.statement_actions = NULL

    def __dealloc__(self):
        while self.n_spare:
            self.n_spare -= 1
            free_scratch(self.spare[self.n_spare])
        free(self.statements)
        free(self.action_start)
        free(self.action_statements)
        free(self.resource_start)
        free(self.resource_statements)
        free(self.not_action)
        free(self.dynamic_patterns)
        free(self.statement_actions)

    def __init__(self, statements, action_trie, action_lists, resource_trie, resource_lists,
                 list dynamic, PatternSet patterns, ConditionSet conditions, dict key_ids,
                 int n_slots, bint has_boundary, bint has_session, int n_scp, int n_rcp):
        """Take the tables built in Python.

        ``statements``: (layer, flags, level, group, dynamic pattern indices, slot, action
        pattern ids) per statement; ``action_lists``/``resource_lists``: per pattern id, the
        statements found through it (resource-indexed statements are absent from the former).
        """
        if n_scp > MAX_LEVELS or n_rcp > MAX_LEVELS:
            raise ValueError(f"at most {MAX_LEVELS} SCP or RCP levels")
        self.action_trie = action_trie
        self.resource_trie = resource_trie
        self.patterns = patterns
        self.conditions = conditions
        self.n_keys = len(key_ids)
        self.n_slots = n_slots
        self.has_boundary = has_boundary
        self.has_session = has_session
        self.n_scp = n_scp
        self.n_rcp = n_rcp
        self.n_statements = len(statements)
        self.statements = <statement_t*>calloc(max(1, self.n_statements), sizeof(statement_t))
        self.dynamic_patterns = <int32_t*>calloc(max(1, len(dynamic)), sizeof(int32_t))
        if self.statements == NULL or self.dynamic_patterns == NULL:
            raise MemoryError()
        for i, p in enumerate(dynamic):
            self.dynamic_patterns[i] = p
        cdef int32_t s = 0, start = 0
        self.n_action_patterns = len(action_lists)
        self.n_statement_actions = sum(len(st[6]) for st in statements)
        self.statement_actions = <int32_t*>calloc(max(1, self.n_statement_actions), sizeof(int32_t))
        if self.statement_actions == NULL:
            raise MemoryError()
        for layer, flags, level, group, dyn, slot, action_ids in statements:
            self.statements[s].act_start = start
            self.statements[s].act_count = len(action_ids)
            for pid in action_ids:
                self.statement_actions[start] = pid
                start += 1
            self.statements[s].layer = layer
            self.statements[s].flags = flags
            self.statements[s].level = level
            self.statements[s].group = group
            self.statements[s].dyn_start = dyn[0] if dyn else 0
            self.statements[s].dyn_count = len(dyn)
            self.statements[s].slot = slot
            s += 1
        _csr(action_lists, &self.action_start, &self.action_statements)
        _csr(resource_lists, &self.resource_start, &self.resource_statements)
        not_action = [i for i, st in enumerate(statements)
                      if st[1] & F_NOT_ACTION and not st[1] & F_RESOURCE_INDEXED]
        self.n_not_action = len(not_action)
        self.not_action = <int32_t*>calloc(max(1, len(not_action)), sizeof(int32_t))
        if self.not_action == NULL:
            raise MemoryError()
        for i, s in enumerate(not_action):
            self.not_action[i] = s
        self.max_group_missing = max(1, conditions.max_missing_any())
        self.n_names = max(1, len(conditions.key_names))

    # ---------------------------------------------------------------- scratch

    cdef scratch_t* new_scratch(self) except NULL:
        """Per-thread working memory; every buffer zero-filled, the dense context all absent."""
        cdef scratch_t* sc = <scratch_t*>calloc(1, sizeof(scratch_t))
        if sc == NULL:
            raise MemoryError()
        cdef int32_t n = max(1, self.n_statements)
        sc.action_scratch = calloc(1, self.action_trie.scratch_size())
        sc.resource_scratch = calloc(1, self.resource_trie.scratch_size())
        sc.action_ids = <int32_t*>malloc(max(1, self.action_trie.result_capacity()) * sizeof(int32_t))
        sc.resource_ids = <int32_t*>malloc(max(1, self.resource_trie.result_capacity()) * sizeof(int32_t))
        sc.action_mark = <uint64_t*>calloc(n, sizeof(uint64_t))
        sc.resource_mark = <uint64_t*>calloc(n, sizeof(uint64_t))
        sc.pattern_mark = <uint64_t*>calloc(max(1, self.n_action_patterns), sizeof(uint64_t))
        sc.name_mark = <uint64_t*>calloc(self.n_names, sizeof(uint64_t))
        sc.candidates = <int32_t*>malloc(n * sizeof(int32_t))
        sc.ctx = <ctx_entry*>calloc(max(1, self.n_keys), sizeof(ctx_entry))
        sc.condition_scratch = <pseg*>calloc(self.conditions.scratch_segments(), sizeof(pseg))
        sc.pattern_scratch = <pseg*>calloc(self.patterns.max_segments(), sizeof(pseg))
        sc.group_missing = <int32_t*>malloc(self.max_group_missing * sizeof(int32_t))
        if (sc.action_scratch == NULL or sc.resource_scratch == NULL or sc.action_ids == NULL
                or sc.resource_ids == NULL or sc.action_mark == NULL or sc.resource_mark == NULL
                or sc.pattern_mark == NULL
                or sc.name_mark == NULL or sc.candidates == NULL or sc.ctx == NULL
                or sc.condition_scratch == NULL or sc.pattern_scratch == NULL or sc.group_missing == NULL):
            free_scratch(sc)
            raise MemoryError()
        for k in range(self.n_keys):
            sc.ctx[k].count = -1
        return sc

    cdef scratch_t* acquire(self) except NULL:
        """A scratch for one thread's use; called with the GIL held, which guards the spares."""
        if self.n_spare:
            self.n_spare -= 1
            return self.spare[self.n_spare]
        return self.new_scratch()

    cdef void release(self, scratch_t* sc) noexcept:
        if self.n_spare < SPARE_SCRATCH:
            self.spare[self.n_spare] = sc
            self.n_spare += 1
        else:
            free_scratch(sc)

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
        cdef bint static_hit = not star_request and sc.resource_mark[s] == sc.gen
        if st.flags & F_NOT_RESOURCE:
            return not (static_hit or dynamic_hit or (st.flags & F_NOT_RESOURCE_STAR))
        return static_hit or dynamic_hit or (st.flags & F_ANY_RESOURCE)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline bint actions_match(self, int32_t s, scratch_t* sc, uint64_t gen) noexcept nogil:
        """Action/NotAction of one statement, from the action patterns marked for this request."""
        cdef const statement_t* st = &self.statements[s]
        cdef int32_t k
        cdef bint hit = False
        for k in range(st.act_start, st.act_start + st.act_count):
            if sc.pattern_mark[self.statement_actions[k]] == gen:
                hit = True
                break
        return hit != <bint>(st.flags & F_NOT_ACTION)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int decide(self, const request_t* rq, const keyed_entry* entries, const uint8_t* grants,
                    scratch_t* sc, explain_t* ex) noexcept nogil:
        """One request's decision code; with ``ex``, also its applicable statements and missing keys."""
        cdef Py_ssize_t n, k
        cdef int32_t i, j, s, pid, n_candidates = 0, n_group_missing
        cdef const statement_t* st
        cdef bint star_request = engine_is_star(rq.resource.ptr, rq.resource.len)
        cdef bint unresolvable
        cdef int held, result = -1
        cdef bint any_deny = False, identity_allow = False, boundary_allow = False, session_allow = False
        cdef uint64_t scp_allow = 0, rcp_allow = 0
        cdef uint8_t grant = G_NONE, names
        sc.gen += 1
        cdef uint64_t gen = sc.gen

        for i in range(rq.ctx_count):
            sc.ctx[entries[i].key] = entries[i].entry
        # Action side: mark matching patterns; statements open to many resources become candidates.
        n = self.action_trie.match_into(<const unsigned char*>rq.action.ptr, rq.action.len,
                                        sc.action_scratch, sc.action_ids)
        for k in range(n):
            pid = sc.action_ids[k]
            sc.pattern_mark[pid] = gen
            for j in range(self.action_start[pid], self.action_start[pid + 1]):
                s = self.action_statements[j]
                if sc.action_mark[s] != gen:
                    sc.action_mark[s] = gen
                    if not (self.statements[s].flags & F_NOT_ACTION):
                        sc.candidates[n_candidates] = s
                        n_candidates += 1
        for i in range(self.n_not_action):
            s = self.not_action[i]
            if sc.action_mark[s] != gen:
                sc.candidates[n_candidates] = s
                n_candidates += 1
        # Resource side: mark statements whose fixed patterns match; resource-indexed ones
        # become candidates here when their actions match too.
        if not star_request:
            n = self.resource_trie.match_into(<const unsigned char*>rq.resource.ptr, rq.resource.len,
                                              sc.resource_scratch, sc.resource_ids)
            for k in range(n):
                pid = sc.resource_ids[k]
                for j in range(self.resource_start[pid], self.resource_start[pid + 1]):
                    s = self.resource_statements[j]
                    if sc.resource_mark[s] == gen:
                        continue
                    sc.resource_mark[s] = gen
                    if self.statements[s].flags & F_RESOURCE_INDEXED and self.actions_match(s, sc, gen):
                        sc.candidates[n_candidates] = s
                        n_candidates += 1

        for i in range(n_candidates):
            s = sc.candidates[i]
            st = &self.statements[s]
            names = G_NONE
            if st.layer == L_RESOURCE:
                names = grants[st.slot]
                if names == G_NONE:
                    continue
            unresolvable = False
            if not (st.flags & F_RESOURCE_INDEXED) and not self.resource_applies(st, s, rq, star_request, sc,
                                                                                 &unresolvable):
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
                if held == 2:
                    continue
                if ex != NULL:
                    for k in range(n_group_missing):
                        if sc.name_mark[sc.group_missing[k]] != gen:
                            sc.name_mark[sc.group_missing[k]] = gen
                            ex.missing[ex.n_missing] = sc.group_missing[k]
                            ex.n_missing += 1
                if held == 0:
                    continue
            if ex != NULL:
                ex.applicable[ex.n_applicable] = s
                ex.n_applicable += 1
            if st.flags & F_DENY:
                any_deny = True
            elif st.layer == L_IDENTITY:
                identity_allow = True
            elif st.layer == L_RESOURCE:
                if names > grant:
                    grant = names
            elif st.layer == L_BOUNDARY:
                boundary_allow = True
            elif st.layer == L_SESSION:
                session_allow = True
            elif st.layer == L_SCP:
                scp_allow |= (<uint64_t>1) << st.level
            else:
                rcp_allow |= (<uint64_t>1) << st.level

        for i in range(rq.ctx_count):
            sc.ctx[entries[i].key].count = -1
        if result == D_FAILED:
            return D_FAILED
        return self.combine(any_deny, identity_allow, boundary_allow, session_allow, scp_allow, rcp_allow,
                            grant, rq.same_account)

    cdef inline int combine(self, bint any_deny, bint identity_allow, bint boundary_allow, bint session_allow,
                            uint64_t scp_allow, uint64_t rcp_allow, uint8_t grant,
                            bint same_account) noexcept nogil:
        """``decision.combine`` in C (the decision only): deny wins; every SCP and RCP level must
        allow; then the identity path within boundary and session policy, or the resource
        policy's grant (on its own in the same account, beside the identity path across)."""
        if any_deny:
            return D_EXPLICIT
        cdef uint64_t all_scp = ((<uint64_t>1) << self.n_scp) - 1 if self.n_scp < 64 else ~(<uint64_t>0)
        cdef uint64_t all_rcp = ((<uint64_t>1) << self.n_rcp) - 1 if self.n_rcp < 64 else ~(<uint64_t>0)
        if (scp_allow & all_scp) != all_scp or (rcp_allow & all_rcp) != all_rcp:
            return D_IMPLICIT
        cdef bint boundary_ok = not self.has_boundary or boundary_allow
        cdef bint session_ok = not self.has_session or session_allow
        cdef bint identity_path = identity_allow and boundary_ok and session_ok
        if same_account:
            if identity_path or grant == G_DIRECT or (grant == G_BOUNDED and boundary_ok and session_ok):
                return D_ALLOW
            return D_IMPLICIT
        return D_ALLOW if identity_path and grant != G_NONE else D_IMPLICIT

    # ---------------------------------------------------------------- batches

    cdef void run(self, Batch batch, Py_ssize_t start, Py_ssize_t stop, scratch_t* sc) noexcept nogil:
        """Decide requests [start, stop) of a converted batch into its codes."""
        cdef Py_ssize_t i
        cdef const request_t* rq
        for i in range(start, stop):
            rq = &batch.requests[i]
            if rq.caller < 0:
                batch.codes[i] = D_FAILED
            else:
                batch.codes[i] = self.decide(rq, batch.entries + rq.ctx_start,
                                             batch.grants + rq.caller * self.n_slots, sc, NULL)

    def evaluate_range(self, Batch batch, Py_ssize_t start, Py_ssize_t stop):
        """Decide a slice of a converted batch without the GIL (threads may share one batch)."""
        if not 0 <= start <= stop <= batch.n:
            raise IndexError("range outside the batch")
        cdef scratch_t* sc = self.acquire()
        try:
            with nogil:
                self.run(batch, start, stop, sc)
        finally:
            self.release(sc)

    cdef int open_explain(self, explain_t* ex) except -1:
        """Buffers for one thread's explanations: every statement may apply, every key be missing."""
        ex.applicable = <int32_t*>malloc(max(1, self.n_statements) * sizeof(int32_t))
        ex.missing = <int32_t*>malloc(self.n_names * sizeof(int32_t))
        if ex.applicable == NULL or ex.missing == NULL:
            close_explain(ex)
            raise MemoryError()
        return 0

    cdef int decide_explained(self, Batch batch, Py_ssize_t i, scratch_t* sc, explain_t* ex) noexcept nogil:
        """Decide request i of a batch into its code, recording what explains it in ``ex``."""
        cdef const request_t* rq = &batch.requests[i]
        ex.n_applicable = ex.n_missing = 0
        ex.failed_statement = -1
        cdef int code = D_FAILED
        if rq.caller >= 0:
            code = self.decide(rq, batch.entries + rq.ctx_start, batch.grants + rq.caller * self.n_slots, sc, ex)
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
        if not 0 <= start <= stop <= batch.n:
            raise IndexError("range outside the batch")
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
        """Per request of a slice: (code, applicable statement ids, missing key-spelling ids,
        the statement whose condition failed to read a context value or -1)."""
        if not 0 <= start <= stop <= batch.n:
            raise IndexError("range outside the batch")
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
                                [ex.missing[k] for k in range(ex.n_missing)], ex.failed_statement))
        finally:
            close_explain(&ex)
            if sc != NULL:
                self.release(sc)
        return results


cdef void close_explain(explain_t* ex) noexcept:
    free(ex.applicable)
    free(ex.missing)
    ex.applicable = ex.missing = NULL


cdef void free_scratch(scratch_t* sc) noexcept:
    if sc == NULL:
        return
    free(sc.action_scratch)
    free(sc.resource_scratch)
    free(sc.action_ids)
    free(sc.resource_ids)
    free(sc.action_mark)
    free(sc.resource_mark)
    free(sc.pattern_mark)
    free(sc.name_mark)
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
    """
    PyObject* engine_list_item(PyObject* list, Py_ssize_t i)


cdef extern from *:
    """
    /* service:Action with letters, digits, '_' and '-' on both sides, as Request.create wants. */
    static int engine_valid_action(const char* p, Py_ssize_t n) {
        Py_ssize_t i, colon = -1;
        for (i = 0; i < n; i++) {
            char c = p[i];
            if (c == ':') { if (colon >= 0) return 0; colon = i; continue; }
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
                return 0;
        }
        return colon > 0 && colon < n - 1;
    }
    /* The account field of an ARN (between the 4th and 5th ':'); 0 if the text has fewer fields. */
    static int engine_arn_account(const char* p, Py_ssize_t n, Py_ssize_t* start, Py_ssize_t* len) {
        Py_ssize_t i, colons = 0, from = 0;
        if (n < 4 || p[0] != 'a' || p[1] != 'r' || p[2] != 'n' || p[3] != ':') return 0;
        for (i = 0; i < n; i++) {
            if (p[i] != ':') continue;
            colons++;
            if (colons == 4) from = i + 1;
            if (colons == 5) { *start = from; *len = i - from; return 1; }
        }
        return 0;
    }
    """
    int engine_valid_action(const char* p, Py_ssize_t n)
    int engine_arn_account(const char* p, Py_ssize_t n, Py_ssize_t* start, Py_ssize_t* len)


cdef class Batch:
    """Requests converted to C data once, with the GIL; evaluated in slices without it.

    Holds a reference to every Python string it points into, so the pointers stay valid.
    """

    cdef request_t* requests
    cdef keyed_entry* entries
    cdef cstr* values
    cdef uint8_t* grants
    cdef uint8_t* codes
    cdef readonly Py_ssize_t n
    cdef Py_ssize_t n_entries, cap_entries, n_values, cap_values
    cdef list keep_alive
    cdef readonly dict errors    # request index -> why it could not be evaluated
    cdef readonly list callers   # grant-table row -> principal ARN

    def __dealloc__(self):
        free(self.requests)
        free(self.entries)
        free(self.values)
        free(self.grants)
        free(self.codes)

    def codes_view(self):
        """The decision codes, one byte a request."""
        return bytes((<char*>self.codes)[:self.n]) if self.n else b""

    def same_account(self, Py_ssize_t i):
        return bool(self.requests[i].same_account)

    def caller(self, Py_ssize_t i):
        """The principal ARN of request i, or None when the request failed conversion."""
        row = self.requests[i].caller
        return self.callers[row] if row >= 0 else None

    cdef int grow(self, Py_ssize_t entries, Py_ssize_t values) except -1:
        cdef void* p
        if self.n_entries + entries > self.cap_entries:
            self.cap_entries = max(2 * self.cap_entries, self.n_entries + entries, 64)
            p = realloc(self.entries, self.cap_entries * sizeof(keyed_entry))
            if p == NULL:
                raise MemoryError()
            self.entries = <keyed_entry*>p
        if self.n_values + values > self.cap_values:
            self.cap_values = max(2 * self.cap_values, self.n_values + values, 64)
            p = realloc(self.values, self.cap_values * sizeof(cstr))
            if p == NULL:
                raise MemoryError()
            self.values = <cstr*>p
        return 0

    cdef int add_value(self, object text) except -1:
        cdef Py_ssize_t size
        cdef const char* data = PyUnicode_AsUTF8AndSize(text, &size)
        self.values[self.n_values].ptr = data
        self.values[self.n_values].len = size
        self.n_values += 1
        return 0


cdef object _as_text(object value):
    """A context value as IAM reads it: JSON booleans and numbers become their text."""
    if type(value) is str:
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return None


cdef str _add_context(Batch batch, dict context, dict key_cache, dict key_ids, uint64_t* seen, uint64_t stamp):
    """Append one request's context entries (keys the policies use); returns why it is unusable, or None."""
    cdef object key, value, kid_obj, problem
    cdef int32_t kid
    for key, value in context.items():
        kid_obj = key_cache.get(key)
        if kid_obj is None:
            if type(key) is not str or not key:
                return f"context key {key!r} must be a non-empty string"
            kid_obj = key_ids.get(key.lower(), -1)
            key_cache[key] = kid_obj
        kid = kid_obj
        if kid < 0:
            continue
        if seen[kid] == stamp:
            return f"context key {key!r} is given twice (key names are case-insensitive)"
        seen[kid] = stamp
        problem = _add_value(batch, kid, key, value)
        if problem is not None:
            return problem
    return None


cdef str _add_value(Batch batch, int32_t kid, object key, object value):
    """Append one context entry (a string, a list of strings, or a JSON scalar)."""
    cdef Py_ssize_t start, count = 1
    cdef object text
    cdef bint is_list = type(value) is tuple or type(value) is list
    if type(value) is str:
        batch.grow(1, 1)
        start = batch.n_values
        batch.add_value(value)
    elif is_list:
        batch.grow(1, len(value))
        start = batch.n_values
        for item in value:
            text = _as_text(item)
            if text is None:
                return f"context key {key!r}: values must be strings (or lists of strings), not {item!r}"
            if text is not item:
                batch.keep_alive.append(text)
            batch.add_value(text)
        count = len(value)
    else:
        text = _as_text(value)
        if text is None:
            return f"context key {key!r}: values must be strings (or lists of strings), not {value!r}"
        batch.keep_alive.append(text)
        batch.grow(1, 1)
        start = batch.n_values
        batch.add_value(text)
    batch.entries[batch.n_entries].key = kid
    batch.entries[batch.n_entries].entry.count = <int32_t>count
    batch.entries[batch.n_entries].entry.is_list = is_list
    batch.entries[batch.n_entries].entry.values = <const cstr*><size_t>start  # an offset until fixed up
    batch.n_entries += 1
    return None


def convert(Engine engine, principals, actions, resources, contexts, resource_accounts, dict key_ids,
            describe_caller):
    """Convert parallel sequences of requests into a ``Batch``.

    ``contexts`` is None, or one mapping (or None) per request. ``resource_accounts`` is None
    or one account id (or None) per request; a missing one is the account in the resource
    ARN, else the caller's. ``describe_caller(principal)`` returns (account, grants) for a
    principal, or raises ``ValueError`` with the reason it cannot be evaluated.
    A request that cannot be evaluated is not an exception: it fails (denied) with its reason.
    """
    cdef list principal_list = principals if type(principals) is list else list(principals)
    cdef list action_list = actions if type(actions) is list else list(actions)
    cdef list resource_list = resources if type(resources) is list else list(resources)
    cdef list context_list = None
    cdef list column_keys = []      # (key id, key as given, column) for context columns the policies use
    cdef list account_list = None
    cdef Py_ssize_t n = len(principal_list)
    if len(action_list) != n or len(resource_list) != n:
        raise ValueError("principals, actions and resources must have the same length")
    if isinstance(contexts, Mapping):
        for key, column in contexts.items():
            if type(key) is not str or not key:
                raise ValueError(f"context column names must be non-empty strings, not {key!r}")
            column = column if type(column) is list else list(column)
            if len(column) != n:
                raise ValueError(f"context column {key!r} must have one entry per request")
            column_id = key_ids.get(key.lower(), -1)
            if column_id >= 0:
                if any(column_id == other[0] for other in column_keys):
                    raise ValueError(f"context column {key!r} is given twice (key names are case-insensitive)")
                column_keys.append((column_id, key, column))
    elif contexts is not None:
        context_list = contexts if type(contexts) is list else list(contexts)
        if len(context_list) != n:
            raise ValueError("contexts must have one entry per request")
    if resource_accounts is not None:
        account_list = resource_accounts if type(resource_accounts) is list else list(resource_accounts)
        if len(account_list) != n:
            raise ValueError("resource_accounts must have one entry per request")
    cdef Batch batch = Batch()
    batch.n = n
    batch.errors = {}
    batch.callers = []
    batch.keep_alive = [principal_list, action_list, resource_list, context_list, account_list]
    batch.requests = <request_t*>calloc(max(1, n), sizeof(request_t))
    batch.codes = <uint8_t*>calloc(max(1, n), sizeof(uint8_t))
    cdef uint64_t* seen = <uint64_t*>calloc(max(1, engine.n_keys), sizeof(uint64_t))
    cdef Py_ssize_t n_columns = len(column_keys)
    cdef list columns = [column for _, _, column in column_keys]
    cdef list column_names = [key for _, key, _ in column_keys]
    cdef list column_ids = [key_id for key_id, _, _ in column_keys]
    if context_list is not None or column_keys:
        batch.grow(4 * n, 4 * n)  # most contexts give a few of the policies' keys
    if batch.requests == NULL or batch.codes == NULL or seen == NULL:
        free(seen)
        raise MemoryError()
    cdef dict rows = {}
    cdef dict caller_errors = {}
    cdef list accounts = []
    cdef bytearray grant_table = bytearray()
    cdef dict key_cache = {}
    cdef Py_ssize_t i, k, size, account_start = 0, account_len = 0
    cdef request_t* rq
    cdef object principal, action, resource, context, row, problem, account, given_account, value
    cdef PyObject* item
    cdef bytes caller_account
    cdef const char* data
    try:
        for i in range(n):
            rq = &batch.requests[i]
            rq.caller = -1
            rq.ctx_start = <int32_t>batch.n_entries
            principal = principal_list[i]
            action = action_list[i]
            resource = resource_list[i]
            problem = None
            row = rows.get(principal) if type(principal) is str else None
            if row is None:
                if type(principal) is not str:
                    problem = f"request principal must be a string, not {principal!r}"
                elif principal in caller_errors:
                    problem = caller_errors[principal]
                else:
                    try:
                        account, grants = describe_caller(principal)
                    except ValueError as exc:
                        problem = caller_errors[principal] = str(exc)
                    else:
                        row = rows[principal] = len(accounts)
                        accounts.append(account.encode())
                        batch.callers.append(principal)
                        grant_table += grants
            if problem is None and (type(action) is not str or type(resource) is not str):
                problem = f"request action and resource must be strings, not {action!r} and {resource!r}"
            if problem is None:
                data = PyUnicode_AsUTF8AndSize(action, &size)
                rq.action.ptr = data
                rq.action.len = size
                if not engine_valid_action(data, size):
                    problem = f"request action {action!r} is not service:Action"
            if problem is None:
                data = PyUnicode_AsUTF8AndSize(resource, &size)
                rq.resource.ptr = data
                rq.resource.len = size
                if engine_is_star(data, size):
                    account_len = 0
                elif not engine_arn_account(data, size, &account_start, &account_len):
                    problem = f"request resource {resource!r} is neither an ARN nor \"*\""
            if problem is None:
                given_account = account_list[i] if account_list is not None else None
                if given_account is not None:
                    rq.same_account = str(given_account).encode() == accounts[row]
                elif account_len:
                    caller_account = accounts[row]
                    rq.same_account = account_len == len(caller_account) and memcmp(
                        data + account_start, <const char*>caller_account, account_len) == 0
                else:
                    rq.same_account = True
            if problem is None and context_list is not None:
                context = context_list[i]
                if context is not None:
                    if type(context) is not dict:
                        context = dict(context) if isinstance(context, Mapping) else None
                    if context is None:
                        problem = f"request context must be an object, not {context_list[i]!r}"
                    else:
                        problem = _add_context(batch, context, key_cache, key_ids, seen, <uint64_t>(i + 1))
            if problem is None and n_columns:
                for k in range(n_columns):  # borrowed references: no per-request tuple or refcount work
                    item = engine_list_item(engine_list_item(<PyObject*>columns, k), i)
                    if item != <PyObject*>None:
                        problem = _add_value(batch, <int32_t><long>(<object>engine_list_item(<PyObject*>column_ids, k)),
                                             <object>engine_list_item(<PyObject*>column_names, k), <object>item)
                        if problem is not None:
                            break
            if problem is None:
                rq.caller = row
                rq.ctx_count = <int32_t>(batch.n_entries - rq.ctx_start)
            else:
                batch.n_entries = rq.ctx_start  # drop the entries of a request that failed
                rq.ctx_count = 0
                batch.errors[i] = problem
        for k in range(batch.n_entries):  # the values array has stopped moving: offsets -> pointers
            batch.entries[k].entry.values = batch.values + <size_t>batch.entries[k].entry.values
        batch.grants = <uint8_t*>malloc(max(1, len(grant_table)))
        if batch.grants == NULL:
            raise MemoryError()
        for k in range(len(grant_table)):
            batch.grants[k] = grant_table[k]
    finally:
        free(seen)
    return batch


# ==================================================================== Arrow conversion

ctypedef struct strcol:          # an Arrow string array: no Python object per row
    const int32_t* offsets       # already moved by the array's offset
    const char* data
    const uint8_t* validity      # NULL: no nulls
    Py_ssize_t bit_offset


ctypedef struct listcol:         # an Arrow list<string> array
    const int32_t* offsets
    const uint8_t* validity
    Py_ssize_t bit_offset
    strcol items


cdef inline bint _valid(const uint8_t* validity, Py_ssize_t bit) noexcept nogil:
    return validity == NULL or (validity[bit >> 3] >> (bit & 7)) & 1


cdef const char* _EMPTY = ""


cdef list _header(object array, const uint8_t** validity, Py_ssize_t* bit_offset,
                  const int32_t** offsets):
    """The validity bitmap and offsets that string and list arrays share; returns the buffers."""
    buffers = array.buffers()
    cdef Py_ssize_t shift = array.offset
    bit_offset[0] = shift
    validity[0] = NULL
    if buffers[0] is not None:
        validity[0] = <const uint8_t*><size_t>buffers[0].address
    offsets[0] = (<const int32_t*><size_t>buffers[1].address) + shift
    return buffers


cdef int _strcol(object array, strcol* out) except -1:
    buffers = _header(array, &out.validity, &out.bit_offset, &out.offsets)
    out.data = _EMPTY if buffers[2] is None or buffers[2].size == 0 else <const char*><size_t>buffers[2].address
    return 0


cdef int _listcol(object array, listcol* out) except -1:
    _header(array, &out.validity, &out.bit_offset, &out.offsets)
    _strcol(array.values, &out.items)
    return 0


cdef inline cstr _item(const strcol* column, Py_ssize_t i) noexcept nogil:
    cdef cstr text
    text.ptr = column.data + column.offsets[i]
    text.len = column.offsets[i + 1] - column.offsets[i]
    return text


def convert_arrow(Engine engine, principal_indices, list principal_rows, list callers, bytes grants,
                  list caller_accounts_bytes, actions, resources, resource_accounts, list context_fields):
    """Convert Arrow columns into a ``Batch`` without creating a Python object per row.

    ``principal_indices``: int32 indices into the distinct principals; ``principal_rows``:
    each distinct principal's row of the grant table (-1: it cannot be evaluated, and the
    caller reports why); ``callers``, ``grants`` and ``caller_accounts_bytes``: per row, the
    principal, its grants (``n_slots`` bytes each) and account; ``actions``/``resources``:
    string arrays; ``resource_accounts``: string
    array or None; ``context_fields``: (key id, key, array, is_list) with string or
    list<string> arrays, already carrying the struct's nulls.
    """
    cdef Py_ssize_t n = len(actions)
    cdef Batch batch = Batch()
    batch.n = n
    batch.errors = {}
    batch.callers = callers
    batch.keep_alive = [principal_indices, actions, resources, resource_accounts, context_fields, caller_accounts_bytes]
    batch.requests = <request_t*>calloc(max(1, n), sizeof(request_t))
    batch.codes = <uint8_t*>calloc(max(1, n), sizeof(uint8_t))
    if batch.requests == NULL or batch.codes == NULL:
        raise MemoryError()
    cdef strcol action_col, resource_col, account_col
    _strcol(actions, &action_col)
    _strcol(resources, &resource_col)
    cdef bint has_accounts = resource_accounts is not None
    if has_accounts:
        _strcol(resource_accounts, &account_col)
    index_buffers = principal_indices.buffers()
    cdef Py_ssize_t index_shift = principal_indices.offset
    cdef const int32_t* indices = (<const int32_t*><size_t>index_buffers[1].address) + index_shift
    cdef Py_ssize_t n_fields = len(context_fields)
    cdef Py_ssize_t f, i, k, start, count, account_start = 0, account_len = 0
    cdef strcol* strings = <strcol*>calloc(max(1, n_fields), sizeof(strcol))
    cdef listcol* lists = <listcol*>calloc(max(1, n_fields), sizeof(listcol))
    cdef int32_t* field_keys = <int32_t*>calloc(max(1, n_fields), sizeof(int32_t))
    cdef bint* is_list = <bint*>calloc(max(1, n_fields), sizeof(bint))
    cdef int32_t* rows = <int32_t*>calloc(max(1, len(principal_rows)), sizeof(int32_t))
    cdef const char** caller_accounts = <const char**>calloc(max(1, len(callers)), sizeof(char*))
    cdef Py_ssize_t* caller_account_len = <Py_ssize_t*>calloc(max(1, len(callers)), sizeof(Py_ssize_t))
    cdef request_t* rq
    cdef cstr account
    cdef const strcol* items
    cdef bytes account_bytes
    cdef uint64_t* seen = <uint64_t*>calloc(max(1, engine.n_keys), sizeof(uint64_t))  # key given in row i: i + 1
    cdef bint twice
    try:
        if (strings == NULL or lists == NULL or field_keys == NULL or is_list == NULL or rows == NULL
                or caller_accounts == NULL or caller_account_len == NULL or seen == NULL):
            raise MemoryError()
        for k, row in enumerate(principal_rows):
            rows[k] = row
        for k, account_bytes in enumerate(caller_accounts_bytes):
            caller_accounts[k] = account_bytes
            caller_account_len[k] = len(account_bytes)
        batch.grants = <uint8_t*>malloc(max(1, len(grants)))
        if batch.grants == NULL:
            raise MemoryError()
        for k in range(len(grants)):
            batch.grants[k] = grants[k]
        for f, (key_id, _, array, field_is_list) in enumerate(context_fields):
            field_keys[f] = key_id
            is_list[f] = field_is_list
            if is_list[f]:
                _listcol(array, &lists[f])
            else:
                _strcol(array, &strings[f])
        batch.grow(n * n_fields // 2 + 64, n * n_fields // 2 + 64)
        for i in range(n):
            rq = &batch.requests[i]
            rq.caller = rows[indices[i]]
            rq.ctx_start = <int32_t>batch.n_entries
            if rq.caller < 0:
                continue  # the principal's reason is reported by the caller
            rq.action = _item(&action_col, i)
            rq.resource = _item(&resource_col, i)
            if not _valid(action_col.validity, action_col.bit_offset + i) \
                    or not _valid(resource_col.validity, resource_col.bit_offset + i):
                batch.errors[i] = "request action and resource must not be null"
                rq.caller = -1
                continue
            if not engine_valid_action(rq.action.ptr, rq.action.len):
                batch.errors[i] = f"request action {rq.action.ptr[:rq.action.len].decode(errors='replace')!r} " \
                                  "is not service:Action"
                rq.caller = -1
                continue
            if engine_is_star(rq.resource.ptr, rq.resource.len):
                account_len = 0
            elif not engine_arn_account(rq.resource.ptr, rq.resource.len, &account_start, &account_len):
                batch.errors[i] = (f"request resource {rq.resource.ptr[:rq.resource.len].decode(errors='replace')!r}"
                                   " is neither an ARN nor \"*\"")
                rq.caller = -1
                continue
            k = rq.caller
            if has_accounts and _valid(account_col.validity, account_col.bit_offset + i):
                account = _item(&account_col, i)
                rq.same_account = account.len == caller_account_len[k] and memcmp(
                    account.ptr, caller_accounts[k], account.len) == 0
            elif account_len:
                rq.same_account = account_len == caller_account_len[k] and memcmp(
                    rq.resource.ptr + account_start, caller_accounts[k], account_len) == 0
            else:
                rq.same_account = True
            twice = False
            for f in range(n_fields):
                if is_list[f]:
                    if not _valid(lists[f].validity, lists[f].bit_offset + i):
                        continue
                    start = lists[f].offsets[i]
                    count = lists[f].offsets[i + 1] - start
                    items = &lists[f].items
                else:
                    if not _valid(strings[f].validity, strings[f].bit_offset + i):
                        continue
                    start = i
                    count = 1
                    items = &strings[f]
                if seen[field_keys[f]] == <uint64_t>(i + 1):  # two spellings of one key in this row
                    twice = True
                    break
                seen[field_keys[f]] = i + 1
                batch.grow(1, count)
                batch.entries[batch.n_entries].key = field_keys[f]
                batch.entries[batch.n_entries].entry.count = <int32_t>count
                batch.entries[batch.n_entries].entry.is_list = is_list[f]
                batch.entries[batch.n_entries].entry.values = <const cstr*><size_t>batch.n_values
                for k in range(start, start + count):
                    batch.values[batch.n_values] = _item(items, k)
                    batch.n_values += 1
                batch.n_entries += 1
            if twice:
                batch.errors[i] = f"context key {context_fields[f][1]!r} is given twice (key names are case-insensitive)"
                batch.n_entries = rq.ctx_start
                rq.caller = -1
                continue
            rq.ctx_count = <int32_t>(batch.n_entries - rq.ctx_start)
        for k in range(batch.n_entries):  # the values array has stopped moving: offsets -> pointers
            batch.entries[k].entry.values = batch.values + <size_t>batch.entries[k].entry.values
    finally:
        free(seen)
        free(strings)
        free(lists)
        free(field_keys)
        free(is_list)
        free(rows)
        free(caller_accounts)
        free(caller_account_len)
    return batch
