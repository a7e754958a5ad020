# cython: language_level=3, embedsignature=True
"""Wildcard trie: every IAM glob pattern matching a string, in one linear pass.

IAM patterns use ``*`` (any run of characters, ``:`` and ``/`` included) and ``?`` (exactly
one character). Thousands of them are merged into one trie whose edges are UTF-8 bytes plus a
``?`` edge and a ``*`` edge per node; the trie is then simulated as an NFA over the input.

Matching works on the UTF-8 encoding of the input, one code point per step: literal edges
consume the bytes of that code point, while ``?`` and ``*`` consume the whole code point, so
``?`` matches exactly one Unicode code point (lone surrogates count as one, like in ``str``).
With ``ignore_case`` only ASCII letters are folded, in patterns and inputs alike (IAM actions
are ASCII); other characters must match exactly.

Each step keeps the set of active nodes, deduplicated with a generation stamp per node, so a
step costs O(active nodes) <= O(nodes) and a match O(len(input) * active nodes), whatever the
patterns (no backtracking). A node entered through ``*`` stays active on every step; entering a
node also enters its ``*`` child (the star matching nothing). A ``*`` node that ends a pattern
accepts as soon as it is reached (it stays active to the end); if nothing follows it (a
"sink") it also leaves the active set, so common ``prefix*`` patterns cost nothing afterwards.

Lifecycle: ``add()`` patterns, ``freeze()`` into flat C arrays, then match. A frozen trie is
immutable; every match uses its own scratch memory, so threads can match concurrently (the
Python methods release the GIL while matching long inputs).
"""
cimport cython
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort

import enum


class Wildcard(enum.Enum):
    """Wildcard token for add() when a pattern is a token sequence (str tokens are literal)."""

    STAR = "*"
    QMARK = "?"


STAR = Wildcard.STAR
QMARK = Wildcard.QMARK

cdef dict _WILDCARD_CHARS = {"*": STAR, "?": QMARK}

cdef enum:
    _TOK_STAR = -1
    _TOK_QMARK = -2
    # Python-level calls release the GIL only for inputs this long: releasing and re-taking it
    # costs about as much as matching a short action name.
    _NOGIL_MIN_BYTES = 256

# Input byte translation tables: identity, and ASCII upper -> lower case.
cdef uint8_t _SAME[256]
cdef uint8_t _LOWER[256]
# Length of the UTF-8 sequence introduced by a byte (1 for stray continuation/invalid bytes).
cdef uint8_t _SEQ_LEN[256]


cdef void _init_tables() noexcept:
    cdef int b
    for b in range(256):
        _SAME[b] = b
        _LOWER[b] = b + 32 if 65 <= b <= 90 else b
        _SEQ_LEN[b] = 2 if 0xC0 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF7 else 1


_init_tables()


# State of one _run() call, shared with its inline helpers.
ctypedef struct gt_run:
    const gt_node* nodes
    const int32_t* acc
    uint64_t* node_stamp
    uint64_t* id_stamp
    uint64_t call_gen        # stamps ids emitted by this call (and bounds this call's node stamps)
    uint64_t gen             # stamps nodes entered for the current step
    int32_t* out             # NULL: only decide whether anything matches
    Py_ssize_t n_out


