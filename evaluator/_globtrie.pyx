# cython: language_level=3, embedsignature=True
"""Wildcard trie: every IAM glob pattern matching a string, in one linear pass.

IAM patterns use ``*`` (any run of characters, ``:`` and ``/`` included) and ``?`` (exactly
one character). Thousands of them are merged into one trie whose edges are UTF-8 bytes plus a
``?`` edge and a ``*`` edge per node; the trie is a nondeterministic automaton (NFA) over the
input.

Semantics. Matching works on the UTF-8 encoding of the input, one code point per NFA step:
literal edges consume the bytes of that code point, while ``?`` and ``*`` consume the whole
code point, so ``?`` matches exactly one Unicode code point (lone surrogates count as one, like
in ``str``). With ``ignore_case`` only ASCII letters are folded, in patterns and inputs alike
(IAM actions are ASCII); other characters must match exactly. A node entered through ``*``
stays active on every step; entering a node also enters its ``*`` child (the star matching
nothing). A ``*`` node with no way out (a "sink") matches whatever follows.

Lazy DFA. Each scratch buffer (one per thread) caches determinised states: a DFA state is the
set of NFA nodes active after some input, and its transitions are computed on demand by one
NFA step, then stored in a table with one int32 slot per byte class (bytes that no edge tells
apart, after case folding, share a class), so a warm match costs one table lookup per input
byte, whatever the number of patterns.

* Sinks and accepting ``*`` nodes stay in the DFA states (they never leave), so the ids matched
  when the input ends are a function of the final state alone; they are computed the first time
  an input ends in that state and cached, sorted. A state holding nothing but sinks is
  "terminal": the result cannot change any more and matching stops there.
* The alphabet is bytes. Inside a multi-byte code point a state remembers how many bytes are
  left, the nodes reached so far along literal byte edges, and the nodes that become active once
  the code point ends (``*`` nodes and ``?`` targets): a code point of w bytes is w transitions,
  and ``?`` still consumes one code point. Input ending inside a code point (invalid UTF-8) ends
  it there, as the NFA step does.
* States are interned in a hash table keyed by an order-independent hash of their node sets;
  candidates are compared with the node generation stamps of the NFA step that built them.
* The bytes every pattern starts with (``arn:aws:`` for typical resource patterns) are compared
  at once, and the automaton starts where they lead.
* The cache grows by demand, within bounds: it starts with room for ``dfa_states`` states and a
  pool of ``dfa_pool`` int32 slots for their node lists and cached results, and each time a new
  state does not fit it is replaced by one twice as large (its states dropped), up to
  ``dfa_max_states`` (all sized from the trie by ``freeze()``, see ``_cache_geometry``). A full
  cache at its bound is emptied and matching continues; if the same input fills it a second
  time, that input is finished by the NFA simulation (no cache: O(active nodes) per code point,
  sinks dropped as soon as reached).
* Thrashing: when the cache fills up before the states it holds paid for their construction
  (see ``_thrashing``: the working set is larger than the cache, as with thousands of distinct
  action names against thousands of patterns), the NFA alone runs the following calls for a
  while (doubling on each consecutive thrash), then the DFA is tried again from empty.

Costs: a cached transition is one table lookup; computing one is an NFA step, O(nodes in the
state * log(edges per node)) plus hashing it; a cache fills at most twice per input, so every
match is linear in the input whatever the patterns (no backtracking), and the memory is the
fixed scratch.

Lifecycle: ``add()`` patterns, ``freeze()`` into flat C arrays, then match. ``add()`` only
records each pattern (its tokens and id, in one bytes object); ``freeze()`` sorts the records
and builds the arrays in one pass over them, with no Python object per node. A frozen trie is
immutable; every match uses its own scratch memory, so threads can match concurrently (the
Python methods release the GIL while matching long inputs).
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcpy, memset

import enum


cdef extern from *:
    """
    /* Spreads a node id over 64 bits (two odd multipliers, xor-shifts in between), so that
       sums of mixed ids hash node sets independently of their order. */
    static inline uint64_t gt_mix(uint64_t x) {
        x = (x + 1) * 0x9E3779B97F4A7C15ULL;
        x ^= x >> 29;
        x *= 0xD6E8FEB86659FD93ULL;
        return x ^ (x >> 32);
    }
    /* Salts the hash of the pending list and of the bytes-left count of a DFA state. */
    static const uint64_t GT_SALT_PEND = 1ULL << 40;
    static const uint64_t GT_SALT_REMAINING = 0x100000001B3ULL;
    """
    uint64_t gt_mix(uint64_t x) nogil
    const uint64_t GT_SALT_PEND
    const uint64_t GT_SALT_REMAINING


class Wildcard(enum.Enum):
    """Wildcard token for add() when a pattern is a token sequence (str tokens are literal)."""

    STAR = "*"
    QMARK = "?"


STAR = Wildcard.STAR
QMARK = Wildcard.QMARK

cdef enum:
    # Python-level calls release the GIL only for inputs this long: releasing and re-taking it
    # costs about as much as matching a short action name.
    _NOGIL_MIN_BYTES = 256
    # Default cache sizes per scratch (see _cache_geometry).
    _MIN_STATES = 512
    _MAX_STATES = 65536
    _NODES_PER_STATE = 4
    _STATES_PER_NODE = 16
    _POOL_PER_STATE = 8
    _LIMIT_STATES = 1 << 20
    # Thrashing (see _thrashing): building a state is costed as an NFA step plus _BUILD_COST
    # node visits. When the cache fills up before it has paid off, the NFA alone runs the next
    # backoff * states calls (backoff starts at _MIN_BACKOFF and doubles on each consecutive
    # thrash, up to _MAX_BACKOFF).
    _BUILD_COST = 40
    _MIN_BACKOFF = 4
    _MAX_BACKOFF = 256

# Input byte translation tables: identity, and ASCII upper -> lower case.
cdef uint8_t _SAME[256]
cdef uint8_t _LOWER[256]
# Length of the UTF-8 sequence introduced by a byte (1 for stray continuation/invalid bytes).
cdef uint8_t _SEQ_LEN[256]
# What a link reads as where its gt_node is asked for (it has none in GlobTrie._nodes): no '?' or
# '*' edge, no ids, no stored edges (its byte edge is its entry in GlobTrie._links).
cdef gt_node _LINK_NODE


cdef void _init_tables() noexcept:
    cdef int b
    for b in range(256):
        _SAME[b] = b
        _LOWER[b] = b + 32 if 65 <= b <= 90 else b
        _SEQ_LEN[b] = 2 if 0xC0 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF7 else 1
    memset(&_LINK_NODE, 0, sizeof(gt_node))
    _LINK_NODE.qmark = _LINK_NODE.star = -1


_init_tables()


# ---------------------------------------------------------------------- NFA simulation

# State of one match call, shared with the inline helpers.
ctypedef struct gt_run:
    const gt_node* nodes
    const uint32_t* links
    const uint8_t* edge_bytes
    const int32_t* edge_targets
    const int32_t* acc
    const uint8_t* fold
    uint64_t* node_stamp
    uint64_t* id_stamp
    uint64_t call_gen        # stamps ids emitted by this call (and bounds earlier calls' node stamps)
    uint64_t gen             # stamps nodes entered or marked by the current step
    int32_t* out             # dense ids emitted; NULL: only decide whether anything matches
    Py_ssize_t n_out


cdef inline void _emit(gt_run* r, const gt_node* nd) noexcept nogil:
    """Record the dense ids accepted by a node, once each per call."""
    cdef uint32_t a
    cdef int32_t d
    for a in range(nd.acc_start, nd.acc_start + nd.acc_count):
        d = r.acc[a]
        if r.id_stamp[d] != r.call_gen:
            r.id_stamp[d] = r.call_gen
            r.out[r.n_out] = d
            r.n_out += 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline const gt_node* _node(const gt_run* r, int32_t node) noexcept nogil:
    """The gt_node of any node (a link reads as _LINK_NODE)."""
    cdef uint32_t entry = r.links[node]
    return &_LINK_NODE if entry < GT_STORED else &r.nodes[entry - GT_STORED]


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline int32_t _child(const gt_run* r, int32_t node, uint8_t b) noexcept nogil:
    """Target of the byte edge b out of node, or -1."""
    cdef uint32_t entry = r.links[node]
    if entry < GT_STORED:
        return node + 1 if entry == b else -1
    return _edge(r, &r.nodes[entry - GT_STORED], b)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline int32_t _edge(const gt_run* r, const gt_node* nd, uint8_t b) noexcept nogil:
    """Target of the byte edge b out of a node that is not a link (binary search over its sorted
    edges), or -1."""
    cdef uint32_t lo = nd.edge_start
    cdef uint32_t hi = lo + nd.n_edges
    cdef uint32_t mid
    cdef uint8_t e
    while lo < hi:
        mid = (lo + hi) >> 1
        e = r.edge_bytes[mid]
        if e < b:
            lo = mid + 1
        elif e > b:
            hi = mid
        else:
            return r.edge_targets[mid]
    return -1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _enter(gt_run* r, int32_t t, uint32_t* nxt, Py_ssize_t n_nxt) noexcept nogil:
    """NFA: make node t active for the next step (with its epsilon '*' child): push it on nxt.

    Only '*' nodes can be entered twice in one step (through their parent's '*' edge and their
    own loop): every other node has one parent and one edge from it, taken at most once a step,
    so only '*' nodes carry stamps here (a link is pushed without reading its node). Sinks are
    reported and left out of nxt. Returns the new length of nxt, or -1 when only a yes/no answer
    is wanted (r.out is NULL) and a match is now certain.
    """
    cdef const gt_node* nd
    cdef uint64_t stamp
    cdef uint32_t entry
    while t >= 0:
        entry = r.links[t]
        if entry < GT_STORED:
            nxt[n_nxt] = <uint32_t>t
            return n_nxt + 1
        nd = &r.nodes[entry - GT_STORED]
        if nd.loop:
            stamp = r.node_stamp[t]
            if stamp == r.gen or (nd.sink and stamp > r.call_gen):
                break
            r.node_stamp[t] = r.gen
            if nd.acc_count and stamp <= r.call_gen:
                # A '*' node that accepts stays active to the end, so its ids match: report them
                # on first entry (allows the early exit of match_any).
                if r.out == NULL:
                    return -1
                _emit(r, nd)
            if nd.sink:
                break  # nothing more can happen in it: keep it out of the active set
        nxt[n_nxt] = <uint32_t>t
        n_nxt += 1
        t = nd.star  # a '*' node has no '*' child (stars are collapsed), so this loops at most twice
    return n_nxt


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _nfa(gt_run* r, const unsigned char* text, Py_ssize_t n, Py_ssize_t i,
                     uint32_t* cur, Py_ssize_t n_cur, uint32_t* nxt) noexcept nogil:
    """Simulate the NFA over text[i:] from the n_cur active nodes in cur (distinct, already
    entered: their ids reported). Emits dense ids into r.out (unsorted) and returns r.n_out;
    with r.out NULL returns 1 as soon as a match is certain, else 0. nxt: room for every node.

    A lone active link (one pattern's literal run, the usual state once the input has left the
    others) is followed byte by byte while the input spells it in ASCII, with no set to keep.
    """
    cdef const gt_node* nd
    cdef uint32_t* swap
    cdef Py_ssize_t j, q, n_nxt, width
    cdef uint32_t s, entry
    cdef int32_t t
    while i < n and n_cur > 0:
        if n_cur == 1 and r.links[cur[0]] < GT_STORED and text[i] < 0x80:
            s = cur[0]
            entry = r.links[s]
            while entry < GT_STORED and i < n and text[i] < 0x80:
                if entry != r.fold[text[i]]:
                    return r.n_out if r.out != NULL else 0  # the run is left: nothing more can match
                s += 1
                i += 1
                entry = r.links[s]  # a link is never the last node
            r.gen += 1
            n_cur = _enter(r, <int32_t>s, cur, 0)
            if n_cur < 0:
                return 1
            continue
        r.gen += 1
        n_nxt = 0
        width = _SEQ_LEN[text[i]]
        if width > n - i:
            width = n - i
        for j in range(n_cur):
            s = cur[j]
            entry = r.links[s]
            if entry < GT_STORED:  # a link: no '*' or '?' edge, no gt_node
                t = <int32_t>s + 1 if entry == r.fold[text[i]] else -1
            else:
                nd = &r.nodes[entry - GT_STORED]
                if nd.loop and r.node_stamp[s] != r.gen:
                    # It stays active (what _enter() does for a '*' node entered before in this
                    # call: it is no sink, its ids were reported, and it has no '*' child).
                    r.node_stamp[s] = r.gen
                    nxt[n_nxt] = s
                    n_nxt += 1
                if nd.qmark >= 0:
                    n_nxt = _enter(r, nd.qmark, nxt, n_nxt)
                    if n_nxt < 0:
                        return 1
                t = _edge(r, nd, r.fold[text[i]])
            for q in range(1, width):  # literal edges spell the code point byte by byte
                if t < 0:
                    break
                t = _child(r, t, r.fold[text[i + q]])
            if t >= 0:
                n_nxt = _enter(r, t, nxt, n_nxt)
                if n_nxt < 0:
                    return 1
        swap = cur
        cur = nxt
        nxt = swap
        n_cur = n_nxt
        i += width
    # Input consumed (or no node left): the active nodes are the end states. Accepting '*'
    # nodes were reported when entered.
    for j in range(n_cur):
        nd = _node(r, cur[j])
        if nd.acc_count and not nd.loop:
            if r.out == NULL:
                return 1
            _emit(r, nd)
    return r.n_out if r.out != NULL else 0


cdef int _cmp_int32(const void* a, const void* b) noexcept nogil:
    cdef int32_t x = (<const int32_t*>a)[0]
    cdef int32_t y = (<const int32_t*>b)[0]
    return (x > y) - (x < y)


cdef inline void _sort_ids(int32_t* ids, Py_ssize_t count, const int32_t* dense_to_id) noexcept nogil:
    """Sort dense ids in place and translate them to pattern ids (dense order == id order)."""
    cdef Py_ssize_t k, m
    cdef int32_t v
    if count > 16:
        qsort(ids, count, sizeof(int32_t), _cmp_int32)
    else:  # insertion sort: cheaper than qsort's indirect calls for the usual few results
        for k in range(1, count):
            v = ids[k]
            m = k
            while m > 0 and ids[m - 1] > v:
                ids[m] = ids[m - 1]
                m -= 1
            ids[m] = v
    for k in range(count):
        ids[k] = dense_to_id[ids[k]]


# ---------------------------------------------------------------------- lazy DFA

# Pointers into one scratch's DFA cache (copied from its header: see gt_cache in the .pxd), plus
# the trie's cache geometry.
ctypedef struct gt_dfa:
    gt_cache* cache
    gt_dstate* states        # state 0 is reserved: handle 0 means "no transition cached yet"
    int32_t* trans           # per state, one row: see GT_ROW_* in the .pxd
    int32_t* slots           # hash table of state indices, 0 = empty
    int32_t* pool            # node lists and cached results of the states
    uint32_t* tmp_a          # candidate state under construction: literal / whole set
    uint32_t* tmp_b          # candidate state under construction: pending set
    int32_t n_cls
    int32_t stride
    int32_t max_states
    int32_t pool_cap
    int32_t hash_mask
    int32_t cap_states       # the bound the cache may grow to


cdef inline void _load(gt_dfa* d) noexcept nogil:
    """Point d at its cache's current block."""
    cdef gt_cache* cache = d.cache
    d.states = cache.states
    d.trans = cache.trans
    d.slots = cache.slots
    d.pool = cache.pool
    d.max_states = cache.max_states
    d.pool_cap = cache.pool_cap
    d.hash_mask = cache.hash_mask


