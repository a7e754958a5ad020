# cython: language_level=3, embedsignature=True
"""Resource patterns keyed by their ARN fields, so that matching an ARN meets only the patterns of its
service, region and account.

One GlobTrie of every Resource pattern of a large store is an automaton whose active set grows with the
patterns: ``arn:aws:ec2:*:…`` keeps a '*' node alive over the rest of every EC2 ARN, beside the literal
paths of its region and of every account reached through that '*'; and the distinct ARNs of a log share
too few states for the lazy DFA to keep. Most patterns, though, spell each of the five fields before the
resource part (arn, partition, service, region, account) in full or as '*'.

Such a pattern is *regular*: at least five ':', its first field literal, the next four literal or exactly
'*'. Its *mask* is the set of its '*' fields; its *key* is a letter naming the mask, then each literal field
with its ':', then the resource part (a glob): ``arn:aws:ec2:*:123:instance/*`` is keyed
``Earn:aws:ec2:123:instance/*``. An ARN's *head* (the letter and the literal fields) is found by hash among
the patterns' heads; the few resource parts of most heads (one service, region and account) are kept with it
and matched one by one. A head with more (``arn:aws:s3:::``) parts them into *buckets* by their first bytes
(``cut``: as many as all but INLINE_PATTERNS of its parts spell before a wildcard, those few kept with the
head): a resource part can match only the parts of the bucket named by its own first bytes, found by hash in
turn. Parts too many to keep with their head or bucket go to one trie of keys, walked from the node their
head or bucket leads to.

Why probing keys is exact. A pattern's literal ':' each meet one ':' of the ARN, in order; a literal field
holds no ':', so its two colons meet adjacent ones, and the first field's meets the ARN's first. An ARN
with fewer than five ':' matches no regular pattern. A pattern without '*' fields meets the ARN's first
five: it matches exactly when its key matches the ARN keyed under mask 0 (the letter, then the ARN). A run
of '*' fields spans at least as many ARN fields as it has (a '*' matches ':' too): an *alignment* says how
many more each run spans, e in all, up to the ARN's colons minus five. The pattern matches exactly when,
for some alignment, its key matches the ARN keyed by it (the letter, the ARN fields the literal fields fall
on, each with its ':', then the rest of the ARN). An ARN with five ':' has one alignment per mask; a mask
of g runs has C(e + g, g). Past MAX_ALIGNMENTS in all, the patterns with '*' fields are matched as written in
the spanning trie instead, which is exact for any input and linear in it.

Patterns that are not regular (``arn:aws:ec2:us-*:…``, ``arn:aws:*``) stay in one trie as written, matched
against every ARN. Keying costs a few probes an ARN, more than one warm DFA match on a small set, whose
cache holds every state a log needs: freeze() keys the patterns only when they are many.
"""
cimport cython
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

from ._globtrie cimport GlobTrie, gt_cache, gt_free_scratch, gt_scratch_bytes
from ._text cimport hash_text
from ._types cimport prefetch

import os

cdef enum:
    MAX_ALIGNMENTS = 32               # alignments probed for an ARN's '*' fields before the spanning trie is used
    INLINE_PATTERNS = 8               # a head of at most this many resource parts keeps them with its bytes

# Regular patterns below which freeze() keeps one trie (the shared scale workload's 1,000 statements
# have 1,491 patterns, whose DFA holds; at 10,000 statements it no longer does).
INDEX_MIN_PATTERNS = 4096


cdef inline bint _star(int mask, int field) noexcept nogil:
    """Whether field (0 to 4) is a '*' field of mask; the first never is."""
    return field > 0 and (mask >> (field - 1)) & 1