cdef inline void _emit(gt_run* r, const gt_node* nd) noexcept nogil:
    """Record the dense ids accepted by a node, once each per call."""
    cdef uint32_t a
    cdef int32_t d
    for a in range(nd.acc_start, nd.acc_start + nd.acc_count):
        d = r.acc[a]
        if r.id_stamp[d] != r.call_gen:
            r.id_stamp[d] = r.call_gen
            r.out[r.n_out] = d
            r.n_out += 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _enter(gt_run* r, int32_t t, uint32_t* nxt, Py_ssize_t n_nxt) noexcept nogil:
    """Make node t active for the next step (with its epsilon '*' child): push it on nxt.

    Returns the new length of nxt, or -1 when only a yes/no answer is wanted (r.out is NULL)
    and a match is now certain.
    """
    cdef const gt_node* nd
    cdef uint64_t stamp
    while t >= 0:
        nd = &r.nodes[t]
        stamp = r.node_stamp[t]
        if stamp == r.gen or (nd.sink and stamp > r.call_gen):
            break
        r.node_stamp[t] = r.gen
        if nd.loop and nd.acc_count and stamp <= r.call_gen:
            # A '*' node that accepts stays active to the end, so its ids match: report them
            # on first entry (allows the early exit of match_any).
            if r.out == NULL:
                return -1
            _emit(r, nd)
        if nd.sink:
            break  # nothing more can happen in it: keep it out of the active set
        nxt[n_nxt] = <uint32_t>t
        n_nxt += 1
        t = nd.star  # a '*' node has no '*' child (stars are collapsed), so this loops at most twice
    return n_nxt


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline int32_t _child(const gt_node* nd, const uint8_t* edge_bytes, const int32_t* edge_targets,
                           uint8_t b) noexcept nogil:
    """Target of the byte edge b out of nd (binary search over its sorted edges), or -1."""
    cdef uint32_t lo = nd.edge_start
    cdef uint32_t hi = lo + nd.n_edges
    cdef uint32_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if edge_bytes[mid] < b:
            lo = mid + 1
        elif edge_bytes[mid] > b:
            hi = mid
        else:
            return edge_targets[mid]
    return -1


cdef int _cmp_int32(const void* a, const void* b) noexcept nogil:
    cdef int32_t x = (<const int32_t*>a)[0]
    cdef int32_t y = (<const int32_t*>b)[0]
    return (x > y) - (x < y)


