# cython: language_level=3
"""C-level interface of compiled condition groups (one group per statement).

Usage from another .pyx (after ``conditions.freeze()``)::

    from ._conditions cimport ConditionSet
    from ._pattern cimport pseg
    segs = <pseg*>malloc(conditions.scratch_segments() * sizeof(pseg))      # one per thread
    missing = <int32_t*>malloc(conditions.max_missing_any() * sizeof(int32_t))
    with nogil:
        n_missing = 0
        r = conditions.holds(group, ctx, missing, &n_missing, segs)
        # r: 1 all hold, 0 some condition is false, 2 the statement does not apply (a policy
        # variable without a single value), -1 the request fails (an unreadable value)

Missing keys are reported as *name ids*: indices into ``key_names``, the condition keys as
spelled in the policies (the reference reports them so; one key spelled two ways is two
names). ``name_key(name)`` is the key id of a name.
"""
from libc.stdint cimport int32_t, uint8_t, uint64_t

from ._pattern cimport PatternSet, pseg
from ._types cimport cstr, ctx_entry


ctypedef struct decview:           # a decimal number spelled in UTF-8 text (digits may be non-ASCII)
    const unsigned char* s
    Py_ssize_t sig                 # offset of the first significant digit; -1 if the value is zero
    Py_ssize_t point               # offset where the integer digits end
    Py_ssize_t frac                # offset of the first fraction digit (point + 1, or point if no '.')
    Py_ssize_t end                 # offset where the digits end
    Py_ssize_t exp                 # digits from sig to the point; -(zeros after the point) if sig is after it
    bint neg


ctypedef struct ipnet:             # an address (mask all ones) or a network; IPv4 in lo only
    int32_t version
    uint64_t hi, lo, mask_hi, mask_lo


ctypedef struct cval:              # one policy value of a condition
    int32_t pattern                # String/Arn: index in the PatternSet
    int32_t flag                   # Bool: 0/1; Null: 0/1, or -1 when unreadable
    cstr text                      # Binary: the text
    decview num                    # Numeric/Date: the bound
    ipnet net                      # IpAddress: the network


ctypedef struct cond_t:
    uint8_t family                 # CF_*
    uint8_t comparison             # CC_*
    uint8_t negated
    uint8_t qualifier              # CQ_*
    uint8_t if_exists
    uint8_t unreadable             # a typed policy value cannot be read: evaluating fails
    uint8_t has_vars               # a String/Arn value may hold a policy variable
    int32_t key                    # key id of the condition key
    int32_t name                   # name id of the key as spelled
    int32_t first, count           # its values in ConditionSet._vals


ctypedef struct group_t:
    int32_t first, count           # its conditions in ConditionSet._conds
    int32_t n_names                # distinct names of its non-Null conditions


cdef enum:
    CF_STRING, CF_NUMERIC, CF_DATE, CF_BOOL, CF_BINARY, CF_IP, CF_ARN, CF_NULL

cdef enum:
    CC_EQUALS, CC_EQUALS_IGNORE_CASE, CC_LIKE, CC_LESS, CC_LESS_EQUALS, CC_GREATER,
    CC_GREATER_EQUALS, CC_IN_RANGE, CC_IS_ABSENT

cdef enum:
    CQ_NONE, CQ_ALL_VALUES, CQ_ANY_VALUE


cdef class ConditionSet:
    cdef readonly bint frozen
    cdef readonly PatternSet patterns  # String and Arn policy values (frozen with the set)
    cdef readonly list key_names       # name id -> condition key as spelled in the policy
    cdef dict _key_ids                 # shared with the owner: lower-cased key -> id
    cdef dict _name_ids
    cdef list _name_keys               # name id -> key id
    cdef list _b_groups, _b_conds, _b_vals
    cdef list _keep

    cdef group_t* _groups
    cdef cond_t* _conds
    cdef cval* _vals
    cdef int32_t* _names_key
    cdef Py_ssize_t _n_groups, _n_conds, _n_vals, _max_missing
    cdef readonly Py_ssize_t nbytes    # memory of the frozen set, its patterns included

    # pseg slots of the scratch holds() needs (at least 1).
    cdef Py_ssize_t scratch_segments(self) noexcept nogil
    # Capacity holds() may use in missing for this group (distinct names of its non-Null
    # conditions), past the *n_missing the caller passes in; 0 for a bad group.
    cdef Py_ssize_t max_missing(self, int32_t group) noexcept nogil
    # The largest max_missing() over all groups.
    cdef Py_ssize_t max_missing_any(self) noexcept nogil
    # Key id of a name id.
    cdef int32_t name_key(self, int32_t name) noexcept nogil
    # Evaluate the group's conditions as statement_applies does: first every condition's
    # comparator in order (a typed policy value holding ${...} -> -1; an unresolvable policy
    # variable in a String/Arn value -> 2), then every condition in order, none skipped (an
    # unreadable request value, or Null flag, -> -1). Otherwise 1 if all hold, else 0.
    # -1 also for a bad group or an unfrozen set. With 1 or 0, appends to missing (from
    # missing[*n_missing] on, advancing *n_missing) the name ids of the absent keys that
    # non-Null conditions needed, each once per call; with 2 or -1, *n_missing is unchanged.
    cdef int holds(self, int32_t group, const ctx_entry* ctx, int32_t* missing,
                   int32_t* n_missing, pseg* scratch) noexcept nogil

    cdef int _condition(self, const cond_t* c, const ctx_entry* ctx, int32_t* missing,
                        int32_t* n_missing, int32_t start, pseg* scratch) noexcept nogil
    cdef int _matches(self, const cond_t* c, const unsigned char* text, Py_ssize_t n,
                      const ctx_entry* ctx, pseg* scratch) noexcept nogil
    cdef int32_t _name_id(self, str name)
    cdef void _free_arrays(self) noexcept
