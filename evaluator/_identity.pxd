# cython: language_level=3
"""A memo's first look, in C: exact strings found by their address, not by hashing and comparing
characters. It holds only keys that the memo's dict holds (and so keeps alive, and their addresses
unused by any other object); it is emptied with the dict. Context keys are looked up so, once per key
of every request: ``Request.create`` folds them (``_request``), a converter numbers them (``_engine``)."""
from libc.stdint cimport intptr_t, uintptr_t
from libc.stdlib cimport calloc, free


ctypedef struct identity_slot:
    const void* key
    intptr_t value


ctypedef struct identity_table:
    identity_slot* slots
    Py_ssize_t mask  # the number of slots less one (a power of two), 0 while there are none
    Py_ssize_t used


cdef inline Py_ssize_t identity_slot_of(const identity_table* table, const void* key) noexcept nogil:
    """Where ``key`` is, or the empty slot where it would go (the table is never full)."""
    cdef Py_ssize_t i = <Py_ssize_t>(((<uintptr_t>key >> 4) * <uintptr_t>0x9E3779B97F4A7C15ULL) >> 32) & table.mask
    while table.slots[i].key != NULL and table.slots[i].key != key:
        i = (i + 1) & table.mask
    return i


cdef inline bint identity_get(const identity_table* table, const void* key, intptr_t* value) noexcept nogil:
    """Whether ``key`` is held; if so, its value into ``value``."""
    if table.mask == 0:
        return False
    cdef Py_ssize_t i = identity_slot_of(table, key)
    if table.slots[i].key == NULL:
        return False
    value[0] = table.slots[i].value
    return True


cdef inline int identity_put(identity_table* table, const void* key, intptr_t value) noexcept nogil:
    """Hold ``key`` (not held yet) with ``value``; -1 if memory ran out (then the table is as it was)."""
    cdef identity_slot* old = table.slots
    cdef Py_ssize_t old_mask = table.mask, i
    if 2 * (table.used + 1) > table.mask:  # at most half full: short probes
        table.mask = 2 * old_mask + 1 if old_mask else 63
        table.slots = <identity_slot*>calloc(table.mask + 1, sizeof(identity_slot))
        if table.slots == NULL:
            table.slots, table.mask = old, old_mask
            return -1
        if old_mask:
            for i in range(old_mask + 1):
                if old[i].key != NULL:
                    table.slots[identity_slot_of(table, old[i].key)] = old[i]
        free(old)
    i = identity_slot_of(table, key)
    table.slots[i].key = key
    table.slots[i].value = value
    table.used += 1
    return 0


cdef inline void identity_clear(identity_table* table) noexcept nogil:
    free(table.slots)
    table.slots = NULL
    table.mask = table.used = 0