cdef class GlobTrie:
    """Index of IAM glob patterns; after freeze(), finds all patterns matching a string.

    GlobTrie(ignore_case) -- ignore_case folds ASCII letters (True for actions, False for ARNs).
    """

    def __cinit__(self, bint ignore_case):
        self.ignore_case = ignore_case
        if ignore_case:
            self._fold = _LOWER
        else:
            self._fold = _SAME
        self._b_children = [{}]
        self._b_qmark = [-1]
        self._b_star = [-1]
        self._b_loop = [False]
        self._b_acc = [[]]

    def __dealloc__(self):
        cdef int i
        self._free_arrays()
        for i in range(self._n_spare):
            free(self._spare[i])

    cdef void _free_arrays(self) noexcept:
        free(self._nodes)
        free(self._edge_bytes)
        free(self._edge_targets)
        free(self._acc)
        free(self._ids)
        self._nodes = NULL
        self._edge_bytes = NULL
        self._edge_targets = NULL
        self._acc = NULL
        self._ids = NULL

    # ------------------------------------------------------------------ build phase

    cdef list _tokens(self, pattern):
        """Pattern -> list of literal bytes (folded if ignore_case) and _TOK_* codes, stars collapsed."""
        cdef list toks = []
        items = [_WILDCARD_CHARS.get(c, c) for c in pattern] if isinstance(pattern, str) else pattern
        for item in items:
            if item is STAR:
                if not toks or toks[-1] != _TOK_STAR:  # '**' == '*'; keeps star nodes star-free
                    toks.append(_TOK_STAR)
            elif item is QMARK:
                toks.append(_TOK_QMARK)
            elif isinstance(item, str):
                lit = (<str>item).encode("utf-8", "surrogatepass")
                toks.extend(lit.lower() if self.ignore_case else lit)  # bytes.lower(): ASCII only
            else:
                raise TypeError(f"pattern tokens must be str, STAR or QMARK, not {type(item).__name__}")
        return toks

    cdef Py_ssize_t _new_node(self, bint loop):
        self._b_children.append({})
        self._b_qmark.append(-1)
        self._b_star.append(-1)
        self._b_loop.append(loop)
        self._b_acc.append([])
        return len(self._b_children) - 1

    def add(self, pattern, int32_t pattern_id):
        """Index pattern under pattern_id.

        pattern is a str ('*' and '?' are wildcards) or a sequence of tokens: str literals
        (matched literally, '*' and '?' included) and the STAR / QMARK constants. Ids may be
        shared by patterns and a pattern may be added under several ids.
        Raises ValueError after freeze().
        """
        if self.frozen:
            raise ValueError("GlobTrie is frozen; add() must come before freeze()")
        cdef Py_ssize_t node = 0, nxt
        cdef dict children
        for tok in self._tokens(pattern):  # tokenize first: a bad token leaves the trie unchanged
            if tok >= 0:
                children = self._b_children[node]
                nxt = children.get(tok, -1)
                if nxt < 0:
                    nxt = children[tok] = self._new_node(False)
            elif tok == _TOK_QMARK:
                nxt = self._b_qmark[node]
                if nxt < 0:
                    nxt = self._b_qmark[node] = self._new_node(False)
            else:
                nxt = self._b_star[node]
                if nxt < 0:
                    nxt = self._b_star[node] = self._new_node(True)
            node = nxt
        self._b_acc[node].append(pattern_id)
        self._n_patterns += 1

    def freeze(self):
        """Compile the trie into flat C arrays and drop the build state; later calls do nothing."""
        if self.frozen:
            return
        cdef Py_ssize_t n_nodes = len(self._b_children)
        accepts = [sorted(set(ids)) for ids in self._b_acc]
        ids = sorted({i for node_ids in accepts for i in node_ids})
        dense = {pid: k for k, pid in enumerate(ids)}
        self._n_nodes = n_nodes
        self._n_edges = sum(len(c) for c in self._b_children)
        self._n_acc = sum(len(a) for a in accepts)
        self._n_ids = len(ids)
        # +1: malloc(0) may return NULL, which would read as an allocation failure.
        self._nodes = <gt_node*>calloc(n_nodes, sizeof(gt_node))
        self._edge_bytes = <uint8_t*>malloc(self._n_edges + 1)
        self._edge_targets = <int32_t*>malloc((self._n_edges + 1) * sizeof(int32_t))
        self._acc = <int32_t*>malloc((self._n_acc + 1) * sizeof(int32_t))
        self._ids = <int32_t*>malloc((self._n_ids + 1) * sizeof(int32_t))
        if not (self._nodes and self._edge_bytes and self._edge_targets and self._acc and self._ids):
            self._free_arrays()  # stay unfrozen and consistent; freeze() may be retried
            raise MemoryError()
        cdef Py_ssize_t i, e = 0, a = 0
        cdef gt_node* nd
        for i in range(self._n_ids):
            self._ids[i] = ids[i]
        for i in range(n_nodes):
            nd = &self._nodes[i]
            nd.edge_start = e
            nd.n_edges = len(self._b_children[i])
            for byte, target in sorted(self._b_children[i].items()):
                self._edge_bytes[e] = byte
                self._edge_targets[e] = target
                e += 1
            nd.qmark = self._b_qmark[i]
            nd.star = self._b_star[i]
            nd.loop = self._b_loop[i]
            nd.sink = nd.loop and nd.n_edges == 0 and nd.qmark < 0
            nd.acc_start = a
            nd.acc_count = len(accepts[i])
            for pid in accepts[i]:
                self._acc[a] = dense[pid]
                a += 1
        self._b_children = self._b_qmark = self._b_star = self._b_loop = self._b_acc = None
        self.frozen = True

    # ------------------------------------------------------------------ C API (nogil)

    cdef Py_ssize_t scratch_size(self) noexcept nogil:
        """Bytes of scratch for one match at a time; must be zero-filled before its first use.

        Layout: a uint64 generation counter, a uint64 stamp per node and per distinct id
        (64 bits never wrap, so the scratch is never cleared again), then two uint32 active-node
        lists of one slot per node (a node is active at most once per step).
        """
        return (1 + self._n_nodes + self._n_ids) * sizeof(uint64_t) + 2 * self._n_nodes * sizeof(uint32_t)

    cdef Py_ssize_t result_capacity(self) noexcept nogil:
        """Slots the out buffer of match_into() needs: each distinct id is written at most once."""
        return self._n_ids

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _run(self, const unsigned char* text, Py_ssize_t n, void* scratch,
                         int32_t* out) noexcept nogil:
        """Simulate the NFA over text; emit dense ids into out (unsorted) and return their count.

        With out == NULL, return 1 as soon as a match is certain, else 0.
        """
        cdef uint64_t* counter = <uint64_t*>scratch
        cdef gt_run r
        r.nodes = self._nodes
        r.acc = self._acc
        r.node_stamp = counter + 1
        r.id_stamp = r.node_stamp + self._n_nodes
        r.out = out
        r.n_out = 0
        r.call_gen = counter[0] + 1
        r.gen = r.call_gen + 1
        cdef uint32_t* cur = <uint32_t*>(r.id_stamp + self._n_ids)
        cdef uint32_t* nxt = cur + self._n_nodes
        cdef uint32_t* swap
        cdef const gt_node* nodes = self._nodes
        cdef const uint8_t* fold = self._fold
        cdef const uint8_t* edge_bytes = self._edge_bytes
        cdef const int32_t* edge_targets = self._edge_targets
        cdef const gt_node* nd
        cdef Py_ssize_t i = 0, j, q, n_cur, n_nxt, width
        cdef uint32_t s
        cdef int32_t t

        n_nxt = _enter(&r, 0, nxt, 0)
        while i < n and n_nxt > 0:
            swap = cur
            cur = nxt
            nxt = swap
            n_cur = n_nxt
            n_nxt = 0
            r.gen += 1
            width = _SEQ_LEN[text[i]]
            if width > n - i:
                width = n - i
            for j in range(n_cur):
                s = cur[j]
                nd = &nodes[s]
                if nd.loop:
                    n_nxt = _enter(&r, <int32_t>s, nxt, n_nxt)
                if nd.qmark >= 0 and n_nxt >= 0:
                    n_nxt = _enter(&r, nd.qmark, nxt, n_nxt)
                t = <int32_t>s
                for q in range(width):  # literal edges spell the code point byte by byte
                    t = _child(&nodes[t], edge_bytes, edge_targets, fold[text[i + q]])
                    if t < 0:
                        break
                if t >= 0 and n_nxt >= 0:
                    n_nxt = _enter(&r, t, nxt, n_nxt)
                if n_nxt < 0:
                    break
            i += width
        counter[0] = r.gen  # later calls with this scratch start above every stamp used here
        if n_nxt < 0:
            return 1
        # Input consumed (or no node left): the active nodes are the end states. Accepting
        # '*' nodes were reported by _enter() already.
        for j in range(n_nxt):
            nd = &nodes[nxt[j]]
            if nd.acc_count and not nd.loop:
                if out == NULL:
                    return 1
                _emit(&r, nd)
        return r.n_out if out != NULL else 0

    cdef Py_ssize_t match_into(self, const unsigned char* text, Py_ssize_t n, void* scratch,
                               int32_t* out) noexcept nogil:
        """Sorted unique ids matching text into out (result_capacity() slots); -1 if not frozen."""
        if not self.frozen:
            return -1
        cdef Py_ssize_t count = self._run(text, n, scratch, out)
        cdef Py_ssize_t k, m
        cdef int32_t v
        if count > 16:
            qsort(out, count, sizeof(int32_t), _cmp_int32)  # dense order == id order
        else:  # insertion sort: cheaper than qsort's indirect calls for the usual few results
            for k in range(1, count):
                v = out[k]
                m = k
                while m > 0 and out[m - 1] > v:
                    out[m] = out[m - 1]
                    m -= 1
                out[m] = v
        for k in range(count):
            out[k] = self._ids[out[k]]
        return count

    cdef int match_any(self, const unsigned char* text, Py_ssize_t n, void* scratch) noexcept nogil:
        """1 if some pattern matches text, 0 if none, -1 if not frozen."""
        if not self.frozen:
            return -1
        return <int>self._run(text, n, scratch, NULL)

    # ------------------------------------------------------------------ Python API

    cdef void* _borrow(self) except NULL:
        """Scratch plus result buffer for one call; reuses a spare so calls rarely allocate.

        Runs with the GIL held, which serializes access to the spare list.
        """
        if self._n_spare:
            self._n_spare -= 1
            return self._spare[self._n_spare]
        cdef void* buf = calloc(1, self.scratch_size() + (self._n_ids + 1) * sizeof(int32_t))
        if buf == NULL:
            raise MemoryError()
        return buf

    cdef void _give_back(self, void* buf) noexcept:
        if self._n_spare < GT_SPARE_SLOTS:
            self._spare[self._n_spare] = buf
            self._n_spare += 1
        else:
            free(buf)

    cdef object _search(self, str text, bint want_ids):
        if not self.frozen:
            raise ValueError("GlobTrie must be frozen with freeze() before matching")
        cdef Py_ssize_t n, count, k
        cdef const unsigned char* data
        cdef bytes encoded
        try:
            # Zero-copy for ASCII strings; CPython caches the UTF-8 of others on the str.
            data = <const unsigned char*>PyUnicode_AsUTF8AndSize(text, &n)
        except UnicodeEncodeError:  # lone surrogates: encode them as CPython would internally
            encoded = text.encode("utf-8", "surrogatepass")
            data = encoded
            n = len(encoded)
        cdef void* buf = self._borrow()
        cdef int32_t* out = <int32_t*>(<char*>buf + self.scratch_size())
        try:
            if n < _NOGIL_MIN_BYTES:
                count = self.match_into(data, n, buf, out) if want_ids else self.match_any(data, n, buf)
            else:
                with nogil:
                    count = self.match_into(data, n, buf, out) if want_ids else self.match_any(data, n, buf)
            if want_ids:
                return [out[k] for k in range(count)]
            return count > 0
        finally:
            self._give_back(buf)

    def match(self, str text not None):
        """Sorted list of the distinct ids of all patterns matching text (ValueError if not frozen)."""
        return self._search(text, True)

    def matches(self, str text not None):
        """Whether any pattern matches text; cheaper than match() (ValueError if not frozen)."""
        return self._search(text, False)

    def get_stats(self):
        """Size of the trie: nodes, edges (byte, '?' and '*'), patterns added, distinct ids,
        bytes of C memory held by the frozen arrays and bytes of scratch per concurrent match."""
        if self.frozen:
            wild = sum((self._nodes[i].qmark >= 0) + (self._nodes[i].star >= 0) for i in range(self._n_nodes))
            nodes, edges, n_ids = self._n_nodes, self._n_edges + wild, self._n_ids
            memory = (self._n_nodes * sizeof(gt_node) + self._n_edges * (sizeof(uint8_t) + sizeof(int32_t))
                      + (self._n_acc + self._n_ids) * sizeof(int32_t))
            scratch = self.scratch_size()
        else:
            nodes = len(self._b_children)
            edges = (sum(len(c) for c in self._b_children) + sum(q >= 0 for q in self._b_qmark)
                     + sum(s >= 0 for s in self._b_star))
            n_ids = len({i for a in self._b_acc for i in a})
            memory = scratch = 0
        return {"nodes": nodes, "edges": edges, "patterns": self._n_patterns, "ids": n_ids,
                "memory_bytes": memory, "scratch_bytes": scratch, "frozen": bool(self.frozen)}
