# cython: language_level=3
"""The shape rules of a request's action and resource, in C: ``Request.create`` and the compiled
engine's converters check by these, and by nothing else; how their messages show a value; and a
``Request``'s fields read in place."""
from cpython.object cimport PyObject


cdef str shown(object value)


cdef enum:
    N_FIELDS = 6  # a Request's fields (``_request.FIELDS``)


cdef bint request_fields(object request, PyObject** values) noexcept
cdef bint checked_action(object action) noexcept
cdef bint checked_resource(object resource, Py_ssize_t* start, Py_ssize_t* length) noexcept


cdef inline bint valid_action(const char* p, Py_ssize_t n) noexcept nogil:
    """service:Action, with letters, digits, '_' and '-' on both sides of the one ':'."""
    cdef Py_ssize_t i, colon = -1
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>p[i]
        if c == b":":
            if colon >= 0:
                return False
            colon = i
        # a letter of either case (bit 0x20 folds them), a digit, '_' or '-'; as unsigned sums, each one test
        elif not (<unsigned char>((c | 0x20) - 97) < 26 or <unsigned char>(c - 48) < 10 or c == 95 or c == 45):
            return False
    return 0 < colon < n - 1


cdef inline bint arn_fields(const char* p, Py_ssize_t n, Py_ssize_t* at) noexcept nogil:
    """Whether the text is an ARN (``arn:`` and six ':'-separated fields, the last one running to the
    end); if so, field k starts at ``at[k]`` (k = 0 to 5)."""
    cdef Py_ssize_t i, colons = 0
    if n < 4 or p[0] != b"a" or p[1] != b"r" or p[2] != b"n" or p[3] != b":":
        return False
    at[0] = 0
    for i in range(n):
        if p[i] == b":":
            colons += 1
            at[colons] = i + 1
            if colons == 5:
                return True
    return False


cdef inline bint arn_account(const char* p, Py_ssize_t n, Py_ssize_t* start, Py_ssize_t* length) noexcept nogil:
    """Whether the text is an ARN; if so, where its account field (the fifth) lies."""
    cdef Py_ssize_t at[6]
    if not arn_fields(p, n, at):
        return False
    account_field(at, start, length)
    return True


cdef inline void account_field(const Py_ssize_t* at, Py_ssize_t* start, Py_ssize_t* length) noexcept nogil:
    """Where the account field lies, of an ARN whose fields start at ``at`` (``arn_fields``)."""
    start[0] = at[4]
    length[0] = at[5] - 1 - at[4]