cdef bint _new_block(gt_cache* cache, int32_t states, int32_t pool, int32_t stride) noexcept nogil:
    """Give the cache an empty, zero-filled block for `states` states (the reserved state 0
    included) and `pool` pool slots, freeing the old one; False when out of memory (nothing
    changed)."""
    cdef Py_ssize_t hash_slots = 2
    while hash_slots < 2 * states:
        hash_slots *= 2
    # The transition rows are int32; the states after them need 8-byte alignment.
    cdef Py_ssize_t trans_bytes = (<Py_ssize_t>states * stride * sizeof(int32_t) + 7) & ~(<Py_ssize_t>7)
    cdef Py_ssize_t states_bytes = states * sizeof(gt_dstate)
    cdef Py_ssize_t total = trans_bytes + states_bytes + (hash_slots + pool) * sizeof(int32_t)
    cdef char* block = <char*>calloc(1, total)
    if block == NULL:
        return False
    free(cache.trans)
    cache.trans = <int32_t*>block
    cache.states = <gt_dstate*>(block + trans_bytes)
    cache.slots = <int32_t*>(block + trans_bytes + states_bytes)
    cache.pool = cache.slots + hash_slots
    cache.block_bytes = total
    cache.max_states = states
    cache.pool_cap = pool
    cache.hash_mask = <int32_t>(hash_slots - 1)
    cache.n_states = 1
    cache.pool_used = 0
    cache.start = 0
    return True