cdef Py_ssize_t _alignments(Py_ssize_t extra, int runs) noexcept nogil:
    """C(extra + runs, runs), or MAX_ALIGNMENTS + 1 when larger: the alignments of runs over extra fields."""
    cdef Py_ssize_t count = 1
    cdef int k
    for k in range(1, runs + 1):
        count = count * (extra + k) // k  # C(extra + k, k): exact at every step
        if count > MAX_ALIGNMENTS:
            return MAX_ALIGNMENTS + 1
    return count


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _merge(int32_t* out, Py_ssize_t count, const int32_t* found, Py_ssize_t k,
                       int32_t* merged) noexcept nogil:
    """The union of the sorted ids out[:count] and found[:k] into out; returns its size."""
    cdef Py_ssize_t a = 0, b = 0, m = 0
    if k <= 0:
        return count
    if count == 0:
        memcpy(out, found, k * sizeof(int32_t))
        return k
    while a < count and b < k:
        if out[a] < found[b]:
            merged[m] = out[a]
            a += 1
        elif out[a] > found[b]:
            merged[m] = found[b]
            b += 1
        else:
            merged[m] = out[a]
            a += 1
            b += 1
        m += 1
    while a < count:
        merged[m] = out[a]
        a += 1
        m += 1
    while b < k:
        merged[m] = found[b]
        b += 1
        m += 1
    memcpy(out, merged, m * sizeof(int32_t))
    return m


cdef inline Py_ssize_t _code_point(const unsigned char* text, Py_ssize_t j, Py_ssize_t n) noexcept nogil:
    """Bytes of the code point at text[j] (as GlobTrie reads UTF-8), cut at n."""
    cdef uint8_t b = text[j]
    cdef Py_ssize_t width = 2 if 0xC0 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF7 else 1
    return min(width, n - j)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef bint _glob(const uint8_t* pattern, Py_ssize_t m, const unsigned char* text, Py_ssize_t n) noexcept nogil:
    """Whether the glob matches the whole text: '*' any code points, '?' one. Greedy: on a mismatch the
    last '*' takes one more code point (enough for '*' and '?' alone); at most m * n steps."""
    cdef Py_ssize_t i = 0, j = 0, star = -1, star_at = 0
    while j < n:
        if i < m and pattern[i] == 0x3F:  # '?'
            i += 1
            j += _code_point(text, j, n)
        elif i < m and pattern[i] == 0x2A:  # '*': matches nothing so far
            star = i
            i += 1
            star_at = j
        elif i < m and pattern[i] == text[j]:
            i += 1
            j += 1
        elif star >= 0:
            star_at += _code_point(text, star_at, n)
            i = star + 1
            j = star_at
        else:
            return False
    while i < m and pattern[i] == 0x2A:
        i += 1
    return i == m


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _match_inline(const uint8_t* globs, int32_t count, const int32_t* ids, const unsigned char* text,
                              Py_ssize_t n, int32_t* out) noexcept nogil:
    """The ids (ascending, some repeated) of the globs that match text, each a length byte and its bytes, into
    out without repeats; returns their number."""
    cdef Py_ssize_t k, found = 0
    for k in range(count):
        if _glob(globs + 1, globs[0], text, n) and (found == 0 or out[found - 1] != ids[k]):
            out[found] = ids[k]
            found += 1
        globs += 1 + globs[0]
    return found


cdef inline uint64_t _head_hash(uint64_t seed, int mask) noexcept nogil:
    """The start of a head's hash: its mask; each literal field's hash is then mixed in (_with_field)."""
    return seed ^ ((<uint64_t>mask + 1) * 0x9E3779B97F4A7C15ULL)


cdef inline uint64_t _bucket_seed(uint64_t seed, int32_t parent) noexcept nogil:
    """The seed of the hashes of a head's buckets (parent: the head's offset / 8)."""
    return seed ^ ((<uint64_t>parent + 1) * 0xD6E8FEB86659FD93ULL)


cdef inline uint64_t _with_field(uint64_t h, uint64_t field_hash) noexcept nogil:
    """A head's hash with its next literal field's: an ARN's fields are hashed once, for every mask."""
    h = (h ^ field_hash) * 0xBF58476D1CE4E5B9ULL
    return h ^ (h >> 31)


