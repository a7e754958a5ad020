# cython: language_level=3, embedsignature=True
"""Glob patterns with policy variables, matched in C without the GIL.

The semantics are those of ``evaluator.wildcard`` and ``evaluator.variables``: ``*`` matches any
run of characters and ``?`` exactly one (one Unicode code point of the UTF-8 text); under
Version 2012-10-17 (``substitute``) ``${key}`` and ``${key, 'default'}`` are replaced by the
request's value of the key, always as literal text, and ``${*}``, ``${?}``, ``${$}`` stand for
the literal characters. A variable whose key is absent without a default, or whose value is a
list, cannot be resolved: the statement that needs it does not apply.

Patterns are parsed once into pieces (static token runs and variables); matching resolves the
variables to borrowed pointers into the request context and runs a greedy glob with backtrack
to the last ``*``, at most len(pattern) * len(text) steps, never exponential.
"""
from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport int32_t, uint8_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp

from ._types cimport cstr, ctx_entry

from .variables import VARIABLE, parse_variable
from .wildcard import QMARK, STAR

# ${*}, ${?} and ${$}: variables that stand for a literal character.
cdef dict _LITERAL_VARIABLES = {"*": "*", "?": "?", "$": "$"}


# ---------------------------------------------------------------------- C helpers (nogil)

cdef Py_ssize_t utf8_step(const unsigned char* text, Py_ssize_t n) noexcept nogil:
    cdef unsigned char b = text[0]
    cdef Py_ssize_t width = 1
    if 0xC0 <= b <= 0xDF:
        width = 2
    elif 0xE0 <= b <= 0xEF:
        width = 3
    elif 0xF0 <= b <= 0xF7:
        width = 4
    return width if width <= n else n


cdef inline void _settle(const pseg* segs, Py_ssize_t nseg, pcur* c) noexcept nogil:
    """Move c past the ends of pieces, onto a token or onto (nseg, 0)."""
    while c.seg < nseg and c.off >= segs[c.seg].len:
        c.seg += 1
        c.off = 0


cdef inline int _token(const pseg* segs, pcur c) noexcept nogil:
    cdef const pseg* s = &segs[c.seg]
    if s.toks != NULL:
        return s.toks[c.off]
    return <unsigned char>s.text[c.off]


cdef bint glob_range(const pseg* segs, Py_ssize_t nseg, pcur p, pcur end,
                     const unsigned char* text, Py_ssize_t n) noexcept nogil:
    """Greedy scan; on a mismatch retry from the last '*', one code point further on.

    Literal tokens compare byte by byte: pieces hold whole code points, so a literal run that
    starts on a code point boundary of the text ends on one. Wildcards consume code points.
    """
    cdef pcur star_p
    cdef bint has_star = False
    cdef Py_ssize_t t = 0, star_t = 0
    cdef int tok
    _settle(segs, nseg, &p)
    star_p = p
    while t < n:
        tok = -1 if (p.seg == end.seg and p.off == end.off) else _token(segs, p)
        if tok == PT_STAR:
            has_star = True
            star_p = p
            star_t = t
            p.off += 1
            _settle(segs, nseg, &p)
        elif tok == PT_QMARK or (tok >= 0 and tok == text[t]):
            t += utf8_step(text + t, n - t) if tok == PT_QMARK else 1
            p.off += 1
            _settle(segs, nseg, &p)
        elif has_star:
            star_t += utf8_step(text + star_t, n - star_t)
            t = star_t
            p = star_p
            p.off += 1
            _settle(segs, nseg, &p)
        else:
            return False
    while not (p.seg == end.seg and p.off == end.off) and _token(segs, p) == PT_STAR:
        p.off += 1
        _settle(segs, nseg, &p)
    return p.seg == end.seg and p.off == end.off


cdef bint glob_tokens(const ptok* toks, Py_ssize_t m, const unsigned char* text,
                      Py_ssize_t n) noexcept nogil:
    cdef pseg whole
    cdef pcur start, end
    whole.text = NULL
    whole.toks = toks
    whole.len = m
    start.seg = 0
    start.off = 0
    end.seg = 1
    end.off = 0
    return glob_range(&whole, 1, start, end, text, n)