cdef void gt_free_scratch(void* scratch) noexcept nogil:
    if scratch != NULL:
        free((<gt_cache*>scratch).trans)
        free(scratch)


cdef Py_ssize_t gt_scratch_bytes(const void* scratch) noexcept nogil:
    return (<const gt_cache*>scratch).block_bytes


# A candidate state, its node lists in tmp_a / tmp_b, every node stamped with the run's gen.
ctypedef struct gt_cand:
    int32_t remaining
    Py_ssize_t n_lit
    Py_ssize_t n_pend


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _enter_d(gt_run* r, int32_t t, uint32_t* buf, Py_ssize_t m) noexcept nogil:
    """DFA construction: add node t and its '*' child to the set in buf (sinks kept)."""
    while t >= 0 and r.node_stamp[t] != r.gen:
        r.node_stamp[t] = r.gen
        buf[m] = <uint32_t>t
        m += 1
        t = _node(r, t).star
    return m


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _dfa_step(gt_run* r, gt_dfa* d, const gt_dstate* st, uint8_t b, gt_cand* c) noexcept nogil:
    """The state st goes to after input byte b, as a candidate in d.tmp_a / d.tmp_b.

    Literal node sets need no deduplication: every node has one parent edge, so distinct nodes
    have distinct byte children, and byte children, '*' nodes and '?' targets are disjoint.
    """
    cdef const int32_t* src = d.pool + st.nodes
    cdef const int32_t* pend = src + st.n_lit
    cdef uint32_t* lit = d.tmp_a
    cdef uint32_t* nxt_pend = d.tmp_b
    cdef uint8_t fb = r.fold[b]
    cdef const gt_node* nd
    cdef Py_ssize_t k, m = 0, p = 0
    cdef int32_t x, t
    r.gen += 1
    if st.remaining == 0 and _SEQ_LEN[b] == 1:
        for k in range(st.n_lit):  # a one-byte code point: a whole NFA step
            x = src[k]
            nd = _node(r, x)
            if nd.loop:
                m = _enter_d(r, x, lit, m)
            if nd.qmark >= 0:
                m = _enter_d(r, nd.qmark, lit, m)
            t = _child(r, x, fb)
            if t >= 0:
                m = _enter_d(r, t, lit, m)
        c.remaining = 0
    elif st.remaining == 0:
        for k in range(st.n_lit):  # first byte of a longer code point
            x = src[k]
            nd = _node(r, x)
            if nd.loop:
                nxt_pend[p] = <uint32_t>x
                r.node_stamp[x] = r.gen
                p += 1
            if nd.qmark >= 0:
                nxt_pend[p] = <uint32_t>nd.qmark
                r.node_stamp[nd.qmark] = r.gen
                p += 1
            t = _child(r, x, fb)
            if t >= 0:
                lit[m] = <uint32_t>t
                r.node_stamp[t] = r.gen
                m += 1
        c.remaining = _SEQ_LEN[b] - 1
    elif st.remaining == 1:
        for k in range(st.n_pend):  # last byte of the code point: enter everything
            m = _enter_d(r, pend[k], lit, m)
        for k in range(st.n_lit):
            t = _child(r, src[k], fb)
            if t >= 0:
                m = _enter_d(r, t, lit, m)
        c.remaining = 0
    else:
        for k in range(st.n_lit):  # a middle byte
            t = _child(r, src[k], fb)
            if t >= 0:
                lit[m] = <uint32_t>t
                r.node_stamp[t] = r.gen
                m += 1
        for k in range(st.n_pend):
            nxt_pend[p] = <uint32_t>pend[k]
            r.node_stamp[pend[k]] = r.gen
            p += 1
        c.remaining = st.remaining - 1
    c.n_lit = m
    c.n_pend = p


cdef void _flush(gt_dfa* d) noexcept nogil:
    """Empty the cache (clearing only the hash slots in use)."""
    cdef int32_t k
    for k in range(1, d.cache.n_states):
        d.slots[d.states[k].slot] = 0
    d.cache.n_states = 1
    d.cache.pool_used = 0
    d.cache.start = 0
    d.cache.flushes += 1


cdef bint _full(gt_dfa* d) noexcept nogil:
    """Called when the cache is full. Below its bound it doubles (the working set is larger than
    the cache: give it room) and False is returned. At its bound, see _thrashing."""
    cdef gt_cache* cache = d.cache
    cdef int64_t states = 2 * <int64_t>(cache.max_states - 1) + 1
    if cache.max_states < d.cap_states:
        if states > d.cap_states:
            states = d.cap_states
        if _new_block(cache, <int32_t>states, <int32_t>min(2 * <int64_t>cache.pool_cap, 1 << 30), d.stride):
            cache.grows += 1
            cache.flushes += 1
            cache.bytes = 0
            cache.work = 0
            _load(d)
            return False
    if _thrashing(d):
        return True
    _flush(d)
    return False


cdef bint _thrashing(gt_dfa* d) noexcept nogil:
    """Called when the cache is full. Since it was last emptied, b states of k NFA nodes on
    average were built and B input bytes matched: the NFA would have cost about B * k node
    visits, the DFA b * (k + _BUILD_COST) plus the lookups. If B * k < b * (k + _BUILD_COST),
    the cache does not pay off (too small for the working set): empty it, start an NFA-only
    period and return True (the caller finishes the input with the NFA); else return False."""
    cdef gt_cache* cache = d.cache
    cdef double built = <double>(cache.n_states - 1)
    cdef double work = <double>cache.work
    cdef bint paid = <double>cache.bytes * work >= built * (work + _BUILD_COST * built)
    cache.bytes = 0
    cache.work = 0
    if paid:
        cache.backoff = 0
        return False
    cache.backoff = _MIN_BACKOFF if cache.backoff == 0 else min(2 * cache.backoff, _MAX_BACKOFF)
    cache.nfa_left = <int64_t>cache.backoff * d.max_states
    _flush(d)
    return True