cdef uint64_t _TAG = 0xFFFFFFFF00000000ULL  # a slot holds these bits of its head's hash, and its offset / 8 + 1


cdef inline Py_ssize_t _ids_at(Py_ssize_t key_len) noexcept nogil:
    """Where a record's ids of the parts kept with it start: after its header and bytes, 4-byte aligned (read
    with the parts, not from a table of their own)."""
    return (sizeof(at_head) + key_len + 3) & ~(<Py_ssize_t>3)


def _literal(bytes glob):
    """Bytes of glob before its first wildcard."""
    star, mark = glob.find(b"*"), glob.find(b"?")
    return min(k for k in (star, mark, len(glob)) if k >= 0)


def _cut(list parts):
    """Bytes by which a head's resource parts ((id, glob) pairs) are put in buckets: the literal length of the
    (INLINE_PATTERNS + 1)-th shortest, so that at most INLINE_PATTERNS parts stay with the head; 0: none."""
    return sorted(_literal(glob) for _, glob in parts)[INLINE_PATTERNS] if len(parts) > INLINE_PATTERNS else 0


def _bucketed(bytes glob, Py_ssize_t cut):
    """Whether a part goes to a bucket: its first cut bytes are literal and end on a code point's boundary
    (the keyed trie is walked from there one code point a step)."""
    return 0 < cut <= _literal(glob) and (cut == len(glob) or not 0x80 <= glob[cut] <= 0xBF)


def _placed(GlobTrie keyed, bytes path, list parts):
    """Parts (id, glob) kept with their record if few, else None and added to the keyed trie under path."""
    if len(parts) <= INLINE_PATTERNS and all(len(glob) <= 255 for _, glob in parts):
        return parts
    for pattern_id, glob in parts:
        keyed.add((path + glob).decode("utf-8", "surrogatepass"), pattern_id)
    return None


def _regular(str pattern):
    """(mask, head, resource part) of a regular pattern, or None."""
    fields = pattern.split(":", 5)
    if len(fields) < 6:
        return None
    mask, head = 0, []
    for field in range(5):
        text = fields[field]
        if text == "*" and field:
            mask |= 1 << (field - 1)
        elif "*" in text or "?" in text:
            return None
        else:
            head.append(text + ":")
    return mask, chr(ord("A") + mask) + "".join(head), fields[5]


cdef void at_free_scratch(void* scratch) noexcept nogil:
    cdef at_scratch* sc = <at_scratch*>scratch
    if sc == NULL:
        return
    gt_free_scratch(sc.rest)
    gt_free_scratch(sc.keyed)
    gt_free_scratch(sc.spanning)
    free(sc.found)
    free(sc.merged)
    free(sc)


cdef Py_ssize_t at_grown_bytes(const void* scratch) noexcept nogil:
    cdef const at_scratch* sc = <const at_scratch*>scratch
    cdef void* parts[3]
    cdef Py_ssize_t total = sc.spanning_bytes
    cdef int k
    parts[0], parts[1], parts[2] = sc.rest, sc.keyed, sc.spanning
    for k in range(3):
        if parts[k] != NULL:
            total += gt_scratch_bytes(parts[k])
    return total


cdef int at_caches(const void* scratch, const gt_cache** caches) noexcept nogil:
    cdef const at_scratch* sc = <const at_scratch*>scratch
    cdef void* parts[3]
    cdef int k, n = 0
    parts[0], parts[1], parts[2] = sc.rest, sc.keyed, sc.spanning
    for k in range(3):
        if parts[k] != NULL:
            caches[n] = <const gt_cache*>parts[k]
            n += 1
    return n


