# cython: language_level=3, embedsignature=True
"""A ``RequestColumns`` read from its protobuf encoding in C, into the columns ``evaluate_columns`` takes.

upb makes a Python string of every entry of a repeated string field, but a batch sends the same principals,
actions, resources and most context values many times: here each distinct text becomes one ``str``, which
every row that sends it shares. The encoding is read as upb reads it (unknown fields and wrong wire types
skipped, repeated numbers packed or not, strings refused unless UTF-8), and the columns are checked here,
the one place that reads them.
"""
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF, PyObject
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp

from iam_evaluator._text cimport MAX_PROBES, hash_text

import os

from google.protobuf.message import DecodeError


cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size, const char* errors)


cdef enum:
    WIRE_VARINT = 0
    WIRE_FIXED64 = 1
    WIRE_LEN = 2
    WIRE_START_GROUP = 3
    WIRE_END_GROUP = 4
    WIRE_FIXED32 = 5
    MAX_DEPTH = 100  # nested messages and groups, as upb allows by default


ctypedef struct vec:  # a growing array of 8-byte items: borrowed str pointers, or numbers
    uint64_t* items
    Py_ssize_t n
    Py_ssize_t cap


cdef uint64_t _hash_seed = int.from_bytes(os.urandom(8), "little")  # no message can be made to collide


cdef int push(vec* v, uint64_t item) except -1:
    cdef uint64_t* grown
    if v.n == v.cap:
        v.cap = 2 * v.cap + 16
        grown = <uint64_t*>realloc(v.items, v.cap * sizeof(uint64_t))
        if grown == NULL:
            raise MemoryError()
        v.items = grown
    v.items[v.n] = item
    v.n += 1
    return 0


ctypedef struct column_t:  # a ContextColumn or SessionTagsColumn as sent
    PyObject* key          # borrowed from the reader's strings; NULL: not sent (the empty string)
    vec rows
    vec values
    vec lengths
    bint is_list


ctypedef struct slot_t:  # an entry of the table of distinct strings
    uint64_t hash
    const char* ptr
    Py_ssize_t len
    PyObject* text


