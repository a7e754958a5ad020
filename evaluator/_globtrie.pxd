# cython: language_level=3
"""C-level interface of the wildcard trie, for other Cython modules of the engine.

Usage from another .pyx (after ``trie.freeze()``)::

    from evaluator._globtrie cimport GlobTrie
    scratch = calloc(trie.scratch_size(), 1)       # one per thread, zero-filled once
    out = <int32_t*>malloc(trie.result_capacity() * sizeof(int32_t))
    with nogil:
        n = trie.match_into(<const unsigned char*>utf8, utf8_len, scratch, out)  # n sorted ids

A scratch buffer serves one trie and one thread at a time; several threads may match on the
same frozen trie concurrently, each with its own scratch. Text must be UTF-8 (what CPython
produces); invalid bytes are read safely but their result is unspecified.
"""
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t


ctypedef struct gt_node:
    uint32_t edge_start   # first outgoing byte edge in GlobTrie._edge_bytes / _edge_targets
    uint16_t n_edges      # number of byte edges (sorted by byte, at most 256)
    uint8_t loop          # 1 if the node was reached through '*': it consumes any code point
    uint8_t sink          # 1 if loop and no way out: once reached, the whole input matches
    int32_t qmark         # target of the '?' edge, -1 if none
    int32_t star          # target of the '*' edge (also active whenever this node is), -1 if none
    uint32_t acc_start    # first entry in GlobTrie._acc (dense id indices) accepted here
    uint32_t acc_count


cdef enum:
    GT_SPARE_SLOTS = 8    # scratch buffers kept for reuse by the Python-level match()


cdef class GlobTrie:
    cdef readonly bint ignore_case
    cdef readonly bint frozen
    cdef const uint8_t* _fold          # byte translation applied to the input (ASCII lower or identity)

    # Build phase (Python objects, dropped by freeze()).
    cdef list _b_children              # per node: dict byte -> node
    cdef list _b_qmark                 # per node: node or -1
    cdef list _b_star                  # per node: node or -1
    cdef list _b_loop                  # per node: bool
    cdef list _b_acc                   # per node: list of pattern ids
    cdef Py_ssize_t _n_patterns

    # Frozen representation (C memory owned by the object).
    cdef gt_node* _nodes
    cdef uint8_t* _edge_bytes
    cdef int32_t* _edge_targets
    cdef int32_t* _acc                 # dense indices into _ids
    cdef int32_t* _ids                 # distinct pattern ids, ascending
    cdef Py_ssize_t _n_nodes, _n_edges, _n_acc, _n_ids

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
    # 1 if any pattern matches the UTF-8 text (stops at the first certain match), 0 if none,
    # -1 if the trie is not frozen.
    cdef int match_any(self, const unsigned char* text, Py_ssize_t n, void* scratch) noexcept nogil

    cdef void _free_arrays(self) noexcept
    cdef list _tokens(self, pattern)
    cdef Py_ssize_t _new_node(self, bint loop)
    cdef Py_ssize_t _run(self, const unsigned char* text, Py_ssize_t n, void* scratch,
                         int32_t* out) noexcept nogil
    cdef void* _borrow(self) except NULL
    cdef void _give_back(self, void* buf) noexcept
    cdef object _search(self, str text, bint want_ids)