@cython.boundscheck(False)
@cython.wraparound(False)
cdef int32_t _intern(gt_run* r, gt_dfa* d, const gt_cand* c) noexcept nogil:
    """Handle of the cached state equal to candidate c, added if new; 0 if it does not fit."""
    cdef uint64_t h = <uint64_t>c.remaining * GT_SALT_REMAINING
    cdef Py_ssize_t k, total = c.n_lit + c.n_pend
    for k in range(c.n_lit):
        h += gt_mix(d.tmp_a[k])
    for k in range(c.n_pend):
        h += gt_mix(d.tmp_b[k] | GT_SALT_PEND)
    cdef uint32_t slot = <uint32_t>h & <uint32_t>d.hash_mask
    cdef int32_t idx
    cdef gt_dstate* st
    cdef const int32_t* nodes
    cdef bint same
    while True:
        idx = d.slots[slot]
        if idx == 0:
            break
        st = &d.states[idx]
        if (st.hash == h and st.remaining == c.remaining and st.n_lit == c.n_lit
                and st.n_pend == c.n_pend):
            # Same sizes and every stored node stamped: same sets (the kinds of node of the two
            # lists are disjoint, see _dfa_step).
            nodes = d.pool + st.nodes
            same = True
            for k in range(total):
                if r.node_stamp[nodes[k]] != r.gen:
                    same = False
                    break
            if same:
                return -idx * d.stride if st.terminal else idx * d.stride
        slot = (slot + 1) & <uint32_t>d.hash_mask
    cdef gt_cache* cache = d.cache
    if cache.n_states >= d.max_states or total > d.pool_cap - cache.pool_used:
        return 0
    idx = cache.n_states
    cache.n_states += 1
    cache.built += 1
    st = &d.states[idx]
    st.hash = h
    st.nodes = cache.pool_used
    st.n_lit = <int32_t>c.n_lit
    st.n_pend = <int32_t>c.n_pend
    st.slot = <int32_t>slot
    st.remaining = <uint8_t>c.remaining
    cdef int32_t* dst = d.pool + cache.pool_used
    cdef bint terminal = True, any_acc = False
    cdef const gt_node* nd
    for k in range(c.n_lit):
        dst[k] = <int32_t>d.tmp_a[k]
        nd = _node(r, dst[k])
        terminal = terminal and nd.sink
        any_acc = any_acc or nd.acc_count
    for k in range(c.n_pend):
        dst[c.n_lit + k] = <int32_t>d.tmp_b[k]
        terminal = terminal and _node(r, d.tmp_b[k]).sink
    cache.pool_used += <int32_t>total
    cache.work += <uint64_t>total
    st.terminal = terminal
    st.any_acc = any_acc
    cdef int32_t* row = d.trans + idx * d.stride
    memset(row, 0, d.n_cls * sizeof(int32_t))
    row[d.n_cls + GT_ROW_ACC] = -1
    row[d.n_cls + GT_ROW_NACC] = 0
    row[d.n_cls + GT_ROW_INDEX] = idx
    d.slots[slot] = idx
    return -idx * d.stride if terminal else idx * d.stride


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _fallback(gt_run* r, gt_dfa* d, const gt_cand* c, const unsigned char* text,
                          Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """Finish the input text[i:] with the NFA from candidate c (the state after text[:i]).

    Every sink or accepting '*' node stamped during this call belongs to c (they never leave a
    DFA state), so reporting those of c covers what _enter() skips as already seen.
    """
    cdef uint32_t* lit = d.tmp_a
    cdef uint32_t* pend = d.tmp_b
    cdef const gt_node* nd
    cdef Py_ssize_t k, q, m = 0, w
    cdef int32_t t
    d.cache.fallbacks += 1
    if c.remaining == 0:
        for k in range(c.n_lit):
            nd = _node(r, lit[k])
            if nd.loop and nd.acc_count:
                if r.out == NULL:
                    return 1
                _emit(r, nd)
            if not nd.sink:
                lit[m] = lit[k]
                m += 1
        return _nfa(r, text, n, i, lit, m, pend)
    for k in range(c.n_pend):
        nd = _node(r, pend[k])
        if nd.loop and nd.acc_count:
            if r.out == NULL:
                return 1
            _emit(r, nd)
    # Finish the code point: its last bytes along the literal paths, then enter everything.
    w = c.remaining if c.remaining < n - i else n - i
    for k in range(c.n_lit):
        t = <int32_t>lit[k]
        for q in range(w):
            t = _child(r, t, r.fold[text[i + q]])
            if t < 0:
                break
        if t >= 0:
            lit[m] = <uint32_t>t
            m += 1
    for k in range(c.n_pend):  # disjoint from the literal nodes: fits in one buffer
        lit[m] = pend[k]
        m += 1
    r.gen += 1
    cdef Py_ssize_t n_act = 0
    for k in range(m):
        n_act = _enter(r, <int32_t>lit[k], pend, n_act)
        if n_act < 0:
            return 1
    return _nfa(r, text, n, i + w, pend, n_act, lit)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _accept(gt_run* r, gt_dfa* d, int32_t s, const int32_t* dense_to_id) noexcept nogil:
    """Ids matched by an input ending in the state of row s: sorted pattern ids into r.out
    (cached in the pool when they fit) and their count; with r.out NULL, 1 if any else 0."""
    cdef int32_t* meta = d.trans + s + d.n_cls
    cdef gt_dstate* st = &d.states[meta[GT_ROW_INDEX]]
    cdef const int32_t* src = d.pool + st.nodes
    cdef const uint32_t* ends
    cdef Py_ssize_t k, m = 0
    if st.remaining == 0:
        if r.out == NULL:
            return st.any_acc
        if meta[GT_ROW_ACC] >= 0:
            memcpy(r.out, d.pool + meta[GT_ROW_ACC], meta[GT_ROW_NACC] * sizeof(int32_t))
            return meta[GT_ROW_NACC]
        for k in range(st.n_lit):  # every node of the set: '*' nodes never left it
            _emit(r, _node(r, src[k]))
        _sort_ids(r.out, r.n_out, dense_to_id)
        if r.n_out <= d.pool_cap - d.cache.pool_used:
            meta[GT_ROW_ACC] = d.cache.pool_used
            meta[GT_ROW_NACC] = <int32_t>r.n_out
            memcpy(d.pool + d.cache.pool_used, r.out, r.n_out * sizeof(int32_t))
            d.cache.pool_used += <int32_t>r.n_out
        return r.n_out
    # Input ended inside a code point (invalid UTF-8): the code point ends here.
    r.gen += 1
    for k in range(st.n_pend):
        m = _enter_d(r, src[st.n_lit + k], d.tmp_a, m)
    for k in range(st.n_lit):
        m = _enter_d(r, src[k], d.tmp_a, m)
    ends = d.tmp_a
    for k in range(m):
        if _node(r, ends[k]).acc_count:
            if r.out == NULL:
                return 1
            _emit(r, _node(r, ends[k]))
    if r.out == NULL:
        return 0
    _sort_ids(r.out, r.n_out, dense_to_id)
    return r.n_out


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _dfa_match(gt_run* r, gt_dfa* d, const uint8_t* cls, const unsigned char* text,
                           Py_ssize_t n, const int32_t* dense_to_id, int32_t s, Py_ssize_t i,
                           int32_t start_node) noexcept nogil:
    """Match text[i:] with the cached DFA from the state of row s, computing the missing states
    (see the module docstring). s == 0: from the start state (start_node entered, at i);
    s < 0: the terminal state of row -s."""
    cdef gt_cache* cache = d.cache
    cdef const int32_t* trans = d.trans
    cdef gt_cand c
    cdef int32_t v = 0
    cdef Py_ssize_t result
    cdef bint flushed = False
    if cache.n_states == 0:  # fresh scratch
        cache.n_states = 1
    if s == 0:
        s = cache.start
    if s == 0:
        r.gen += 1
        c.remaining = 0
        c.n_pend = 0
        c.n_lit = _enter_d(r, start_node, d.tmp_a, 0)
        s = _intern(r, d, &c)
        if s == 0 and not _full(d):
            flushed = True
            trans = d.trans
            s = _intern(r, d, &c)
        if s == 0:
            result = _fallback(r, d, &c, text, n, i)
            if r.out != NULL:
                _sort_ids(r.out, result, dense_to_id)
            return result
        cache.start = s
    if s > 0:
        while True:
            while i < n:
                v = trans[s + cls[text[i]]]
                if v != GT_SELF:
                    if v <= 0:
                        break
                    s = v
                i += 1
            if i >= n:
                break
            if v < 0:  # a terminal state: the rest of the input cannot change the result
                s = -v
                break
            _dfa_step(r, d, &d.states[trans[s + d.n_cls + GT_ROW_INDEX]], text[i], &c)
            v = _intern(r, d, &c)
            if v == 0 and not flushed and not _full(d):
                # s is gone with the rest; its transition is not recorded
                flushed = True
                trans = d.trans
                v = _intern(r, d, &c)
            elif v != 0:
                d.trans[s + cls[text[i]]] = GT_SELF if v == s else v
            i += 1
            if v == 0:  # this input alone fills the cache: finish it with the NFA
                result = _fallback(r, d, &c, text, n, i)
                if r.out != NULL:
                    _sort_ids(r.out, result, dense_to_id)
                return result
            if v < 0:
                s = -v
                break
            s = v
    else:
        s = -s
    return _accept(r, d, s, dense_to_id)


# ---------------------------------------------------------------------- build

# add() keeps each pattern as one bytes record: its tokens as big-endian uint16 codes (stars
# collapsed), then _CODE_END, then its id (big-endian, sign bit flipped so that bytes order is
# id order). Sorting the records sorts the patterns token by token with '?' < '*' < literal
# bytes and a pattern before its extensions, so the patterns below any one node are
# consecutive, its children appear in the order of their tokens (byte edges sorted), and equal
# patterns are adjacent with their ids ascending (identical records: the same pattern and id).
cdef enum:
    _CODE_END = 0
    _CODE_QMARK = 1
    _CODE_STAR = 2
    _CODE_BYTE = 3            # + the byte: codes up to 258, hence two bytes each
    _REC_TAIL = 6             # bytes after the codes: _CODE_END and the id

ctypedef struct gt_rec:       # one record, read in place
    const uint8_t* codes
    Py_ssize_t n_codes
    int32_t id

# The sorted records and the shape of the trie they make (see _plan).
ctypedef struct gt_plan:
    gt_rec* recs
    int32_t* shared           # per record: leading tokens in common with the previous record
    int32_t* ids              # distinct ids ascending (their index is the dense id)
    Py_ssize_t n_recs, n_ids
    Py_ssize_t n_nodes        # the root and one node per token not shared with the previous record
    Py_ssize_t n_edges        # byte edges (the other nodes hang from '?' and '*' edges)
    Py_ssize_t n_acc          # distinct (pattern, id) pairs
    Py_ssize_t depth          # tokens of the longest pattern


cdef void _free_plan(gt_plan* p) noexcept:
    free(p.recs)
    free(p.shared)
    free(p.ids)
    p.recs = NULL
    p.shared = p.ids = NULL


cdef inline Py_ssize_t _put(uint8_t* out, Py_ssize_t m, uint16_t code) noexcept nogil:
    """Write a token code at out[m:m + 2]; return the new length (unchanged for a '*' after a
    '*': '**' matches what '*' does, and star nodes then never have a '*' child)."""
    if code == _CODE_STAR and m and out[m - 1] == _CODE_STAR and out[m - 2] == 0:
        return m
    out[m] = code >> 8
    out[m + 1] = code & 0xFF
    return m + 2


cdef inline uint16_t _code(const gt_rec* r, Py_ssize_t d) noexcept nogil:
    return (r.codes[2 * d] << 8) | r.codes[2 * d + 1]


cdef void _shape(gt_plan* p) noexcept nogil:
    """Fill p.shared and the counts of p from the sorted p.recs, and p.ids from their ids."""
    cdef Py_ssize_t k, d, m
    cdef const gt_rec* r
    cdef const gt_rec* prev = NULL
    p.n_nodes = 1
    p.n_edges = p.n_acc = p.depth = p.n_ids = 0
    for k in range(p.n_recs):
        r = &p.recs[k]
        d = 0
        if prev != NULL:
            m = min(prev.n_codes, r.n_codes)
            while d < m and r.codes[2 * d] == prev.codes[2 * d] and r.codes[2 * d + 1] == prev.codes[2 * d + 1]:
                d += 1
        p.shared[k] = <int32_t>d
        p.n_nodes += r.n_codes - d
        while d < r.n_codes:
            p.n_edges += _code(r, d) >= _CODE_BYTE
            d += 1
        if not (prev != NULL and p.shared[k] == r.n_codes == prev.n_codes and r.id == prev.id):
            p.n_acc += 1
        p.depth = max(p.depth, r.n_codes)
        p.ids[k] = r.id
        prev = r
    qsort(p.ids, p.n_recs, sizeof(int32_t), _cmp_int32)
    for k in range(p.n_recs):
        if p.n_ids == 0 or p.ids[k] != p.ids[p.n_ids - 1]:
            p.ids[p.n_ids] = p.ids[k]
            p.n_ids += 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _plan(list recs, gt_plan* p) except -1:
    """Sort the records of add() and read them into p, for _build (free p with _free_plan; its
    record pointers stay valid while the records are kept, unchanged)."""
    recs.sort()
    cdef Py_ssize_t k, n = len(recs)
    cdef const uint8_t* tail
    cdef bytes rec
    p.n_recs = n
    p.recs = <gt_rec*>malloc((n + 1) * sizeof(gt_rec))
    p.shared = <int32_t*>malloc((n + 1) * sizeof(int32_t))
    p.ids = <int32_t*>malloc((n + 1) * sizeof(int32_t))
    if not (p.recs and p.shared and p.ids):
        _free_plan(p)
        raise MemoryError()
    for k in range(n):
        rec = <bytes>recs[k]
        p.recs[k].codes = <const uint8_t*>PyBytes_AS_STRING(rec)
        p.recs[k].n_codes = (len(rec) - _REC_TAIL) // 2
        tail = p.recs[k].codes + len(rec) - 4
        p.recs[k].id = <int32_t>(((<uint32_t>tail[0] << 24) | (<uint32_t>tail[1] << 16)
                                  | (<uint32_t>tail[2] << 8) | tail[3]) ^ 0x80000000u)
    _shape(p)
    return 0


cdef inline int32_t _dense(const gt_plan* p, int32_t pattern_id) noexcept nogil:
    """Index of pattern_id in p.ids (binary search; it is there)."""
    cdef Py_ssize_t lo = 0, hi = p.n_ids - 1, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if p.ids[mid] < pattern_id:
            lo = mid + 1
        else:
            hi = mid
    return <int32_t>lo


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _build(const gt_plan* p, gt_node* nodes, uint32_t* links, uint8_t* edge_bytes,
                       int32_t* edge_targets, int32_t* acc, int32_t* path, int32_t* parent, uint8_t* in_byte,
                       uint8_t* used) noexcept nogil:
    """Fill the zeroed nodes (p.n_nodes), their entries in links (GT_STORED for the nodes that are
    not links, see _pack_nodes), the byte edges of those nodes and the accept lists in one pass
    over the sorted records, numbering nodes as they first appear (depth first, children in token
    order, so a run of links is numbered in a row); return the number of byte edges stored.

    path[d] holds the node at depth d on the previous record's path (p.depth + 1 slots); the
    records sharing its first shared[k] tokens go through the same nodes. Each byte edge is kept
    as its target's parent and in_byte (p.n_nodes slots each), then placed by parent (a counting
    sort: targets in descending order, so each parent's edges stay in byte order).
    """
    cdef Py_ssize_t k, d, x = 1, a = 0
    cdef int32_t up
    cdef uint16_t code
    cdef const gt_rec* r
    cdef gt_node* nd
    cdef uint32_t end = 0
    nodes[0].qmark = nodes[0].star = -1
    parent[0] = -1
    path[0] = 0
    for k in range(p.n_recs):
        r = &p.recs[k]
        for d in range(p.shared[k], r.n_codes):
            code = _code(r, d)
            up = path[d]
            nd = &nodes[x]
            nd.qmark = nd.star = -1
            parent[x] = -1
            if code == _CODE_QMARK:
                nodes[up].qmark = <int32_t>x
            elif code == _CODE_STAR:
                nodes[up].star = <int32_t>x
                nd.loop = 1
            else:
                nodes[up].n_edges += 1
                parent[x] = up
                in_byte[x] = <uint8_t>(code - _CODE_BYTE)
                used[in_byte[x]] = 1
            path[d + 1] = <int32_t>x
            x += 1
        nd = &nodes[path[r.n_codes]]
        if k and p.shared[k] == r.n_codes == p.recs[k - 1].n_codes:  # the previous pattern again
            if r.id == p.recs[k - 1].id:
                continue
        else:
            nd.acc_start = <uint32_t>a
        acc[a] = _dense(p, r.id)
        nd.acc_count += 1
        a += 1
    for k in range(p.n_nodes):  # edge_start: the end of the node's edges for now
        nd = &nodes[k]
        nd.sink = nd.loop and nd.n_edges == 0 and nd.qmark < 0
        links[k] = GT_STORED
        if (nd.n_edges == 1 and nd.qmark < 0 and nd.star < 0 and not nd.loop and nd.acc_count == 0
                and k + 1 < p.n_nodes and parent[k + 1] == k):
            links[k] = in_byte[k + 1]
            nd.n_edges = 0
        end += nd.n_edges
        nd.edge_start = end
    for k in range(p.n_nodes - 1, 0, -1):
        up = parent[k]
        if up >= 0 and links[up] >= GT_STORED:
            nodes[up].edge_start -= 1
            edge_bytes[nodes[up].edge_start] = in_byte[k]
            edge_targets[nodes[up].edge_start] = <int32_t>k
    return end


cdef Py_ssize_t _pack_nodes(gt_node* nodes, uint32_t* links, Py_ssize_t n_nodes) noexcept nogil:
    """Move the nodes that are not links to the front of nodes (which held every node so far), in
    node order, and point their entries in links at them; return their number."""
    cdef Py_ssize_t k, m = 0
    for k in range(n_nodes):
        if links[k] >= GT_STORED:
            links[k] = <uint32_t>(GT_STORED + m)
            nodes[m] = nodes[k]
            m += 1
    return m


cdef tuple _cache_geometry(Py_ssize_t n_nodes):
    """Default cache sizes for a trie of n_nodes nodes: (first states, int32 pool slots, bound).

    A cache starts with one state per _NODES_PER_STATE nodes, at least _MIN_STATES, and
    _POOL_PER_STATE pool slots per state (a state holds a few nodes in practice: 1 to 8 on
    average for AWS policies); it may double up to _STATES_PER_NODE states per node, at most
    _MAX_STATES. How many states a workload needs depends on its inputs more than on the
    patterns (the seed workload's 51 statements need about 1,200 action states for the actions
    of its log), hence the growth. A state costs sizeof(gt_dstate) = 32 bytes, 4 * (byte
    classes + 3) bytes of transitions, 8 bytes of hash table and 4 * _POOL_PER_STATE bytes of
    pool: about 250 bytes with 40 classes, so a cache takes 128 KB (512 states) to 16 MB (65536
    states) per scratch.
    """
    cdef Py_ssize_t bound = min(_STATES_PER_NODE * n_nodes, _MAX_STATES)
    cdef Py_ssize_t states = min(max(n_nodes // _NODES_PER_STATE, _MIN_STATES), bound)
    return states, states * _POOL_PER_STATE, bound


cdef void _start(GlobTrie trie, gt_run* r, char* base, int32_t* out) noexcept nogil:
    """Set up r for a match with the scratch at base, its ids into out."""
    cdef uint64_t* counter = <uint64_t*>(base + trie._off_stamps)
    r.nodes = trie._nodes
    r.links = trie._links
    r.edge_bytes = trie._edge_bytes
    r.edge_targets = trie._edge_targets
    r.acc = trie._acc
    r.fold = trie._fold
    r.node_stamp = counter + 1
    r.id_stamp = r.node_stamp + trie._n_nodes
    r.call_gen = counter[0] + 1
    r.gen = r.call_gen  # incremented before each use: this call's node stamps exceed call_gen
    r.out = out
    r.n_out = 0


cdef class GlobTrie:
    """Index of IAM glob patterns; after freeze(), finds all patterns matching a string.

    GlobTrie(ignore_case) -- ignore_case folds ASCII letters (True for actions, False for ARNs).
    """

    def __cinit__(self, bint ignore_case):
        self.ignore_case = ignore_case
        if ignore_case:
            self._fold = _LOWER
        else:
            self._fold = _SAME
        self._b_recs = []

    def __dealloc__(self):
        cdef int i
        self._free_arrays()
        for i in range(self._n_spare):
            gt_free_scratch(self._spare[i])

    cdef void _free_arrays(self) noexcept:
        free(self._nodes)
        free(self._links)
        free(self._edge_bytes)
        free(self._edge_targets)
        free(self._acc)
        free(self._ids)
        free(self._prefix)
        self._nodes = NULL
        self._links = NULL
        self._edge_bytes = NULL
        self._edge_targets = NULL
        self._acc = NULL
        self._ids = NULL
        self._prefix = NULL
        self._prefix_len = self._prefix_node = 0

    # ------------------------------------------------------------------ build phase

    cdef bytes _record(self, pattern, int32_t pattern_id):
        """The record add() keeps for pattern (see _CODE_END); a bad token raises first."""
        cdef const unsigned char* data = NULL
        cdef Py_ssize_t n, i, m = 0
        cdef bytes encoded
        cdef list parts = None
        cdef uint8_t b
        if isinstance(pattern, str):
            try:
                data = <const unsigned char*>PyUnicode_AsUTF8AndSize(pattern, &n)
            except UnicodeEncodeError:  # lone surrogates: one character each, as in matching
                encoded = (<str>pattern).encode("utf-8", "surrogatepass")
                data = encoded
                n = len(encoded)
        else:
            parts, n = [], 0
            for item in pattern:
                if item is STAR or item is QMARK:
                    n += 1
                elif isinstance(item, str):
                    item = (<str>item).encode("utf-8", "surrogatepass")
                    n += len(item)
                else:
                    raise TypeError(f"pattern tokens must be str, STAR or QMARK, not {type(item).__name__}")
                parts.append(item)
        cdef bytes rec = PyBytes_FromStringAndSize(NULL, 2 * n + _REC_TAIL)
        cdef uint8_t* out = <uint8_t*>PyBytes_AS_STRING(rec)
        if parts is None:  # in UTF-8, the bytes of '*' and '?' stand for these characters only
            for i in range(n):
                b = data[i]
                m = _put(out, m, _CODE_STAR if b == 0x2A else _CODE_QMARK if b == 0x3F else _CODE_BYTE + self._fold[b])
        else:
            for item in parts:
                if item is STAR:
                    m = _put(out, m, _CODE_STAR)
                elif item is QMARK:
                    m = _put(out, m, _CODE_QMARK)
                else:
                    for b in <bytes>item:
                        m = _put(out, m, _CODE_BYTE + self._fold[b])
        cdef uint32_t key = <uint32_t>pattern_id ^ 0x80000000u
        out[m] = out[m + 1] = _CODE_END
        for i in range(4):
            out[m + 2 + i] = (key >> (24 - 8 * i)) & 0xFF
        return rec if m == 2 * n else rec[:m + _REC_TAIL]

    def add(self, pattern, int32_t pattern_id):
        """Index pattern under pattern_id.

        pattern is a str ('*' and '?' are wildcards) or a sequence of tokens: str literals
        (matched literally, '*' and '?' included) and the STAR / QMARK constants. Ids may be
        shared by patterns and a pattern may be added under several ids.
        Raises ValueError after freeze().
        """
        if self.frozen:
            raise ValueError("GlobTrie is frozen; add() must come before freeze()")
        self._b_recs.append(self._record(pattern, pattern_id))
        self._n_patterns += 1

    def freeze(self, *, dfa_states=None, dfa_pool=None, dfa_max_states=None):
        """Compile the trie into flat C arrays and drop the build state; later calls do nothing.

        dfa_states / dfa_pool size the lazy-DFA cache each scratch buffer starts with: the number
        of cached states, and the int32 slots for their node sets and cached results. The cache
        doubles when full, up to dfa_max_states states. By default all three are sized from the
        trie (see get_stats()); dfa_states or dfa_pool given without dfa_max_states make the
        cache fixed. dfa_states=0 disables the DFA (every match simulates the NFA). Small values
        are for tests of the cache-full and growth paths.
        """
        if self.frozen:
            return
        cdef gt_plan p
        cdef int32_t* path = NULL
        cdef int32_t* parent = NULL
        cdef uint8_t* in_byte = NULL
        cdef gt_node* nodes
        cdef uint8_t* edge_bytes
        cdef int32_t* edge_targets
        cdef uint8_t used[256]  # bytes on some edge
        cdef bint ok = False
        cdef int b
        memset(&p, 0, sizeof(p))
        memset(used, 0, sizeof(used))
        _plan(self._b_recs, &p)
        try:
            states, pool, bound = _cache_geometry(p.n_nodes)
            if dfa_states is not None:
                states = bound = dfa_states
            if dfa_pool is not None:
                pool = dfa_pool
                bound = states
            if dfa_max_states is not None:
                bound = dfa_max_states
            if not (0 <= states <= bound <= _LIMIT_STATES and 0 <= pool <= (1 << 30)):
                raise ValueError(f"dfa_states and dfa_max_states must be in [0, {_LIMIT_STATES}], in that order, "
                                 f"and dfa_pool in [0, 2**30]")
            # +1: malloc(0) may return NULL, which would read as an allocation failure.
            self._nodes = <gt_node*>calloc(p.n_nodes, sizeof(gt_node))
            self._links = <uint32_t*>malloc(p.n_nodes * sizeof(uint32_t))
            self._edge_bytes = <uint8_t*>malloc(p.n_edges + 1)
            self._edge_targets = <int32_t*>malloc((p.n_edges + 1) * sizeof(int32_t))
            self._acc = <int32_t*>malloc((p.n_acc + 1) * sizeof(int32_t))
            self._ids = <int32_t*>malloc((p.n_ids + 1) * sizeof(int32_t))
            path = <int32_t*>malloc((p.depth + 1) * sizeof(int32_t))
            parent = <int32_t*>malloc(p.n_nodes * sizeof(int32_t))
            in_byte = <uint8_t*>malloc(p.n_nodes)
            ok = (self._nodes and self._links and self._edge_bytes and self._edge_targets and self._acc and self._ids
                  and path and parent and in_byte)
            if ok:
                memcpy(self._ids, p.ids, p.n_ids * sizeof(int32_t))
                self._n_edges = _build(&p, self._nodes, self._links, self._edge_bytes, self._edge_targets, self._acc,
                                       path, parent, in_byte, used)
                # Links have no gt_node and their edges are not stored: give back their room (a
                # failed shrink keeps it).
                self._n_stored = _pack_nodes(self._nodes, self._links, p.n_nodes)
                nodes = <gt_node*>realloc(self._nodes, self._n_stored * sizeof(gt_node))
                if nodes != NULL:
                    self._nodes = nodes
                edge_bytes = <uint8_t*>realloc(self._edge_bytes, self._n_edges + 1)
                if edge_bytes != NULL:
                    self._edge_bytes = edge_bytes
                edge_targets = <int32_t*>realloc(self._edge_targets, (self._n_edges + 1) * sizeof(int32_t))
                if edge_targets != NULL:
                    self._edge_targets = edge_targets
        finally:
            free(path)
            free(parent)
            free(in_byte)
            _free_plan(&p)
        if not ok:
            self._free_arrays()  # stay unfrozen and consistent; freeze() may be retried
            raise MemoryError()
        self._n_nodes = p.n_nodes
        self._n_acc = p.n_acc
        self._n_ids = p.n_ids
        # Byte classes: a byte on an edge (after folding) is its own class; the others only
        # differ by the length of the UTF-8 sequence they start.
        classes = {}
        for b in range(256):
            key = self._fold[b] if used[self._fold[b]] else -_SEQ_LEN[b]
            self._cls[b] = classes.setdefault(key, len(classes))
        self._n_cls = len(classes)
        self._stride = self._n_cls + GT_ROW_EXTRA
        try:
            self._set_prefix()
        except MemoryError:
            self._free_arrays()
            raise
        self._set_geometry(states, pool, bound)
        self.nbytes = (self._n_stored * sizeof(gt_node) + self._n_nodes * sizeof(uint32_t)
                       + self._n_edges * (1 + sizeof(int32_t))
                       + (self._n_acc + self._n_ids) * sizeof(int32_t) + self._prefix_len)
        self._b_recs = None
        self.frozen = True

    cdef int _set_prefix(self) except -1:
        """The bytes every pattern starts with: the run of links from the root, cut at a code point
        boundary. A match compares them (folded) at once and starts at the node they lead to (the
        links are numbered in a row: node `cut`)."""
        cdef Py_ssize_t length = 0, cut = 0, p = 0
        while self._links[length] < GT_STORED:  # a link is never the last node
            length += 1
        while p < length:  # longest run of whole code points
            p += _SEQ_LEN[self._links[p]]
            if p <= length:
                cut = p
        self._prefix = <uint8_t*>malloc(cut + 1)
        if self._prefix == NULL:
            raise MemoryError()
        for p in range(cut):
            self._prefix[p] = <uint8_t>self._links[p]
        self._prefix_len = cut
        self._prefix_node = <int32_t>cut
        return 0

    cdef int _set_geometry(self, Py_ssize_t states, Py_ssize_t pool, Py_ssize_t cap) except -1:
        """Scratch layout, and the sizes of a cache: `states` states (0: no DFA) and `pool` pool
        slots at first, growing up to `cap` states."""
        if states:
            self._max_states = <int32_t>(states + 1)  # + the reserved state 0
            self._cap_states = <int32_t>(max(states, cap) + 1)
            self._pool_cap = <int32_t>pool
        else:
            self._max_states = self._cap_states = self._pool_cap = 0
        # The header, then uint64 stamps, then the uint32 lists: offsets stay multiples of 8.
        self._off_stamps = sizeof(gt_cache)
        self._off_lists = self._off_stamps + (1 + self._n_nodes + self._n_ids) * sizeof(uint64_t)
        self._scratch_bytes = self._off_lists + 2 * self._n_nodes * sizeof(uint32_t)
        return 0

    # ------------------------------------------------------------------ C API (nogil)

    cdef Py_ssize_t scratch_size(self) noexcept nogil:
        """Bytes of scratch for one match at a time; must be zero-filled before its first use.

        Layout: the DFA cache header (gt_cache), a uint64 generation counter and a uint64 stamp
        per node and per distinct id (64 bits never wrap, so the scratch is never cleared
        again), then two uint32 node lists of one slot per node (the state being built, or the
        NFA's active sets). Only the header needs the zeros. The cache's block is allocated at
        the first match (see gt_cache): free a scratch with gt_free_scratch().
        """
        return self._scratch_bytes

    cdef Py_ssize_t result_capacity(self) noexcept nogil:
        """Slots the out buffer of match_into() needs: each distinct id is written at most once."""
        return self._n_ids

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _match(self, const unsigned char* text, Py_ssize_t n, void* scratch,
                           int32_t* out) noexcept nogil:
        """Sorted pattern ids matching text into out, returning their count; with out NULL,
        1 if some pattern matches, else 0."""
        cdef char* base = <char*>scratch
        cdef gt_cache* cache = <gt_cache*>base
        cdef const int32_t* trans
        cdef const int32_t* meta
        cdef const int32_t* ids
        cdef const uint8_t* cls = self._cls
        cdef const uint8_t* fold = self._fold
        cdef int32_t s = 0, v = 0
        cdef Py_ssize_t i = 0, k, count
        cdef bint dfa = self._max_states != 0
        if dfa:
            cache.calls += 1
            if cache.nfa_left > 0:  # the cache was thrashing: NFA-only period
                cache.nfa_left -= 1
                cache.nfa_calls += 1
                dfa = False
            elif cache.trans == NULL and not _new_block(cache, self._max_states, self._pool_cap, self._stride):
                dfa = False  # no memory for a cache: the NFA needs none
        if self._prefix_len:  # every pattern starts with these bytes: compare them at once
            if n < self._prefix_len:
                return 0
            for k in range(self._prefix_len):
                if fold[text[k]] != self._prefix[k]:
                    return 0
            i = self._prefix_len
        if dfa:
            cache.bytes += n
            trans = cache.trans
            s = cache.start
            if s > 0 and out != NULL:
                # Fast path: every transition cached. Self-loops are stored as GT_SELF, so while
                # the state does not change the next lookup need not wait for this one.
                while i < n:
                    v = trans[s + cls[text[i]]]
                    if v != GT_SELF:
                        if v <= 0:
                            break
                        s = v
                    i += 1
                if i < n and v < 0:  # terminal: the result is final
                    s = -v
                    i = n
                if i == n:
                    meta = trans + s + self._n_cls
                    if meta[GT_ROW_ACC] >= 0:
                        ids = cache.pool + meta[GT_ROW_ACC]
                        count = meta[GT_ROW_NACC]
                        for k in range(count):
                            out[k] = ids[k]
                        return count
        # General path: compute what is missing (or simulate the NFA).
        cdef uint64_t* counter = <uint64_t*>(base + self._off_stamps)
        cdef gt_run r
        _start(self, &r, base, out)
        cdef gt_dfa d
        d.cache = cache
        _load(&d)
        d.tmp_a = <uint32_t*>(base + self._off_lists)
        d.tmp_b = d.tmp_a + self._n_nodes
        d.n_cls = self._n_cls
        d.stride = self._stride
        d.cap_states = self._cap_states
        cdef Py_ssize_t result, n_act
        if dfa:
            result = _dfa_match(&r, &d, cls, text, n, self._ids, s, i, self._prefix_node)
        else:
            r.gen += 1
            n_act = _enter(&r, self._prefix_node, d.tmp_a, 0)
            result = 1 if n_act < 0 else _nfa(&r, text, n, i, d.tmp_a, n_act, d.tmp_b)
            if out != NULL:
                _sort_ids(out, result, self._ids)
        counter[0] = r.gen  # later calls with this scratch start above every stamp used here
        return result

    cdef int32_t node_of(self, const unsigned char* text, Py_ssize_t n) noexcept nogil:
        """The node the literal text leads to from the root along byte edges, -1 if none (or not frozen)."""
        cdef gt_run r
        cdef int32_t node = 0
        cdef Py_ssize_t i
        if not self.frozen:
            return -1
        r.nodes = self._nodes
        r.links = self._links
        r.edge_bytes = self._edge_bytes
        r.edge_targets = self._edge_targets
        for i in range(n):
            node = _child(&r, node, self._fold[text[i]])
            if node < 0:
                return -1
        return node

    cdef Py_ssize_t match_from(self, int32_t node, const unsigned char* text, Py_ssize_t n, void* scratch,
                               int32_t* out) noexcept nogil:
        """Sorted unique ids of the patterns that node_of() text0 leads into and that text0 + text matches, where
        no '?' or '*' edge leaves the path of text0 before node: the NFA alone from node, with no DFA cache (for
        many short walks from nodes deep in a large trie, whose states would rarely repeat)."""
        cdef char* base = <char*>scratch
        cdef uint64_t* counter = <uint64_t*>(base + self._off_stamps)
        cdef uint32_t* cur = <uint32_t*>(base + self._off_lists)
        cdef gt_run r
        cdef Py_ssize_t result
        _start(self, &r, base, out)
        r.gen += 1
        result = _enter(&r, node, cur, 0)
        result = _nfa(&r, text, n, 0, cur, result, cur + self._n_nodes)
        _sort_ids(out, result, self._ids)
        counter[0] = r.gen
        return result

    cdef Py_ssize_t match_into(self, const unsigned char* text, Py_ssize_t n, void* scratch,
                               int32_t* out) noexcept nogil:
        """Sorted unique ids matching text into out (result_capacity() slots); -1 if not frozen."""
        if not self.frozen:
            return -1
        return GlobTrie._match(self, text, n, scratch, out)  # direct call, not through the vtable

    cdef int match_any(self, const unsigned char* text, Py_ssize_t n, void* scratch) noexcept nogil:
        """1 if some pattern matches text, 0 if none, -1 if not frozen."""
        if not self.frozen:
            return -1
        return <int>GlobTrie._match(self, text, n, scratch, NULL)

    # ------------------------------------------------------------------ Python API

    cdef void* _borrow(self) except NULL:
        """Scratch plus result buffer for one call; reuses a spare so calls rarely allocate (and
        find the DFA cache of earlier calls warm).

        Runs with the GIL held, which serializes access to the spare list.
        """
        if self._n_spare:
            self._n_spare -= 1
            return self._spare[self._n_spare]
        cdef void* buf = calloc(1, self.scratch_size() + (self._n_ids + 1) * sizeof(int32_t))
        if buf == NULL:
            raise MemoryError()
        return buf

    cdef void _give_back(self, void* buf) noexcept:
        if self._n_spare < GT_SPARE_SLOTS:
            self._spare[self._n_spare] = buf
            self._n_spare += 1
        else:
            gt_free_scratch(buf)

    cdef object _search(self, str text, bint want_ids):
        cdef Py_ssize_t n
        cdef const unsigned char* data
        cdef bytes encoded
        try:
            # Zero-copy for ASCII strings; CPython caches the UTF-8 of others on the str.
            data = <const unsigned char*>PyUnicode_AsUTF8AndSize(text, &n)
        except UnicodeEncodeError:  # lone surrogates: encode them as CPython would internally
            encoded = text.encode("utf-8", "surrogatepass")
            data = encoded
            n = len(encoded)
        return self._search_utf8(data, n, want_ids)

    cdef object _search_utf8(self, const unsigned char* data, Py_ssize_t n, bint want_ids):
        if not self.frozen:
            raise ValueError("GlobTrie must be frozen with freeze() before matching")
        cdef Py_ssize_t count, k
        cdef void* buf = self._borrow()
        cdef int32_t* out = <int32_t*>(<char*>buf + self.scratch_size())
        try:
            if n < _NOGIL_MIN_BYTES:
                count = self._match(data, n, buf, out if want_ids else NULL)
            else:
                with nogil:
                    count = self._match(data, n, buf, out if want_ids else NULL)
            if want_ids:
                return [out[k] for k in range(count)]
            return count > 0
        finally:
            self._give_back(buf)

    def _match_utf8(self, bytes data not None):
        """match() on raw bytes, which need not be valid UTF-8 (for tests: any bytes give the
        same result with or without the DFA)."""
        return self._search_utf8(data, len(data), True)

    def match(self, str text not None):
        """Sorted list of the distinct ids of all patterns matching text (ValueError if not frozen)."""
        return self._search(text, True)

    def matches(self, str text not None):
        """Whether any pattern matches text; cheaper than match() (ValueError if not frozen)."""
        return self._search(text, False)

    def get_stats(self):
        """Size of the trie: nodes, edges (byte, '?' and '*'), patterns added, distinct ids,
        bytes of C memory held by the frozen arrays and bytes of scratch per concurrent match.

        Frozen tries also give the lazy-DFA geometry (byte classes, states and pool slots per
        scratch) and counters summed over the idle scratch buffers of the Python-level match():
        states cached now, states built, cache flushes, matches finished by the NFA because the
        cache filled up, matches run by the NFA alone (the cache was thrashing), matches run.
        """
        cdef gt_cache* cache
        cdef gt_plan p
        cdef int k
        if self.frozen:
            nodes, n_ids = self._n_nodes, self._n_ids
            memory = self.nbytes
            scratch = self.scratch_size()
        else:  # the shape freeze() would build
            memset(&p, 0, sizeof(p))
            _plan(self._b_recs, &p)
            nodes, n_ids = p.n_nodes, p.n_ids
            _free_plan(&p)
            memory = scratch = 0
        # Every node but the root is entered by one edge (a byte, '?' or '*'): edges = nodes - 1.
        stats = {"nodes": nodes, "edges": nodes - 1, "patterns": self._n_patterns, "ids": n_ids,
                 "memory_bytes": memory, "scratch_bytes": scratch, "frozen": bool(self.frozen)}
        if self.frozen:
            names = ("dfa_states", "dfa_built", "dfa_flushes", "dfa_grows", "dfa_fallbacks", "dfa_nfa_matches",
                     "dfa_matches", "dfa_cache_bytes")
            counters = dict.fromkeys(names, 0)
            for k in range(self._n_spare):
                cache = <gt_cache*>self._spare[k]
                for name, value in zip(names, (max(cache.n_states - 1, 0), cache.built, cache.flushes, cache.grows,
                                               cache.fallbacks, cache.nfa_calls, cache.calls, cache.block_bytes)):
                    counters[name] += value
            stats.update({"dfa_classes": self._n_cls, "dfa_first_states": max(self._max_states - 1, 0),
                          "dfa_max_states": max(self._cap_states - 1, 0), "dfa_pool_slots": self._pool_cap,
                          **counters})
        return stats
