# cython: language_level=3
"""C-level interface of the wildcard trie, for other Cython modules of the engine.

Usage from another .pyx (after ``trie.freeze()``)::

    from ._globtrie cimport GlobTrie
    scratch = calloc(trie.scratch_size(), 1)       # one per thread, zero-filled once
    out = <int32_t*>malloc(trie.result_capacity() * sizeof(int32_t))
    with nogil:
        n = trie.match_into(<const unsigned char*>utf8, utf8_len, scratch, out)  # n sorted ids
    gt_free_scratch(scratch)                       # not free(): the DFA cache is a block of its own

A scratch buffer serves one trie and one thread at a time; several threads may match on the
same frozen trie concurrently, each with its own scratch. The scratch also holds that thread's
cache of determinised states (a lazy DFA), so keep reusing it: matches get faster as it warms
up. Text must be UTF-8 (what CPython produces); invalid bytes are read safely and give the same
result as the NFA simulation, but which result that is, is unspecified.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


# A node that is not a link (see GT_STORED); links have none.
ctypedef struct gt_node:
    uint32_t edge_start   # first outgoing byte edge in GlobTrie._edge_bytes / _edge_targets
    uint16_t n_edges      # number of byte edges (sorted by byte, at most 256); 0 for a link
    uint8_t loop          # 1 if the node was reached through '*': it consumes any code point
    uint8_t sink          # 1 if loop and no way out: once reached, the whole input matches
    int32_t qmark         # target of the '?' edge, -1 if none
    int32_t star          # target of the '*' edge (also active whenever this node is), -1 if none
    uint32_t acc_start    # first entry in GlobTrie._acc (dense id indices) accepted here
    uint32_t acc_count


# One cached DFA state: a set of NFA nodes, stored in the scratch's node pool as ``n_lit``
# node ids then ``n_pend`` node ids. At a code point boundary (remaining == 0) the first list is
# the whole active set (sinks and '*' nodes included) and the second is empty. Inside a
# multi-byte code point, the first list holds the nodes reached so far along literal byte edges
# and the second the nodes that become active once the code point ends ('*' nodes staying,
# '?' targets).
ctypedef struct gt_dstate:
    uint64_t hash
    int32_t nodes         # pool offset of the node lists
    int32_t n_lit
    int32_t n_pend
    int32_t slot          # hash table slot holding this state
    uint8_t remaining     # bytes left in the current code point (0: at a boundary)
    uint8_t terminal      # only sinks left: the result can no longer change
    uint8_t any_acc       # some id matches if the input ends here (valid when remaining == 0)


# A state's row of the transition table: one handle per byte class (0: not computed yet;
# GT_SELF: the same state; else +-(state index * row stride), negative when the target is
# terminal; state 0 is reserved so real handles are never 0 or GT_SELF), then three slots:
cdef enum:
    GT_SELF = 1
    GT_ROW_ACC = 0        # + n_cls: pool offset of the sorted ids matched if the input ends here, -1: unknown
    GT_ROW_NACC = 1       # + n_cls: their count
    GT_ROW_INDEX = 2      # + n_cls: the state's index
    GT_ROW_EXTRA = 3


# Head of a scratch buffer: the per-thread DFA cache bookkeeping (all zero in a fresh scratch).
# The cache itself is one block of its own (NULL until the first match), so that it can grow: the
# transition table first (a row per state), then the states, the hash table and the node pool.
ctypedef struct gt_cache:
    int32_t* trans        # the block; every pointer below points into it
    gt_dstate* states     # state 0 is reserved: handle 0 means "no transition cached yet"
    int32_t* slots        # hash table of state indices, 0 = empty
    int32_t* pool         # node lists and cached results of the states
    int64_t block_bytes   # size of the block
    int32_t max_states    # states the block holds, the reserved state 0 included
    int32_t pool_cap      # int32 slots of its node pool
    int32_t hash_mask     # hash table slots - 1 (a power of two minus one)
    int32_t grows         # times the block was replaced by one twice as large
    int32_t n_states      # states in use, the reserved state 0 included; 0 in a fresh scratch
    int32_t pool_used     # int32 slots of the node pool in use
    int32_t start         # handle of the start state, 0 if not cached
    int32_t backoff       # thrash backoff: NFA-only periods last backoff * states calls
    int64_t nfa_left      # calls left in the current NFA-only period
    uint64_t bytes        # input bytes matched with the DFA since the cache was last emptied
    uint64_t work         # NFA nodes in the states built since the cache was last emptied
    uint64_t calls        # matches run with this scratch
    uint64_t built        # DFA states computed
    uint64_t flushes      # times the cache was full and emptied (thrashing included)
    uint64_t fallbacks    # matches finished by the NFA because the cache filled up
    uint64_t nfa_calls    # matches run by the NFA alone (the cache was thrashing)


cdef enum:
    # A link of a literal run: a node that accepts no id, is not a '*' node, and has no way on but one
    # byte edge, to the next node (node + 1). GlobTrie._links holds per node either the byte of a
    # link (below GT_STORED) or GT_STORED + the index of the node's gt_node in GlobTrie._nodes: a run
    # is walked reading one entry per node in a row, and links, most nodes of a large trie, have no
    # gt_node.
    GT_STORED = 256
    GT_SPARE_SLOTS = 8    # scratch buffers kept for reuse by the Python-level match()


# Free a scratch buffer and its DFA cache (use instead of free()).
cdef void gt_free_scratch(void* scratch) noexcept nogil
# Bytes a scratch buffer holds now, its DFA cache included (the cache grows with use).
cdef Py_ssize_t gt_scratch_bytes(const void* scratch) noexcept nogil


cdef class GlobTrie:
    cdef readonly bint ignore_case
    cdef readonly bint frozen
    cdef const uint8_t* _fold          # byte translation applied to the input (ASCII lower or identity)

    # Build phase: one bytes record per add() (tokens and id, see _CODE_END), dropped by freeze().
    cdef list _b_recs
    cdef Py_ssize_t _n_patterns

    # Frozen representation (C memory owned by the object).
    cdef gt_node* _nodes               # the nodes that are not links, in node order
    cdef uint32_t* _links              # per node: the byte of a link, or GT_STORED + its index in _nodes
    cdef uint8_t* _edge_bytes
    cdef int32_t* _edge_targets
    cdef int32_t* _acc                 # dense indices into _ids
    cdef int32_t* _ids                 # distinct pattern ids, ascending
    cdef Py_ssize_t _n_nodes, _n_stored, _n_edges, _n_acc, _n_ids  # _n_stored: nodes in _nodes
    cdef uint8_t* _prefix              # bytes every pattern starts with (whole code points, folded)
    cdef Py_ssize_t _prefix_len
    cdef int32_t _prefix_node          # the node they lead to: matching starts there

    # Lazy DFA: byte classes (bytes no edge tells apart share one) and the cache geometry.
    cdef uint8_t _cls[256]             # input byte -> class (folding included)
    cdef int32_t _n_cls
    cdef int32_t _stride               # int32 slots per row of the transition table: _n_cls + GT_ROW_EXTRA
    cdef int32_t _max_states           # states of a new cache, the reserved state 0 included; 0: NFA only
    cdef int32_t _cap_states           # states a cache may grow to, the reserved state 0 included
    cdef int32_t _pool_cap             # int32 slots of the node pool of a new cache
    cdef Py_ssize_t _off_stamps, _off_lists
    cdef Py_ssize_t _scratch_bytes
    cdef readonly Py_ssize_t nbytes    # memory of the frozen trie (its scratch buffers not included)

    cdef void* _spare[GT_SPARE_SLOTS]
    cdef int _n_spare

    # Bytes of scratch one concurrent match needs; allocate zero-filled, reuse freely on this trie.
    cdef Py_ssize_t scratch_size(self) noexcept nogil
    # Capacity (in int32 ids) the ``out`` buffer of match_into() needs: the number of distinct ids.
    cdef Py_ssize_t result_capacity(self) noexcept nogil
    # Write the sorted unique ids of all patterns matching the UTF-8 text into out; return their
    # count, or -1 if the trie is not frozen.
    cdef Py_ssize_t match_into(self, const unsigned char* text, Py_ssize_t n, void* scratch,
                               int32_t* out) noexcept nogil
    # 1 if any pattern matches the UTF-8 text, 0 if none, -1 if the trie is not frozen.
    cdef int match_any(self, const unsigned char* text, Py_ssize_t n, void* scratch) noexcept nogil
    # The node a literal text leads to from the root, -1 if none (or not frozen); match_from() goes on from
    # it, writing sorted ids into out as match_into() does, by the NFA alone.
    cdef int32_t node_of(self, const unsigned char* text, Py_ssize_t n) noexcept nogil
    cdef Py_ssize_t match_from(self, int32_t node, const unsigned char* text, Py_ssize_t n, void* scratch,
                               int32_t* out) noexcept nogil

    cdef void _free_arrays(self) noexcept
    cdef int _set_prefix(self) except -1
    cdef int _set_geometry(self, Py_ssize_t states, Py_ssize_t pool, Py_ssize_t cap) except -1
    cdef bytes _record(self, pattern, int32_t pattern_id)
    cdef Py_ssize_t _match(self, const unsigned char* text, Py_ssize_t n, void* scratch,
                           int32_t* out) noexcept nogil
    cdef void* _borrow(self) except NULL
    cdef void _give_back(self, void* buf) noexcept
    cdef object _search(self, str text, bint want_ids)
    cdef object _search_utf8(self, const unsigned char* data, Py_ssize_t n, bint want_ids)