cdef class _Reader:
    """The fields of one encoded RequestColumns; owns every str it made (``texts``) and the C arrays."""
    cdef vec fields[4]  # principals, actions, resources, resource_accounts
    cdef column_t* columns[2]  # context, session_tags
    cdef Py_ssize_t n_columns[2]
    cdef Py_ssize_t cap_columns[2]
    cdef slot_t* slots
    cdef Py_ssize_t n_slots  # a power of two
    cdef Py_ssize_t n_texts
    cdef list texts
    cdef object empty

    def __cinit__(self):
        self.texts = []
        self.empty = ""

    def __dealloc__(self):
        cdef int f
        cdef Py_ssize_t c
        for f in range(4):
            free(self.fields[f].items)
        for f in range(2):
            for c in range(self.n_columns[f]):
                free(self.columns[f][c].rows.items)
                free(self.columns[f][c].values.items)
                free(self.columns[f][c].lengths.items)
            free(self.columns[f])
        free(self.slots)

    cdef PyObject* text(self, const char* ptr, Py_ssize_t size) except NULL:
        """The one str of this text (refused unless UTF-8, as upb refuses a proto3 string)."""
        cdef uint64_t h = hash_text(ptr, size, _hash_seed)
        cdef Py_ssize_t at, probe
        cdef slot_t* slot = NULL
        if 2 * (self.n_texts + 1) > self.n_slots:
            self.grow()
        at = <Py_ssize_t>(h & <uint64_t>(self.n_slots - 1))
        for probe in range(MAX_PROBES):
            if self.slots[at].text == NULL:
                slot = &self.slots[at]
                break
            if self.slots[at].hash == h and self.slots[at].len == size and memcmp(self.slots[at].ptr, ptr, size) == 0:
                return self.slots[at].text
            at = (at + 1) & (self.n_slots - 1)
        try:
            made = PyUnicode_DecodeUTF8(ptr, size, NULL)
        except UnicodeDecodeError:
            raise DecodeError("RequestColumns holds a string that is not UTF-8") from None
        self.texts.append(made)
        if slot != NULL:  # else a run of colliding texts (crafted, say) is long: this one is not shared
            slot.hash, slot.ptr, slot.len, slot.text = h, ptr, size, <PyObject*>made
            self.n_texts += 1
        return <PyObject*>made

    cdef int grow(self) except -1:
        cdef Py_ssize_t old = self.n_slots, k, at
        cdef slot_t* previous = self.slots
        self.n_slots = 2 * old if old else 1024
        self.slots = <slot_t*>calloc(self.n_slots, sizeof(slot_t))
        if self.slots == NULL:
            self.slots, self.n_slots = previous, old
            raise MemoryError()
        for k in range(old):
            if previous[k].text != NULL:
                at = <Py_ssize_t>(previous[k].hash & <uint64_t>(self.n_slots - 1))
                while self.slots[at].text != NULL:
                    at = (at + 1) & (self.n_slots - 1)
                self.slots[at] = previous[k]
        free(previous)
        return 0

    cdef column_t* new_column(self, int kind) except NULL:
        cdef column_t* grown
        if self.n_columns[kind] == self.cap_columns[kind]:
            self.cap_columns[kind] = 2 * self.cap_columns[kind] + 8
            grown = <column_t*>realloc(self.columns[kind], self.cap_columns[kind] * sizeof(column_t))
            if grown == NULL:
                raise MemoryError()
            self.columns[kind] = grown
        self.n_columns[kind] += 1
        grown = &self.columns[kind][self.n_columns[kind] - 1]
        grown.key = NULL
        grown.rows.items = grown.values.items = grown.lengths.items = NULL
        grown.rows.n = grown.values.n = grown.lengths.n = 0
        grown.rows.cap = grown.values.cap = grown.lengths.cap = 0
        grown.is_list = False
        return grown

    cdef int read(self, const uint8_t* p, const uint8_t* end) except -1:
        """The fields of a RequestColumns."""
        cdef uint32_t field
        cdef int wire
        cdef const uint8_t* value
        cdef uint64_t size
        while p < end:
            p = tag(p, end, &field, &wire)
            if wire == WIRE_LEN and 1 <= field <= 6:
                p = span(p, end, &value, &size)
                if field <= 4:
                    push(&self.fields[field - 1], <uint64_t><size_t>self.text(<const char*>value, size))
                else:
                    self.read_column(value, value + size, field - 5)
            else:
                p = skip(p, end, field, wire, MAX_DEPTH)
        return 0

    cdef int read_column(self, const uint8_t* p, const uint8_t* end, int kind) except -1:
        """A ContextColumn (kind 0: key 1, values 2, is_list 3, lengths 4, rows 5) or a SessionTagsColumn
        (kind 1: key 1, rows 2, values 3)."""
        cdef column_t* column = self.new_column(kind)
        cdef uint32_t field
        cdef int wire
        cdef const uint8_t* value
        cdef uint64_t size, number
        cdef vec* numbers
        while p < end:
            p = tag(p, end, &field, &wire)
            numbers = NULL
            if field == (5 if kind == 0 else 2):
                numbers = &column.rows
            elif kind == 0 and field == 4:
                numbers = &column.lengths
            if field == 1 and wire == WIRE_LEN:
                p = span(p, end, &value, &size)
                column.key = self.text(<const char*>value, size)
            elif field == (2 if kind == 0 else 3) and wire == WIRE_LEN:
                p = span(p, end, &value, &size)
                push(&column.values, <uint64_t><size_t>self.text(<const char*>value, size))
            elif kind == 0 and field == 3 and wire == WIRE_VARINT:
                p = varint(p, end, &number)
                column.is_list = number != 0
            elif numbers != NULL and wire == WIRE_VARINT:
                p = varint(p, end, &number)
                push(numbers, <uint32_t>number)
            elif numbers != NULL and wire == WIRE_LEN:  # packed
                p = span(p, end, &value, &size)
                while value < p:
                    value = varint(value, p, &number)
                    push(numbers, <uint32_t>number)
            else:
                p = skip(p, end, field, wire, MAX_DEPTH - 1)
        return 0

    cdef list strings(self, const vec* v):
        cdef list out = PyList_New(v.n)
        cdef Py_ssize_t i
        cdef PyObject* item
        for i in range(v.n):
            item = <PyObject*><size_t>v.items[i]
            Py_INCREF(<object>item)
            PyList_SET_ITEM(out, i, <object>item)
        return out

    cdef object key(self, const column_t* column):
        return self.empty if column.key == NULL else <object>column.key


