# cython: language_level=3
"""C-level interface of the resource-pattern index, for the engine.

Usage from another .pyx (after ``trie.freeze()``)::

    from ._arntrie cimport ArnTrie, at_free_scratch
    scratch = trie.new_scratch()                   # one per thread; NULL when out of memory
    out = <int32_t*>malloc(trie.result_capacity() * sizeof(int32_t))
    with nogil:
        n = trie.match_into(<const unsigned char*>utf8, utf8_len, scratch, out)  # n sorted ids, -1: no memory
    at_free_scratch(scratch)
"""
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

from ._globtrie cimport GlobTrie, gt_cache

cdef enum:
    AT_FIELDS = 5         # the fields before an ARN's resource part: arn, partition, service, region, account
    AT_MASKS = 16         # sets of '*' fields among partition, service, region and account


# The head of some keys (their letter and literal fields), or a bucket of a head's resource parts (those
# starting with the same `cut` bytes), and where its resource parts are: a record of ArnTrie._head_bytes,
# followed by its bytes (a bucket's: those it starts with), then (node -1) the ids of its resource parts,
# ascending (4-byte aligned), and the parts, each a length byte and the glob.
ctypedef struct at_head:
    int32_t node          # the node it leads to in the keyed trie; -1: its resource parts follow its bytes
    int32_t key_len
    int32_t n_inline      # resource parts after its bytes
    int32_t cut           # a head's: bytes that name the bucket of its other resource parts; 0: no buckets
    int32_t parent        # a bucket's: its head's offset / 8 in ArnTrie._head_bytes; -1: a head


# One alignment of one mask, planned: its head's hash, the ARN field each literal field falls on (-1: a '*'
# field), and where the resource part starts.
ctypedef struct at_probe:
    uint64_t hash
    Py_ssize_t res
    int mask
    int32_t fields[AT_FIELDS]


# One thread's working memory: a scratch of each trie and two result buffers (each of the trie's distinct ids).
ctypedef struct at_scratch:
    void* rest
    void* keyed
    void* spanning        # NULL until an input needs the spanning trie
    Py_ssize_t spanning_bytes  # its size, once allocated
    int32_t* found        # the ids one probe matched
    int32_t* merged       # room to merge them with those found before


# Free a scratch of new_scratch() (NULL is ignored).
cdef void at_free_scratch(void* scratch) noexcept nogil
# Bytes a scratch holds beyond ArnTrie.scratch_size(): the DFA caches, which grow with use.
cdef Py_ssize_t at_grown_bytes(const void* scratch) noexcept nogil
# The DFA caches of a scratch's tries into caches (room for 3); returns how many.
cdef int at_caches(const void* scratch, const gt_cache** caches) noexcept nogil


cdef class ArnTrie:
    cdef readonly bint frozen
    cdef readonly bint indexed         # the regular patterns are keyed by their fields (else all are in rest)
    cdef list _entries                 # build phase: (pattern, id, mask or -1) per add()
    cdef GlobTrie rest                 # patterns whose first five fields are not literal or '*' each
    cdef GlobTrie keyed                # the others, under their key (see the module docstring)
    cdef GlobTrie spanning             # those with '*' fields, as written: inputs with too many alignments
    cdef bint has_plain                # some regular pattern has no '*' field
    cdef uint64_t* _slots              # the distinct heads by hash (see _TAG; 0: empty)
    cdef uint8_t* _head_bytes          # their records (at_head), 8-byte aligned
    cdef Py_ssize_t _n_head_bytes
    cdef Py_ssize_t _n_heads, _n_buckets
    cdef uint64_t _seed                # this index's own hash seed
    cdef uint32_t _slot_mask
    cdef int32_t _max_probe            # the farthest a head lies from its hash's slot
    cdef uint8_t _masks[AT_MASKS]      # the masks of '*' fields present, 0 excluded
    cdef uint8_t _groups[AT_MASKS]     # per mask: its runs of adjacent '*' fields
    cdef int _n_masks
    cdef Py_ssize_t _n_ids, _n_patterns
    cdef readonly Py_ssize_t nbytes    # memory of the frozen tries
    cdef void* _spare                  # the scratch of the Python-level match()

    cdef Py_ssize_t scratch_size(self) noexcept nogil
    cdef void* new_scratch(self) noexcept nogil
    cdef Py_ssize_t result_capacity(self) noexcept nogil
    cdef Py_ssize_t match_into(self, const unsigned char* text, Py_ssize_t n, void* scratch,
                               int32_t* out) noexcept nogil
    cdef int _set_heads(self, list records) except -1
    cdef const at_head* _find(self, const at_probe* probe, const unsigned char* text,
                              const Py_ssize_t* colon) noexcept nogil
    cdef const at_head* _find_bucket(self, const at_head* head, const unsigned char* resource,
                                     uint64_t h) noexcept nogil
    cdef bint _has_bucket(self, const at_head* head, Py_ssize_t resource_len) noexcept nogil
    cdef int32_t _offset(self, const at_head* record) noexcept nogil
    cdef const at_head* _tagged(self, uint64_t slot, uint64_t h) noexcept nogil
    cdef Py_ssize_t _own(self, at_scratch* sc, const at_head* record, const unsigned char* resource, Py_ssize_t n,
                         int32_t* out, Py_ssize_t count) noexcept nogil
    cdef Py_ssize_t _plan(self, const uint64_t* field_hashes, const Py_ssize_t* colon, Py_ssize_t extra, int mask,
                          int field, Py_ssize_t at, uint64_t h, int32_t* fields, at_probe* planned,
                          Py_ssize_t n_planned) noexcept nogil
    cdef void _fetch(self, uint64_t h) noexcept nogil
    cdef Py_ssize_t _probe(self, at_scratch* sc, const at_probe* planned, Py_ssize_t n_planned,
                           const unsigned char* text, Py_ssize_t n, const Py_ssize_t* colon, int32_t* out,
                           Py_ssize_t count) noexcept nogil
