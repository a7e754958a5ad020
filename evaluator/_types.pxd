# cython: language_level=3
"""C types shared by the compiled engine's modules: borrowed strings and a request context (and a prefetch hint).

A request's context reaches the C code as a dense array indexed by key id
(the compiled policy set numbers every condition key and policy-variable key
it mentions, lower-cased). Strings are borrowed UTF-8 pointers: the Python
objects they come from stay alive for the whole batch.
"""
from libc.stdint cimport int32_t


ctypedef struct cstr:
    const char* ptr
    Py_ssize_t len


ctypedef struct ctx_entry:
    int32_t count          # -1: key absent; 0: empty list; n: that many values
    bint is_list           # the request gave a list (even of one value), not a single string
    const cstr* values     # count values


cdef extern from *:
    """
    #define iam_prefetch(p) __builtin_prefetch(p)
    """
    # Start reading the cache line at p, for reads that would otherwise wait on each other (a hint: any address
    # is harmless).
    void prefetch "iam_prefetch"(const void* p) nogil