cdef const uint8_t* varint(const uint8_t* p, const uint8_t* end, uint64_t* out) except NULL:
    cdef uint64_t value = 0
    cdef int shift = 0
    while shift < 70:
        if p >= end:
            raise DecodeError("RequestColumns ends inside a number")
        value |= (<uint64_t>(p[0] & 0x7F)) << shift if shift < 64 else 0
        if not p[0] & 0x80:
            out[0] = value
            return p + 1
        p += 1
        shift += 7
    raise DecodeError("RequestColumns holds a number longer than ten bytes")


cdef const uint8_t* tag(const uint8_t* p, const uint8_t* end, uint32_t* field, int* wire,
                        bint in_group=False) except NULL:
    """A field's number and wire type; upb refuses field number 0 in a message, not in a group it skips."""
    cdef uint64_t key
    cdef const uint8_t* start = p
    p = varint(p, end, &key)
    if p - start > 5 or key >> 32 or (key >> 3 == 0 and not in_group) or key & 7 > WIRE_FIXED32:
        raise DecodeError("RequestColumns holds a malformed field tag")
    field[0] = <uint32_t>(key >> 3)
    wire[0] = key & 7
    return p


cdef const uint8_t* span(const uint8_t* p, const uint8_t* end, const uint8_t** value, uint64_t* size) except NULL:
    cdef const uint8_t* start = p
    p = varint(p, end, size)
    if p - start > 5 or size[0] > <uint64_t>(end - p):  # upb reads a length in five bytes at most
        raise DecodeError("RequestColumns holds a field longer than what follows it")
    value[0] = p
    return p + size[0]


cdef const uint8_t* skip(const uint8_t* p, const uint8_t* end, uint32_t field, int wire, int depth) except NULL:
    """Past an unknown field (or a known one of another wire type: upb keeps it as unknown)."""
    cdef uint64_t ignored
    cdef const uint8_t* value
    cdef uint32_t inner
    cdef int inner_wire
    if wire == WIRE_VARINT:
        return varint(p, end, &ignored)
    if wire == WIRE_FIXED64 or wire == WIRE_FIXED32:
        if end - p < (8 if wire == WIRE_FIXED64 else 4):
            raise DecodeError("RequestColumns ends inside a number")
        return p + (8 if wire == WIRE_FIXED64 else 4)
    if wire == WIRE_LEN:
        return span(p, end, &value, &ignored)
    if wire == WIRE_START_GROUP:
        if depth <= 0:
            raise DecodeError("RequestColumns nests groups too deep")
        while True:
            p = tag(p, end, &inner, &inner_wire, True)
            if inner_wire == WIRE_END_GROUP:
                if inner != field:
                    raise DecodeError("RequestColumns ends a group it did not start")
                return p
            p = skip(p, end, inner, inner_wire, depth - 1)
    raise DecodeError("RequestColumns ends a group it did not start")


