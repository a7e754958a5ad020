# cython: language_level=3
"""C-level interface of glob patterns with policy variables, for other Cython modules.

A pattern is a list of *pieces*: static text (UTF-8 bytes, where ``*`` and ``?`` may be
wildcards) and policy variables (``${key}``, ``${key, 'default'}``), whose values are always
literal. For one request, ``segments()`` resolves the variables against the dense context array
into ``pseg`` views (no copying); the glob and equality helpers below work on those views.

Usage from another .pyx (after ``patterns.freeze()``)::

    from ._pattern cimport PatternSet, pseg
    segs = <pseg*>malloc(patterns.max_segments() * sizeof(pseg))   # one per thread
    with nogil:
        r = patterns.match(index, utf8, utf8_len, ctx, segs)         # 1 match, 0 none, 2 unresolvable

Nothing here allocates or takes the GIL while matching; a frozen set is read-only, so threads
may match concurrently, each with its own ``segs`` scratch.
"""
from libc.stdint cimport int32_t, uint8_t, uint16_t

from ._types cimport cstr, ctx_entry


# A pattern token: 0..255 is a literal UTF-8 byte; PT_STAR / PT_QMARK are the wildcards.
ctypedef uint16_t ptok

cdef enum:
    PT_STAR = 256      # any run of code points, ':' and '/' included
    PT_QMARK = 257     # exactly one code point


ctypedef struct pseg:
    const char* text   # the piece's bytes (a wildcard is spelled '*' or '?'); a variable's value
    const ptok* toks   # the piece's tokens, one per byte; NULL: every byte is literal
    Py_ssize_t len     # bytes (== tokens)


ctypedef struct pcur:  # a position in a list of pseg: piece index and byte offset in it
    Py_ssize_t seg
    Py_ssize_t off


cdef class PatternSet:
    cdef readonly bint frozen
    cdef dict _key_ids                 # shared with the owner: lower-cased key -> id
    cdef list _build                   # per pattern: list of (key id or -1, bytes, literal offsets or None)
    cdef dict _ids                     # (text, substitute) -> index of the pattern added for them
    cdef list _keep                    # bytes objects the frozen pieces point into

    # Frozen representation (C memory owned by the object).
    cdef pseg* _pieces                 # all pieces; a variable's piece holds its default
    cdef int32_t* _piece_key           # -1: static piece; else the variable's key id
    cdef uint8_t* _piece_default       # 1: the variable has a default (in _pieces)
    cdef ptok* _tokens                 # tokens of all static pieces
    cdef int32_t* _first               # per pattern: first piece
    cdef int32_t* _count               # per pattern: number of pieces
    cdef uint8_t* _has_vars            # per pattern: 1 if some piece is a variable
    cdef Py_ssize_t _n_patterns, _n_pieces, _max_segments
    cdef readonly Py_ssize_t nbytes    # memory of the frozen set: its arrays and the bytes they point into

    # pseg slots the scratch of segments()/match() needs: the most pieces of a pattern with
    # variables (at least 1, so it can always be allocated).
    cdef Py_ssize_t max_segments(self) noexcept nogil
    # Resolve pattern's variables against ctx. Sets out to the pattern's pieces (in the set
    # itself when it has no variables, else written into scratch, max_segments() slots) and
    # returns their count; -1 if a variable is unresolvable (absent without default, or
    # multi-valued: the context gave a list) or the index is bad / the set not frozen.
    cdef Py_ssize_t segments(self, int32_t pattern, const ctx_entry* ctx, pseg* scratch,
                             const pseg** out) noexcept nogil
    # Glob-match the UTF-8 text against the pattern: 1 match, 0 no match, 2 unresolvable
    # variable, -1 bad index or set not frozen.
    cdef int match(self, int32_t pattern, const char* text, Py_ssize_t n, const ctx_entry* ctx,
                   pseg* scratch) noexcept nogil
    # Write the pattern's tokens, variables expanded (their bytes literal), into out (capacity
    # tokens); return the token count (write nothing past capacity: call again with a bigger
    # buffer if the count exceeds it), or -1 as for segments().
    cdef Py_ssize_t expand(self, int32_t pattern, const ctx_entry* ctx, ptok* out,
                           Py_ssize_t capacity) noexcept nogil

    cdef list _parse(self, str text, bint substitute)
    cdef int32_t _key_id(self, str key)
    cdef void _free_arrays(self) noexcept


cdef class ContextArray:
    """A request context as the dense ``ctx_entry`` array (for tests and Python-level calls)."""
    cdef ctx_entry* entries
    cdef cstr* _strings
    cdef list _keep
    cdef Py_ssize_t n_keys


# Code point length of the UTF-8 sequence starting at text[0] (1 for stray bytes), clamped to n.
cdef Py_ssize_t utf8_step(const unsigned char* text, Py_ssize_t n) noexcept nogil

# Glob-match text against the tokens of segs between cursors start and end (end excluded;
# (nseg, 0) is the end of the pattern). O(pattern * text) steps, no recursion.
cdef bint glob_range(const pseg* segs, Py_ssize_t nseg, pcur start, pcur end,
                     const unsigned char* text, Py_ssize_t n) noexcept nogil

# Glob-match text against a plain token array.
cdef bint glob_tokens(const ptok* toks, Py_ssize_t m, const unsigned char* text,
                      Py_ssize_t n) noexcept nogil

# Whether the concatenated bytes of segs (wildcards as literal characters) equal text.
cdef bint segments_equal(const pseg* segs, Py_ssize_t nseg, const char* text,
                         Py_ssize_t n) noexcept nogil