cdef bint segments_equal(const pseg* segs, Py_ssize_t nseg, const char* text,
                         Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, total = 0
    for i in range(nseg):
        total += segs[i].len
    if total != n:
        return False
    total = 0
    for i in range(nseg):
        if segs[i].len and memcmp(segs[i].text, text + total, segs[i].len) != 0:
            return False
        total += segs[i].len
    return True


cdef void _close_run(list run, list pieces) except *:
    """Append the static run (chunks of text, wildcards or not) as one piece, unless empty: its bytes and
    where a '*' or '?' in them is literal (a ${*} or ${?}); freeze() makes the tokens from both."""
    cdef list encoded = []
    cdef list literal = []
    cdef Py_ssize_t at = 0
    for chunk, wild in run:
        if not wild and (chunk == "*" or chunk == "?"):  # ${*} or ${?}
            literal.append(at)
        encoded.append(chunk.encode("utf-8", "surrogatepass"))
        at += len(encoded[-1])
    run.clear()
    if at:
        pieces.append((-1, b"".join(encoded), literal, False))


# ---------------------------------------------------------------------- PatternSet

cdef class PatternSet:
    """Glob patterns with policy variables; after freeze(), matched in C.

    PatternSet(key_ids) -- key_ids maps lower-cased context keys to ids (the index of a key in
    the dense request context). add() registers every variable key that is not there yet, with
    id len(key_ids), so the caller's context arrays cover all of them.
    """

    def __cinit__(self, dict key_ids):
        self._key_ids = key_ids
        self._build = []
        self._ids = {}
        self._keep = []

    def __dealloc__(self):
        self._free_arrays()

    cdef void _free_arrays(self) noexcept:
        free(self._pieces)
        free(self._piece_key)
        free(self._piece_default)
        free(self._tokens)
        free(self._first)
        free(self._count)
        free(self._has_vars)
        self._pieces = NULL
        self._piece_key = NULL
        self._piece_default = NULL
        self._tokens = NULL
        self._first = NULL
        self._count = NULL
        self._has_vars = NULL

    def __len__(self):
        return len(self._build) if not self.frozen else self._n_patterns

    # ------------------------------------------------------------------ build phase

    cdef int32_t _key_id(self, str key):
        lowered = key.lower()  # request context keys are lower-cased
        found = self._key_ids.get(lowered)
        if found is None:
            found = self._key_ids[lowered] = len(self._key_ids)
        return found

    cdef list _parse(self, str text, bint substitute):
        """Pieces of a pattern: (key id, bytes, literal, has default); key id -1 for static text,
        whose ``literal`` lists the offsets of the '*' and '?' that are not wildcards (None for a variable).

        Static text keeps '*' and '?' as wildcards; a variable's default and ${*}, ${?}, ${$}
        are literal. Adjacent static runs are merged into one piece.
        """
        cdef list pieces = []
        cdef list run = []   # the current static run: (text, wildcards?) chunks
        cdef Py_ssize_t position = 0
        if substitute and "${" in text:
            for found in VARIABLE.finditer(text):
                run.append((text[position:found.start()], True))
                body = found.group(1)
                if body in _LITERAL_VARIABLES:
                    run.append((_LITERAL_VARIABLES[body], False))
                else:
                    _close_run(run, pieces)
                    key, default = parse_variable(body)
                    value = b"" if default is None else default.encode("utf-8", "surrogatepass")
                    pieces.append((self._key_id(key), value, None, default is not None))
                position = found.end()
        run.append((text[position:], True))
        _close_run(run, pieces)
        return pieces

    def add(self, str text, bint substitute):
        """Add a pattern; return its index (the same for the same text and substitute: policies repeat
        their condition values). substitute: the policy has Version 2012-10-17, so ${...} is a policy
        variable (otherwise it is plain text). Raises ValueError after freeze()."""
        if self.frozen:
            raise ValueError("PatternSet is frozen; add() must come before freeze()")
        key = (text, substitute)
        index = self._ids.get(key)
        if index is None:
            index = self._ids[key] = len(self._build)
            self._build.append(self._parse(text, substitute))
        return index

    def freeze(self):
        """Compile the patterns into flat C arrays; later calls do nothing."""
        if self.frozen:
            return
        cdef list build = self._build
        cdef Py_ssize_t n_patterns = len(build)
        cdef Py_ssize_t n_pieces = sum(len(pieces) for pieces in build)
        cdef Py_ssize_t n_tokens = sum(len(p[1]) for pieces in build for p in pieces if p[0] < 0)
        # +1: malloc(0) may return NULL, which would read as an allocation failure.
        self._pieces = <pseg*>calloc(n_pieces + 1, sizeof(pseg))
        self._piece_key = <int32_t*>malloc((n_pieces + 1) * sizeof(int32_t))
        self._piece_default = <uint8_t*>malloc(n_pieces + 1)
        self._tokens = <ptok*>malloc((n_tokens + 1) * sizeof(ptok))
        self._first = <int32_t*>malloc((n_patterns + 1) * sizeof(int32_t))
        self._count = <int32_t*>malloc((n_patterns + 1) * sizeof(int32_t))
        self._has_vars = <uint8_t*>malloc(n_patterns + 1)
        if not (self._pieces and self._piece_key and self._piece_default and self._tokens
                and self._first and self._count and self._has_vars):
            self._free_arrays()
            raise MemoryError()
        cdef Py_ssize_t i, k, piece = 0, tok = 0, max_segments = 1
        cdef bytes data
        cdef const unsigned char* text
        for i in range(n_patterns):
            pieces = build[i]
            self._first[i] = piece
            self._count[i] = len(pieces)
            self._has_vars[i] = any(p[0] >= 0 for p in pieces)
            if self._has_vars[i] and len(pieces) > max_segments:
                max_segments = len(pieces)
            for key_id, data, literal, has_default in pieces:
                self._keep.append(data)
                self._pieces[piece].text = PyBytes_AS_STRING(data)
                self._pieces[piece].len = len(data)
                self._piece_key[piece] = key_id
                self._piece_default[piece] = has_default
                if literal is None:
                    self._pieces[piece].toks = NULL
                else:
                    self._pieces[piece].toks = &self._tokens[tok]
                    text = <const unsigned char*>PyBytes_AS_STRING(data)
                    for k in range(len(data)):  # no byte of a non-ASCII code point's UTF-8 is '*' or '?'
                        self._tokens[tok + k] = text[k]
                        if text[k] == b'*':
                            self._tokens[tok + k] = PT_STAR
                        elif text[k] == b'?':
                            self._tokens[tok + k] = PT_QMARK
                    for k in literal:
                        self._tokens[tok + k] = text[k]
                    tok += len(data)
                piece += 1
        self._n_patterns = n_patterns
        self._n_pieces = n_pieces
        self._max_segments = max_segments
        self.nbytes = (n_pieces * (sizeof(pseg) + sizeof(int32_t) + 1) + n_tokens * sizeof(ptok)
                       + n_patterns * (2 * sizeof(int32_t) + 1) + sum(len(data) for data in self._keep))
        self._build = self._ids = None
        self.frozen = True

    # ------------------------------------------------------------------ C API (nogil)

    cdef Py_ssize_t max_segments(self) noexcept nogil:
        return self._max_segments

    cdef Py_ssize_t segments(self, int32_t pattern, const ctx_entry* ctx, pseg* scratch,
                             const pseg** out) noexcept nogil:
        if not self.frozen or pattern < 0 or pattern >= self._n_patterns:
            return -1
        cdef Py_ssize_t first = self._first[pattern], count = self._count[pattern], i
        cdef const ctx_entry* entry
        if not self._has_vars[pattern]:
            out[0] = &self._pieces[first]
            return count
        for i in range(count):
            if self._piece_key[first + i] < 0:
                scratch[i] = self._pieces[first + i]
                continue
            entry = &ctx[self._piece_key[first + i]]
            if entry.count < 0:
                if not self._piece_default[first + i]:
                    return -1  # absent, no default
                scratch[i] = self._pieces[first + i]
            elif entry.is_list or entry.count != 1:
                return -1  # multi-valued
            else:
                scratch[i].text = entry.values[0].ptr
                scratch[i].toks = NULL
                scratch[i].len = entry.values[0].len
        out[0] = scratch
        return count

    cdef int match(self, int32_t pattern, const char* text, Py_ssize_t n, const ctx_entry* ctx,
                   pseg* scratch) noexcept nogil:
        if not self.frozen or pattern < 0 or pattern >= self._n_patterns:
            return -1
        cdef const pseg* segs
        cdef Py_ssize_t nseg = self.segments(pattern, ctx, scratch, &segs)
        cdef pcur start, end
        if nseg < 0:
            return 2
        start.seg = 0
        start.off = 0
        end.seg = nseg
        end.off = 0
        return glob_range(segs, nseg, start, end, <const unsigned char*>text, n)

    cdef Py_ssize_t expand(self, int32_t pattern, const ctx_entry* ctx, ptok* out,
                           Py_ssize_t capacity) noexcept nogil:
        if not self.frozen or pattern < 0 or pattern >= self._n_patterns:
            return -1
        cdef Py_ssize_t first = self._first[pattern], i, j, written = 0
        cdef const pseg* piece
        cdef const unsigned char* value
        cdef Py_ssize_t length
        cdef const ctx_entry* entry
        for i in range(first, first + self._count[pattern]):
            piece = &self._pieces[i]
            value = <const unsigned char*>piece.text
            length = piece.len
            if self._piece_key[i] >= 0:
                entry = &ctx[self._piece_key[i]]
                if entry.count < 0:
                    if not self._piece_default[i]:
                        return -1
                elif entry.is_list or entry.count != 1:
                    return -1
                else:
                    value = <const unsigned char*>entry.values[0].ptr
                    length = entry.values[0].len
            for j in range(length):
                if written + j < capacity:
                    out[written + j] = piece.toks[j] if self._piece_key[i] < 0 else value[j]
            written += length
        return written

    # ------------------------------------------------------------------ Python API (tests)

    def matches(self, int index, str text, context):
        """1 match, 0 no match, 2 unresolvable variable: match() for a Python context
        (lower-cased keys; str or tuple-of-str values)."""
        if not self.frozen:
            raise ValueError("freeze() the PatternSet first")
        if not 0 <= index < self._n_patterns:
            raise IndexError(index)
        cdef ContextArray ctx = ContextArray(self._key_ids, context)
        cdef bytes data = text.encode("utf-8", "surrogatepass")
        cdef const char* ptr = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = len(data)
        cdef pseg* scratch = <pseg*>malloc(self._max_segments * sizeof(pseg))
        cdef int result
        if scratch == NULL:
            raise MemoryError()
        with nogil:
            result = self.match(index, ptr, n, ctx.entries, scratch)
        free(scratch)
        return result

    def expanded(self, int index, context):
        """The pattern with variables expanded, as ``variables.expand_pattern`` spells it (a
        tuple of characters and STAR / QMARK), or None if a variable is unresolvable."""
        if not self.frozen:
            raise ValueError("freeze() the PatternSet first")
        if not 0 <= index < self._n_patterns:
            raise IndexError(index)
        cdef ContextArray ctx = ContextArray(self._key_ids, context)
        cdef Py_ssize_t count = self.expand(index, ctx.entries, NULL, 0), i = 0, step
        if count < 0:
            return None
        cdef ptok* toks = <ptok*>malloc((count + 1) * sizeof(ptok))
        if toks == NULL:
            raise MemoryError()
        cdef unsigned char utf8[4]
        items = []
        try:
            self.expand(index, ctx.entries, toks, count)
            while i < count:
                if toks[i] == PT_STAR or toks[i] == PT_QMARK:
                    items.append(STAR if toks[i] == PT_STAR else QMARK)
                    i += 1
                    continue
                utf8[0] = <unsigned char>toks[i]
                step = utf8_step(utf8, count - i)
                items.append(bytes([toks[i + k] for k in range(step)]).decode("utf-8", "surrogatepass"))
                i += step
        finally:
            free(toks)
        return tuple(items)


# ---------------------------------------------------------------------- ContextArray

cdef class ContextArray:
    """ContextArray(key_ids, context) -- entry i describes the key whose id is i.

    Context keys are looked up as given (request contexts are lower-cased already); keys with
    no id are no one's concern and are left out. Values are str (a single value) or a tuple or
    list of str (a multi-valued key, even with one or no element).
    """

    def __cinit__(self, dict key_ids, context):
        cdef Py_ssize_t n = len(key_ids), n_strings = 0, i, s = 0
        cdef ctx_entry* entry
        cdef bytes data
        self.n_keys = n
        self._keep = []
        chosen = []
        for key, value in context.items():
            key_id = key_ids.get(key)
            if key_id is None:
                continue
            values = (value,) if isinstance(value, str) else tuple(value)
            chosen.append((key_id, not isinstance(value, str), values))
            n_strings += len(values)
        self.entries = <ctx_entry*>calloc(n + 1, sizeof(ctx_entry))
        self._strings = <cstr*>calloc(n_strings + 1, sizeof(cstr))
        if self.entries == NULL or self._strings == NULL:
            raise MemoryError()
        for i in range(n):
            self.entries[i].count = -1
        for key_id, is_list, values in chosen:
            entry = &self.entries[<Py_ssize_t>key_id]
            entry.count = len(values)
            entry.is_list = is_list
            entry.values = &self._strings[s]
            for text in values:
                data = (<str?>text).encode("utf-8", "surrogatepass")
                self._keep.append(data)
                self._strings[s].ptr = PyBytes_AS_STRING(data)
                self._strings[s].len = len(data)
                s += 1

    def __dealloc__(self):
        free(self.entries)
        free(self._strings)
