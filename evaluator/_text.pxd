# cython: language_level=3
"""How a table of distinct strings hashes a text, in C: an Arrow batch's values (``_engine``) and a
RequestColumns message's (``server/_wire``) are found by this."""
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy


cdef enum:
    MAX_PROBES = 32  # slots a table looks for a text in: bounds the work of texts whose hashes collide


cdef inline uint64_t hash_text(const char* p, Py_ssize_t n, uint64_t seed) noexcept nogil:
    """Eight bytes mixed at a time; the tail as the last eight bytes (overlapping those mixed: one load, no
    copy of a variable length) or, under eight, byte by byte. ``seed``: a table's own secret, so that no
    input can be made to collide everywhere."""
    cdef uint64_t h = seed ^ (<uint64_t>n * 0x9E3779B97F4A7C15ULL), word
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        h = (h ^ word) * 0xBF58476D1CE4E5B9ULL
        h ^= h >> 31
        i += 8
    word = 0
    if n >= 8:
        memcpy(&word, p + n - 8, 8)
    else:
        while i < n:
            word = (word << 8) | <uint8_t>p[i]
            i += 1
    h = (h ^ word) * 0x94D049BB133111EBULL
    return h ^ (h >> 29)