def request_columns(bytes encoded):
    """The columns of an encoded ``RequestColumns``: principals, actions, resources, contexts as one list per
    key (None where a request lacks it), resource owners (None where the ARN says; None when no request
    has one) and session tags as one dict per request (None where a request has none; None when no column
    is sent). Raises ``DecodeError`` for an encoding upb refuses, and ``ValueError`` for columns that do not
    fit together."""
    cdef _Reader reader = _Reader()
    cdef const uint8_t* data = <const uint8_t*><const char*>encoded
    reader.read(data, data + len(encoded))
    cdef Py_ssize_t n = reader.fields[0].n
    if reader.fields[1].n != n or reader.fields[2].n != n:
        raise ValueError(f"columns differ in length: {n} principals, {reader.fields[1].n} actions, "
                         f"{reader.fields[2].n} resources")
    owners = None
    cdef Py_ssize_t i, c
    if reader.fields[3].n:
        if reader.fields[3].n != n:
            raise ValueError(f"resource_accounts has {reader.fields[3].n} entries for {n} requests")
        owners = reader.strings(&reader.fields[3])
        for i in range(n):
            if not owners[i]:
                owners[i] = None
        if not any(owners):
            owners = None
    contexts = {}
    for c in range(reader.n_columns[0]):
        key = reader.key(&reader.columns[0][c])
        if key in contexts:
            raise ValueError(f"context column {key!r} is given twice")
        contexts[key] = _context_column(reader, &reader.columns[0][c], key, n)
    return (reader.strings(&reader.fields[0]), reader.strings(&reader.fields[1]),
            reader.strings(&reader.fields[2]), contexts, owners, _session_tags(reader, n))


cdef int check_rows(const vec* rows, object what, object key, Py_ssize_t n) except -1:
    cdef Py_ssize_t k
    for k in range(rows.n):
        if rows.items[k] >= <uint64_t>n or (k and rows.items[k] <= rows.items[k - 1]):
            raise ValueError(f"{what} {key!r}: rows must be ascending positions below {n}")
    return 0


cdef list _context_column(_Reader reader, const column_t* column, object key, Py_ssize_t n):
    """One context key's values, one per request (None where a request lacks it), a list a tuple."""
    check_rows(&column.rows, "context column", key, n)
    cdef Py_ssize_t count = column.rows.n if column.rows.n else n, k, j, start = 0
    cdef uint64_t total = 0
    cdef list cells
    cdef tuple cell
    cdef PyObject* item
    if column.is_list:
        for k in range(column.lengths.n):
            total += column.lengths.items[k]
        if column.lengths.n != count or total != <uint64_t>column.values.n:
            raise ValueError(f"context column {key!r}: lengths must give one count per request with the key "
                             f"({count}), adding up to the {column.values.n} values")
        cells = PyList_New(count)
        for k in range(count):
            cell = PyTuple_New(<Py_ssize_t>column.lengths.items[k])
            for j in range(<Py_ssize_t>column.lengths.items[k]):
                item = <PyObject*><size_t>column.values.items[start + j]
                Py_INCREF(<object>item)
                PyTuple_SET_ITEM(cell, j, <object>item)
            start += <Py_ssize_t>column.lengths.items[k]
            Py_INCREF(cell)
            PyList_SET_ITEM(cells, k, cell)
    else:
        if column.values.n != count:
            raise ValueError(f"context column {key!r} has {column.values.n} values for {count} requests")
        cells = reader.strings(&column.values)
    if not column.rows.n:
        return cells
    cdef list spread = [None] * n
    for k in range(count):
        spread[column.rows.items[k]] = cells[k]
    return spread


cdef object _session_tags(_Reader reader, Py_ssize_t n):
    """Each request's session tags from the sparse tag columns; the engine then checks them as it checks a
    ``Request``'s (only an assumed-role session may have them)."""
    if not reader.n_columns[1]:
        return None
    cdef list tags = [None] * n
    cdef set seen = set()
    cdef Py_ssize_t c, k, count
    cdef const column_t* column
    for c in range(reader.n_columns[1]):
        column = &reader.columns[1][c]
        key = reader.key(column)
        if key in seen:
            raise ValueError(f"session tag column {key!r} is given twice")
        seen.add(key)
        check_rows(&column.rows, "session tag column", key, n)
        count = column.rows.n if column.rows.n else n
        if column.values.n != count:
            raise ValueError(f"session tag column {key!r} has {column.values.n} values for {count} requests")
        for k in range(count):
            row = column.rows.items[k] if column.rows.n else k
            row_tags = tags[row]
            if row_tags is None:
                row_tags = tags[row] = {}
            row_tags[key] = <object><PyObject*><size_t>column.values.items[k]
    return tags