cdef class ArnTrie:
    """Index of Resource patterns (case-sensitive IAM globs); after freeze(), finds all patterns matching an
    ARN, as one GlobTrie of them would."""

    def __cinit__(self):
        self._entries = []

    def __dealloc__(self):
        at_free_scratch(self._spare)
        free(self._slots)
        free(self._head_bytes)

    def add(self, str pattern not None, int32_t pattern_id):
        """Index pattern ('*' and '?' are wildcards) under pattern_id; ValueError after freeze()."""
        if self.frozen:
            raise ValueError("ArnTrie is frozen; add() must come before freeze()")
        self._entries.append((pattern, pattern_id, _regular(pattern)))

    def freeze(self, index=None, **geometry):
        """Build the tries; later calls do nothing. ``index``: key the regular patterns (True), keep one trie
        (False), or decide by their number (None). ``geometry``: the DFA cache sizes of every trie
        (``GlobTrie.freeze``)."""
        if self.frozen:
            return
        regular = sum(found is not None for _, _, found in self._entries)
        self.indexed = regular >= INDEX_MIN_PATTERNS if index is None else bool(index)
        rest = GlobTrie(False)
        keyed = GlobTrie(False) if self.indexed else None
        spanning = GlobTrie(False) if self.indexed else None
        masks, by_head = set(), {}
        for pattern, pattern_id, found in self._entries:
            if not self.indexed or found is None:
                rest.add(pattern, pattern_id)
                continue
            mask, head, resource = found
            by_head.setdefault(head, set()).add((pattern_id, resource))
            if mask:
                spanning.add(pattern, pattern_id)
                masks.add(mask)
            else:
                self.has_plain = True
        records = []  # (bytes, its head's index or -1, cut, parts kept with it or None, its keyed trie path)
        for head, globs in by_head.items():
            encoded = [(pattern_id, resource.encode("utf-8", "surrogatepass"))
                       for pattern_id, resource in sorted(globs)]
            cut = _cut(encoded)
            key = head.encode("utf-8", "surrogatepass")
            parent = len(records)
            kept = [part for part in encoded if not _bucketed(part[1], cut)]
            records.append((key, -1, cut, _placed(keyed, key, kept), key))
            bucketed = {}
            for part in encoded:
                if _bucketed(part[1], cut):
                    bucketed.setdefault(part[1][:cut], []).append(part)
            path = bytes([key[0] + 0x20]) + key[1:]  # the letter in lower case: apart from the heads' paths
            for start, parts in bucketed.items():
                records.append((start, parent, 0, _placed(keyed, path, parts), path + start))
        tries = [trie for trie in (rest, keyed, spanning) if trie is not None]
        for trie in tries:
            trie.freeze(**geometry)
        self.rest, self.keyed, self.spanning = rest, keyed, spanning
        if self.indexed:
            self._set_heads(records)
        self._n_masks = len(masks)
        for k, mask in enumerate(sorted(masks)):
            self._masks[k] = mask
            self._groups[mask] = sum(_star(mask, field) and not _star(mask, field - 1) for field in range(1, 5))
        self._n_ids = len({pattern_id for _, pattern_id, _ in self._entries})
        self._n_patterns = len(self._entries)
        self.nbytes = (sum(trie.nbytes for trie in tries) + (self._slot_mask + 1) * sizeof(uint64_t)
                       + self._n_head_bytes)
        self._entries = None
        self.frozen = True

    cdef int _set_heads(self, list records) except -1:
        """The hash table of the heads and their buckets (``freeze``'s records), each with its node in the frozen
        keyed trie or the parts kept with it."""
        cdef Py_ssize_t n = len(records), slots = 2, k, at = 0, probe
        cdef uint64_t h
        cdef bytes key, glob, field
        cdef at_head* entry
        cdef uint8_t* place
        cdef int32_t* ids
        cdef list offsets = []
        while slots < 2 * n:
            slots *= 2
        sizes = [(_ids_at(len(key)) + sum(sizeof(int32_t) + len(glob) + 1 for _, glob in parts or ()) + 7) & ~7
                 for key, _, _, parts, _ in records]  # each a multiple of 8
        self._n_head_bytes = sum(sizes)
        self._slots = <uint64_t*>calloc(slots, sizeof(uint64_t))
        self._head_bytes = <uint8_t*>calloc(max(1, self._n_head_bytes), 1)
        if self._slots == NULL or self._head_bytes == NULL:
            raise MemoryError()
        self._seed = int.from_bytes(os.urandom(8), "little")
        self._slot_mask = <uint32_t>(slots - 1)
        self._n_buckets = sum(parent >= 0 for _, parent, _, _, _ in records)
        self._n_heads = n - self._n_buckets
        for k, (key, parent, cut, parts, path) in enumerate(records):
            offsets.append(at // 8)
            entry = <at_head*>(self._head_bytes + at)
            entry.key_len = <int32_t>len(key)
            entry.cut = cut
            entry.parent = offsets[parent] if parent >= 0 else -1
            place = self._head_bytes + at + sizeof(at_head)
            memcpy(place, <const char*>key, len(key))
            entry.n_inline = 0
            if parts is None:
                entry.node = self.keyed.node_of(path, len(path))
                if entry.node < 0:
                    raise AssertionError("a head or bucket is not a path of the keyed trie")
            else:
                entry.node = -1
                ids = <int32_t*>(self._head_bytes + at + _ids_at(len(key)))
                place = <uint8_t*>(ids + len(parts))
                for pattern_id, glob in parts:
                    ids[0] = pattern_id
                    ids += 1
                    place[0] = len(glob)
                    memcpy(place + 1, <const char*>glob, len(glob))
                    place += 1 + len(glob)
                entry.n_inline = <int32_t>len(parts)
            if parent >= 0:
                h = hash_text(key, len(key), _bucket_seed(self._seed, entry.parent))
            else:
                h = _head_hash(self._seed, key[0] - 0x41)  # the letter names the mask
                for field in key[1:-1].split(b":"):  # the literal fields, each followed by its ':'
                    h = _with_field(h, hash_text(field, len(field), self._seed))
            probe = 0
            while self._slots[(h + probe) & self._slot_mask]:
                probe += 1
            self._slots[(h + probe) & self._slot_mask] = (h & _TAG) | <uint64_t>(at // 8 + 1)
            self._max_probe = max(self._max_probe, <int32_t>probe)
            at += sizes[k]
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef const at_head* _find(self, const at_probe* planned, const unsigned char* text,
                              const Py_ssize_t* colon) noexcept nogil:
        """The head of a planned alignment (the letter of its mask, then the ARN fields its literal fields fall
        on, each with its ':'), NULL if no pattern has it."""
        cdef uint64_t slot, h = planned.hash
        cdef int32_t probe
        cdef const at_head* entry
        cdef const uint8_t* key
        cdef Py_ssize_t used, start, stop
        cdef int field
        for probe in range(self._max_probe + 1):
            slot = self._slots[(h + probe) & self._slot_mask]
            if slot == 0:
                return NULL
            entry = self._tagged(slot, h)
            if entry == NULL:
                continue
            key = <const uint8_t*>entry + sizeof(at_head)
            if entry.parent >= 0 or key[0] != 0x41 + planned.mask:
                continue
            used = 1
            for field in range(AT_FIELDS):
                if planned.fields[field] < 0:
                    continue
                start = colon[planned.fields[field] - 1] + 1 if planned.fields[field] else 0
                stop = colon[planned.fields[field]] + 1
                if used + stop - start > entry.key_len or memcmp(key + used, text + start, stop - start) != 0:
                    break
                used += stop - start
            else:
                if used == entry.key_len:
                    return entry
        return NULL

    # ------------------------------------------------------------------ C API (nogil)

    cdef Py_ssize_t scratch_size(self) noexcept nogil:
        """Bytes of a new scratch (its caches grow with use: see at_grown_bytes)."""
        cdef Py_ssize_t total = (sizeof(at_scratch) + self.rest.scratch_size()
                                 + 2 * max(1, self._n_ids) * sizeof(int32_t))
        if self.indexed:
            total += self.keyed.scratch_size()
        return total

    cdef void* new_scratch(self) noexcept nogil:
        """Working memory for one thread's matches (free with at_free_scratch); NULL when out of memory."""
        cdef at_scratch* sc = <at_scratch*>calloc(1, sizeof(at_scratch))
        if sc == NULL:
            return NULL
        sc.rest = calloc(1, self.rest.scratch_size())
        if self.indexed:
            sc.keyed = calloc(1, self.keyed.scratch_size())
        sc.found = <int32_t*>malloc(max(1, self._n_ids) * sizeof(int32_t))
        sc.merged = <int32_t*>malloc(max(1, self._n_ids) * sizeof(int32_t))
        if sc.rest == NULL or (self.indexed and sc.keyed == NULL) or sc.found == NULL or sc.merged == NULL:
            at_free_scratch(sc)
            return NULL
        return sc

    cdef Py_ssize_t result_capacity(self) noexcept nogil:
        """Slots the out buffer of match_into() needs: the distinct ids."""
        return self._n_ids

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t match_into(self, const unsigned char* text, Py_ssize_t n, void* scratch,
                               int32_t* out) noexcept nogil:
        """Sorted unique ids of the patterns matching the UTF-8 text into out; -1 if not frozen or out of
        memory."""
        if not self.frozen:
            return -1
        cdef at_scratch* sc = <at_scratch*>scratch
        cdef Py_ssize_t count = 0, m = 0, i, probes = 0, extra, k, start
        cdef Py_ssize_t colon[AT_FIELDS + MAX_ALIGNMENTS]  # enough for every alignment that is probed
        cdef uint64_t field_hashes[AT_FIELDS + MAX_ALIGNMENTS]
        if self.rest.result_capacity():
            count = self.rest.match_into(text, n, sc.rest, out)
        if not self.indexed:
            return count
        for i in range(n):
            if text[i] == 0x3A:  # ':'
                if m < AT_FIELDS + MAX_ALIGNMENTS:
                    colon[m] = i
                m += 1
        if m < AT_FIELDS:
            return count
        extra = m - AT_FIELDS
        for i in range(self._n_masks):
            probes += _alignments(extra, self._groups[self._masks[i]])
        # The ARN fields a literal field may fall on, each hashed once (those of the first five alone when only
        # mask 0 is probed; with a mask probed, extra is below MAX_ALIGNMENTS).
        cdef Py_ssize_t n_fields = m if probes <= MAX_ALIGNMENTS and self._n_masks else AT_FIELDS
        for i in range(n_fields):
            start = colon[i - 1] + 1 if i else 0
            field_hashes[i] = hash_text(<const char*>text + start, colon[i] - start, self._seed)
        # Every head first (hashed, its slot fetched), then every slot (its record fetched), then the matches:
        # the memory reads of the probes overlap.
        cdef at_probe planned[MAX_ALIGNMENTS + 1]
        cdef int32_t fields[AT_FIELDS]
        cdef Py_ssize_t n_planned = 0
        if self.has_plain:
            n_planned = self._plan(field_hashes, colon, extra, 0, 0, 0, _head_hash(self._seed, 0), fields, planned,
                                   n_planned)
        if probes <= MAX_ALIGNMENTS:
            for i in range(self._n_masks):
                n_planned = self._plan(field_hashes, colon, extra, self._masks[i], 0, 0,
                                       _head_hash(self._seed, self._masks[i]), fields, planned, n_planned)
        count = self._probe(sc, planned, n_planned, text, n, colon, out, count)
        if probes <= MAX_ALIGNMENTS:
            return count
        if sc.spanning == NULL:
            sc.spanning = calloc(1, self.spanning.scratch_size())
            if sc.spanning == NULL:
                return -1
            sc.spanning_bytes = self.spanning.scratch_size()
        k = self.spanning.match_into(text, n, sc.spanning, sc.found)
        return _merge(out, count, sc.found, k, sc.merged)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _plan(self, const uint64_t* field_hashes, const Py_ssize_t* colon, Py_ssize_t extra, int mask,
                          int field, Py_ssize_t at, uint64_t h, int32_t* fields, at_probe* planned,
                          Py_ssize_t n_planned) noexcept nogil:
        """Plan the alignments of mask from its field `field` on, which falls on the ARN's field `at` (h: the
        head's hash so far, fields: the ARN fields of the literal fields before it): each is hashed, its slot
        fetched, and added to planned; returns their new number."""
        cdef Py_ssize_t span
        cdef at_probe* probe
        cdef int end
        if field == AT_FIELDS:  # the head is whole; the resource part is the rest of the ARN
            probe = &planned[n_planned]
            probe.hash = h
            probe.res = colon[at - 1] + 1
            probe.mask = mask
            memcpy(probe.fields, fields, sizeof(probe.fields))
            prefetch(&self._slots[probe.hash & self._slot_mask])
            return n_planned + 1
        if not _star(mask, field):  # a literal field: one ARN field, with its ':'
            fields[field] = <int32_t>at
            return self._plan(field_hashes, colon, extra, mask, field + 1, at + 1, _with_field(h, field_hashes[at]),
                              fields, planned, n_planned)
        end = field
        while end < AT_FIELDS and _star(mask, end):
            fields[end] = -1
            end += 1
        # The run spans end - field ARN fields, plus any of the extra ones not spanned before it.
        for span in range(end - field, end - at + extra + 1):
            n_planned = self._plan(field_hashes, colon, extra, mask, end, at + span, h, fields, planned, n_planned)
        return n_planned

    cdef inline const at_head* _tagged(self, uint64_t slot, uint64_t h) noexcept nogil:
        """The record a slot holds if its tag is h's, else NULL (an empty slot too)."""
        if slot == 0 or (slot ^ h) & _TAG:
            return NULL
        return <const at_head*>(self._head_bytes + 8 * ((slot & ~_TAG) - 1))

    cdef void _fetch(self, uint64_t h) noexcept nogil:
        """Start reading the record of the head in h's slot, if its tag is h's."""
        cdef const uint8_t* record = <const uint8_t*>self._tagged(self._slots[h & self._slot_mask], h)
        if record != NULL:
            prefetch(record)
            prefetch(record + 64)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _probe(self, at_scratch* sc, const at_probe* planned, Py_ssize_t n_planned,
                           const unsigned char* text, Py_ssize_t n, const Py_ssize_t* colon, int32_t* out,
                           Py_ssize_t count) noexcept nogil:
        """Match the resource part of each planned alignment against its head's parts, then its bucket's; merge
        their ids into out[:count] and return the new count. In stages, so that the memory reads of one stage
        overlap: every head's record, then every bucket's slot while the heads' parts are matched, then every
        bucket's record."""
        cdef const at_head* heads[MAX_ALIGNMENTS + 1]
        cdef Py_ssize_t res[MAX_ALIGNMENTS + 1]
        cdef uint64_t bucket_hashes[MAX_ALIGNMENTS + 1]
        cdef Py_ssize_t i, found = 0
        cdef const at_head* bucket
        for i in range(n_planned):
            self._fetch(planned[i].hash)
        for i in range(n_planned):
            heads[found] = self._find(&planned[i], text, colon)
            if heads[found] == NULL:
                continue
            res[found] = planned[i].res
            if self._has_bucket(heads[found], n - res[found]):
                bucket_hashes[found] = hash_text(<const char*>text + res[found], heads[found].cut,
                                                 _bucket_seed(self._seed, self._offset(heads[found])))
                prefetch(&self._slots[bucket_hashes[found] & self._slot_mask])
            found += 1
        for i in range(found):
            count = self._own(sc, heads[i], text + res[i], n - res[i], out, count)
        for i in range(found):
            if self._has_bucket(heads[i], n - res[i]):
                self._fetch(bucket_hashes[i])
        for i in range(found):
            if self._has_bucket(heads[i], n - res[i]):
                bucket = self._find_bucket(heads[i], text + res[i], bucket_hashes[i])
                if bucket != NULL:
                    count = self._own(sc, bucket, text + res[i], n - res[i], out, count)
        return count

    cdef bint _has_bucket(self, const at_head* head, Py_ssize_t resource_len) noexcept nogil:
        """Whether a resource part of that length may fall in a bucket of the head."""
        return head.cut != 0 and resource_len >= head.cut

    cdef int32_t _offset(self, const at_head* record) noexcept nogil:
        """A record's offset / 8 in _head_bytes (what a bucket names its head by)."""
        return <int32_t>((<const uint8_t*>record - self._head_bytes) // 8)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef const at_head* _find_bucket(self, const at_head* head, const unsigned char* resource,
                                     uint64_t h) noexcept nogil:
        """The bucket of a head that the first head.cut bytes of a resource part name (their hash h), NULL if
        none."""
        cdef int32_t parent = self._offset(head)
        cdef uint64_t slot
        cdef int32_t probe
        cdef const at_head* entry
        for probe in range(self._max_probe + 1):
            slot = self._slots[(h + probe) & self._slot_mask]
            if slot == 0:
                return NULL
            entry = self._tagged(slot, h)
            if entry == NULL:
                continue
            if entry.parent == parent and entry.key_len == head.cut \
                    and memcmp(<const uint8_t*>entry + sizeof(at_head), resource, head.cut) == 0:
                return entry
        return NULL

    cdef Py_ssize_t _own(self, at_scratch* sc, const at_head* record, const unsigned char* resource, Py_ssize_t n,
                         int32_t* out, Py_ssize_t count) noexcept nogil:
        """Merge into out[:count] the ids of a head's or a bucket's own parts that match the resource part;
        returns the new count."""
        cdef Py_ssize_t k, skip
        cdef const int32_t* ids
        if record.node >= 0:
            skip = record.key_len if record.parent >= 0 else 0  # a bucket's trie path spells its first bytes
            k = self.keyed.match_from(record.node, resource + skip, n - skip, sc.keyed, sc.found)
        else:
            ids = <const int32_t*>(<const uint8_t*>record + _ids_at(record.key_len))
            k = _match_inline(<const uint8_t*>(ids + record.n_inline), record.n_inline, ids, resource, n, sc.found)
        return _merge(out, count, sc.found, k, sc.merged)

    # ------------------------------------------------------------------ Python API

    def match(self, str text not None):
        """Sorted list of the distinct ids of all patterns matching text (ValueError if not frozen)."""
        if not self.frozen:
            raise ValueError("ArnTrie must be frozen with freeze() before matching")
        cdef Py_ssize_t n, count, k
        cdef const unsigned char* data
        cdef bytes encoded
        try:
            data = <const unsigned char*>PyUnicode_AsUTF8AndSize(text, &n)
        except UnicodeEncodeError:  # lone surrogates: encoded as CPython does internally
            encoded = text.encode("utf-8", "surrogatepass")
            data = encoded
            n = len(encoded)
        if self._spare == NULL:
            self._spare = self.new_scratch()
        cdef int32_t* out = <int32_t*>malloc(max(1, self._n_ids) * sizeof(int32_t))
        try:
            if self._spare == NULL or out == NULL:
                raise MemoryError()
            count = self.match_into(data, n, self._spare, out)
            if count < 0:
                raise MemoryError()
            return [out[k] for k in range(count)]
        finally:
            free(out)

    def get_stats(self):
        """Patterns, distinct ids, whether they are keyed, bytes of the frozen tries and of a new scratch, and
        each trie's own stats (``GlobTrie.get_stats``; their DFA counters are those of match())."""
        if not self.frozen:
            return {"patterns": len(self._entries), "frozen": False}
        tries = {"rest": self.rest, "keyed": self.keyed, "spanning": self.spanning}
        return {"patterns": self._n_patterns,
                "ids": self._n_ids, "indexed": bool(self.indexed), "heads": self._n_heads, "buckets": self._n_buckets,
                "memory_bytes": self.nbytes,
                "scratch_bytes": self.scratch_size(), "frozen": True,
                **{name: trie.get_stats() for name, trie in tries.items() if trie is not None}}
