# cython: language_level=3, embedsignature=True
"""Conditions compiled to C structs and evaluated without the GIL.

The semantics are those of ``evaluator.conditions`` (``comparator``, ``condition_holds``), of the
value readers in ``evaluator.operators`` and of ``reference.statement_applies``, reproduced
exactly, quirks included:

* A statement's comparators come first, in order: a typed policy value holding ``${...}``
  cannot be read (the request fails), a String or Arn value's policy variable without a
  single value makes the statement not apply. Then every condition is evaluated, in order.
* Values of a key are OR-ed; negated operators hold when no value matches; a missing key fails
  the condition except for negated operators, ``...IfExists``, ``Null: true`` and
  ``ForAllValues:``; an empty list is present (``ForAllValues`` true, others false).
* Text is compared as ``str`` is: byte-exact UTF-8. ``...IgnoreCase`` compares full Unicode
  case folds (``str.casefold``), from a table taken from the running Python when the first
  such condition is added; ASCII takes a fast path.
* Readers strip Unicode whitespace as ``str.strip()`` does. Numbers follow ``read_number``
  (Unicode decimal digits too, as ``re``'s ``\\d`` and ``Decimal`` accept them) and compare
  exactly, as ``Decimal`` does: never through a float. Dates are epoch seconds or what
  ``datetime.fromisoformat`` of Python 3.11 accepts (the same parse, step by step), turned
  into seconds as ``read_date`` does, including its rounding of the timestamp.
* Addresses are parsed as ``ipaddress.ip_address`` parses them (IPv6 scope ids included);
  IPv4 is never inside an IPv6 network and vice versa.

Policy values are read once, when a group is added; request values on every call.
"""
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_4BYTE_KIND, PyUnicode_FromKindAndData
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp

from ._pattern cimport ContextArray, PatternSet, pcur, pseg, glob_range, segments_equal, utf8_step
from ._types cimport cstr, ctx_entry

from .operators import OPERATORS, Comparison, Family, read_bool, read_date, read_network, read_number


cdef extern from "Python.h":
    bint Py_UNICODE_ISSPACE(Py_UCS4 ch) nogil
    int Py_UNICODE_TODECIMAL(Py_UCS4 ch) nogil


cdef dict _FAMILIES = {
    Family.STRING: CF_STRING, Family.NUMERIC: CF_NUMERIC, Family.DATE: CF_DATE, Family.BOOL: CF_BOOL,
    Family.BINARY: CF_BINARY, Family.IP: CF_IP, Family.ARN: CF_ARN, Family.NULL: CF_NULL,
}
cdef dict _COMPARISONS = {
    Comparison.EQUALS: CC_EQUALS, Comparison.EQUALS_IGNORE_CASE: CC_EQUALS_IGNORE_CASE,
    Comparison.LIKE: CC_LIKE, Comparison.LESS: CC_LESS, Comparison.LESS_EQUALS: CC_LESS_EQUALS,
    Comparison.GREATER: CC_GREATER, Comparison.GREATER_EQUALS: CC_GREATER_EQUALS,
    Comparison.IN_RANGE: CC_IN_RANGE, Comparison.IS_ABSENT: CC_IS_ABSENT,
}
cdef dict _QUALIFIERS = {None: CQ_NONE, "ForAllValues": CQ_ALL_VALUES, "ForAnyValue": CQ_ANY_VALUE}


# ---------------------------------------------------------------------- UTF-8 and whitespace

cdef inline Py_UCS4 _decode(const unsigned char* s, Py_ssize_t n, Py_ssize_t* width) noexcept nogil:
    """The code point at s (UTF-8, surrogates as str.encode(..., 'surrogatepass') writes them)."""
    cdef Py_ssize_t w = utf8_step(s, n)
    width[0] = w
    if w == 1:
        return s[0]  # ASCII (a stray byte reads as itself: no valid text has one)
    if w == 2:
        return ((s[0] & 0x1F) << 6) | (s[1] & 0x3F)
    if w == 3:
        return ((s[0] & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F)
    return ((s[0] & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F)


cdef void _strip(const unsigned char* s, Py_ssize_t n, Py_ssize_t* start, Py_ssize_t* end) noexcept nogil:
    """The bounds of s without leading and trailing whitespace, as str.strip() sees it."""
    cdef Py_ssize_t a = 0, b = n, k, w
    while a < n and Py_UNICODE_ISSPACE(_decode(s + a, n - a, &w)):
        a += w
    while b > a:
        k = b - 1
        while k > a and (s[k] & 0xC0) == 0x80:
            k -= 1
        if not Py_UNICODE_ISSPACE(_decode(s + k, b - k, &w)):
            break
        b = k
    start[0] = a
    end[0] = b


cdef inline int _digit(const unsigned char* s, Py_ssize_t n, Py_ssize_t* width) noexcept nogil:
    """The value of the decimal digit at s (any Unicode decimal digit, as re's \\d), or -1."""
    if s[0] < 0x80:
        width[0] = 1
        return s[0] - 48 if 48 <= s[0] <= 57 else -1
    return Py_UNICODE_TODECIMAL(_decode(s, n, width))


# ---------------------------------------------------------------------- exact decimals

cdef bint _read_decimal(const unsigned char* s, Py_ssize_t a, Py_ssize_t b, bint epoch,
                        decview* out) noexcept nogil:
    """Read s[a:b] as read_number's [+-]?(\\d+(\\.\\d*)?|\\.\\d+), or with epoch as read_date's
    epoch seconds [+-]?\\d+(\\.\\d+)?; False if it does not match."""
    cdef Py_ssize_t pos = a, w, n_int = 0, n_frac = 0, point, frac, p
    cdef int d
    cdef bint has_point = False
    out.neg = False
    if pos < b and (s[pos] == b'+' or s[pos] == b'-'):
        out.neg = s[pos] == b'-'
        pos += 1
    cdef Py_ssize_t int_start = pos
    while pos < b and _digit(s + pos, b - pos, &w) >= 0:
        pos += w
        n_int += 1
    point = frac = pos
    if pos < b and s[pos] == b'.':
        has_point = True
        pos += 1
        frac = pos
        while pos < b and _digit(s + pos, b - pos, &w) >= 0:
            pos += w
            n_frac += 1
    if pos != b:
        return False
    if epoch:
        if n_int == 0 or (has_point and n_frac == 0):
            return False
    elif n_int == 0 and n_frac == 0:
        return False
    out.s = s
    out.point = point
    out.frac = frac
    out.end = b
    out.sig = -1
    out.exp = 0
    p = int_start
    while p < point:
        d = _digit(s + p, point - p, &w)
        if out.sig < 0 and d != 0:
            out.sig = p
        if out.sig >= 0:
            out.exp += 1
        p += w
    if out.sig < 0:
        p = frac
        while p < b:
            d = _digit(s + p, b - p, &w)
            if d != 0:
                out.sig = p
                break
            out.exp -= 1
            p += w
    return True


cdef inline int _next_digit(const decview* x, Py_ssize_t* p) noexcept nogil:
    """The digit at *p, advancing *p (across the point); -1 past the end."""
    cdef Py_ssize_t w
    cdef int d
    if p[0] == x.point:
        p[0] = x.frac
    if p[0] >= x.end:
        return -1
    d = _digit(x.s + p[0], x.end - p[0], &w)
    p[0] += w
    return d


cdef int _compare(const decview* x, const decview* y) noexcept nogil:
    """-1, 0 or 1 as the number x is less than, equal to or greater than y (exactly)."""
    cdef int sx = 0 if x.sig < 0 else (-1 if x.neg else 1)
    cdef int sy = 0 if y.sig < 0 else (-1 if y.neg else 1)
    cdef int order = 0, dx, dy
    cdef Py_ssize_t px = x.sig, py = y.sig
    if sx != sy:
        return -1 if sx < sy else 1
    if sx == 0:
        return 0
    if x.exp != y.exp:
        order = 1 if x.exp > y.exp else -1
    else:
        while True:
            dx = _next_digit(x, &px)
            dy = _next_digit(y, &py)
            if dx < 0 and dy < 0:
                break
            if dx < 0:  # x ran out: y is larger if any digit it has left is not zero
                while dy == 0:
                    dy = _next_digit(y, &py)
                order = -1 if dy > 0 else 0
                break
            if dy < 0:
                while dx == 0:
                    dx = _next_digit(x, &px)
                order = 1 if dx > 0 else 0
                break
            if dx != dy:
                order = 1 if dx > dy else -1
                break
    return -order if sx < 0 else order


# ---------------------------------------------------------------------- dates

cdef const unsigned char* _UTC_SUFFIX = b"+00:00"
cdef int[13] _DAYS_IN_MONTH = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
cdef int[13] _DAYS_BEFORE_MONTH = [0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334]
cdef int[5] _FRACTION_SCALE = [100000, 10000, 1000, 100, 10]
cdef enum:
    _EPOCH_ORDINAL = 719163  # ordinal (0001-01-01 is 1) of 1970-01-01


ctypedef struct isotext:           # the text fromisoformat sees: base, then a suffix, then NULs
    const unsigned char* base
    Py_ssize_t base_len
    const unsigned char* suffix
    Py_ssize_t len


ctypedef struct isotime:
    int hour, minute, second, microsecond


cdef inline int _at(const isotext* t, Py_ssize_t i) noexcept nogil:
    """Byte i of the text; 0 past its end (CPython's parser relies on the NUL terminator)."""
    if i < 0 or i >= t.len:
        return 0
    if i < t.base_len:
        return t.base[i]
    return t.suffix[i - t.base_len]


cdef inline bint _is_ascii_digit(int c) noexcept nogil:
    return 48 <= c <= 57


cdef Py_ssize_t _parse_digits(const isotext* t, Py_ssize_t p, int* var, Py_ssize_t count) noexcept nogil:
    """Accumulate count ASCII digits at p into var; the position after them, or -1."""
    cdef Py_ssize_t i
    cdef int c
    for i in range(count):
        c = _at(t, p)
        if not _is_ascii_digit(c):
            return -1
        var[0] = var[0] * 10 + (c - 48)
        p += 1
    return p


cdef inline bint _is_leap(int year) noexcept nogil:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


cdef inline int _days_in_month(int year, int month) noexcept nogil:
    return 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month]


cdef inline int64_t _ordinal(int year, int month, int day) noexcept nogil:
    """Days since 0000-12-31 (0001-01-01 is 1); year >= 1."""
    cdef int64_t y = year - 1
    return (y * 365 + y // 4 - y // 100 + y // 400 + _DAYS_BEFORE_MONTH[month]
            + (1 if month > 2 and _is_leap(year) else 0) + day)


cdef void _from_ordinal(int64_t ordinal, int* year, int* month, int* day) noexcept nogil:
    """The calendar date of an ordinal >= 1."""
    cdef int64_t n = ordinal - 1, n400, n100, n4, n1
    n400 = n // 146097
    n = n % 146097
    n100 = n // 36524
    n = n % 36524
    n4 = n // 1461
    n = n % 1461
    n1 = n // 365
    n = n % 365
    year[0] = <int>(n400 * 400 + n100 * 100 + n4 * 4 + n1 + 1)
    if n1 == 4 or n100 == 4:
        year[0] -= 1
        month[0] = 12
        day[0] = 31
        return
    month[0] = 1
    while month[0] < 12 and _DAYS_BEFORE_MONTH[month[0] + 1] + (1 if month[0] + 1 > 2 and _is_leap(year[0]) else 0) <= n:
        month[0] += 1
    day[0] = <int>(n - _DAYS_BEFORE_MONTH[month[0]] - (1 if month[0] > 2 and _is_leap(year[0]) else 0) + 1)


cdef Py_ssize_t _find_separator(const isotext* t) noexcept nogil:
    """Where the date ends, as fromisoformat decides it from characters 4 and 5; -1 if invalid."""
    cdef Py_ssize_t n = t.len, i
    if n == 7:
        return 7
    if _at(t, 4) == b'-':
        if _at(t, 5) != b'W':
            return 10  # YYYY-MM-DD
        if n > 8 and _at(t, 8) == b'-':  # YYYY-Www-D or YYYY-Www then a '-' separator
            if n == 9:
                return -1
            if n > 10 and _is_ascii_digit(_at(t, 10)):
                return 8
            return 10
        return 8  # YYYY-Www
    if _at(t, 4) == b'W':  # YYYYWww or YYYYWwwD: count the digits that follow
        i = 7
        while i < n and _is_ascii_digit(_at(t, i)):
            i += 1
        if i < 9:
            return i
        return 7 if i % 2 == 0 else 8
    return 8  # YYYYMMDD


cdef int _parse_date_part(const isotext* t, Py_ssize_t length, int* year, int* month, int* day) noexcept nogil:
    """YYYY-MM-DD, YYYYMMDD, YYYY-Www[-D], YYYYWww[D]; 0, or < 0 if invalid."""
    cdef Py_ssize_t p = _parse_digits(t, 0, year, 4)
    cdef bint dashed
    cdef int week = 0, weekday = 0, first_weekday, c
    cdef int64_t week1_monday, jan1
    if p < 0:
        return -1
    dashed = _at(t, p) == b'-'
    if dashed:
        p += 1
    if _at(t, p) == b'W':
        p = _parse_digits(t, p + 1, &week, 2)
        if p < 0:
            return -3
        if p < length:
            if dashed:
                c = _at(t, p)
                p += 1
                if c != b'-':
                    return -2
            if _parse_digits(t, p, &weekday, 1) < 0:
                return -4
        else:
            weekday = 1
        if year[0] == 0:
            return -5  # CPython's calendar arithmetic assumes year >= 1; year 0 never parses
        jan1 = _ordinal(year[0], 1, 1)
        first_weekday = <int>((jan1 + 6) % 7)  # Monday is 0
        if week <= 0 or week >= 53:
            if not (week == 53 and (first_weekday == 3 or (first_weekday == 2 and _is_leap(year[0])))):
                return -5
        if weekday <= 0 or weekday >= 8:
            return -6
        week1_monday = jan1 - first_weekday + (7 if first_weekday > 3 else 0)
        _from_ordinal(week1_monday + (week - 1) * 7 + weekday - 1, year, month, day)
        return 0
    p = _parse_digits(t, p, month, 2)
    if p < 0:
        return -1
    if dashed:
        c = _at(t, p)
        p += 1
        if c != b'-':
            return -2
    if _parse_digits(t, p, day, 2) < 0:
        return -1
    return 0


cdef int _parse_clock(const isotext* t, Py_ssize_t p, Py_ssize_t end, isotime* out) noexcept nogil:
    """HH[:?MM[:?SS]][{.,}fraction] from p, up to end; 0 if it ends there, 1 if something
    else follows, < 0 if invalid (fromisoformat's rules, including its leniencies)."""
    cdef int* parts[3]
    cdef Py_ssize_t i, remaining, count
    cdef bint separated = True
    cdef int c
    out.hour = out.minute = out.second = out.microsecond = 0
    parts[0] = &out.hour
    parts[1] = &out.minute
    parts[2] = &out.second
    for i in range(3):
        p = _parse_digits(t, p, parts[i], 2)
        if p < 0:
            return -3
        c = _at(t, p)
        p += 1
        if i == 0:
            separated = c == b':'
        if p >= end:
            return c != 0
        elif separated and c == b':':
            continue
        elif c == b'.' or c == b',':
            break
        elif not separated:
            p -= 1
        else:
            return -4
    remaining = end - p
    count = 6 if remaining >= 6 else remaining
    p = _parse_digits(t, p, &out.microsecond, count)
    if p < 0:
        return -3
    if 0 < count < 6:
        out.microsecond *= _FRACTION_SCALE[count - 1]
    while _is_ascii_digit(_at(t, p)):
        p += 1  # digits past the sixth are dropped
    return _at(t, p) != 0


cdef int _parse_time_part(const isotext* t, Py_ssize_t p, isotime* clock, int64_t* offset_us) noexcept nogil:
    """Time and optional offset from p to the end: 0 naive, 1 with an offset, < 0 invalid."""
    cdef Py_ssize_t end = t.len, zone = p
    cdef int rv, sign, c
    cdef isotime tz
    while True:
        c = _at(t, zone)
        if c == b'Z' or c == b'+' or c == b'-':
            break
        zone += 1
        if zone >= end:
            break
    rv = _parse_clock(t, p, zone, clock)
    if rv < 0:
        return rv
    if zone == end:
        return -5 if rv == 1 else 0
    if _at(t, zone) == b'Z':
        offset_us[0] = 0
        return -5 if _at(t, zone + 1) != 0 else 1
    sign = -1 if _at(t, zone) == b'-' else 1
    rv = _parse_clock(t, zone + 1, end, &tz)
    if rv:
        return -5
    offset_us[0] = sign * (<int64_t>tz.hour * 3600 + tz.minute * 60 + tz.second)
    if offset_us[0] != 0:  # a zero offset in seconds is UTC, whatever its microseconds
        offset_us[0] = offset_us[0] * 1000000 + sign * tz.microsecond
    return 1


cdef int64_t _whole_seconds(int64_t total_us) noexcept nogil:
    """int(datetime.timestamp()): total_us / 10**6 rounded to the nearest double, then truncated.

    Below 2**34 s a fraction of whole microseconds never rounds up to the next integer; above,
    it does when its distance to it is under half the spacing of doubles there.
    """
    cdef bint negative = total_us < 0
    cdef uint64_t magnitude = <uint64_t>(-total_us) if negative else <uint64_t>total_us
    cdef uint64_t q = magnitude // 1000000, r = magnitude % 1000000
    cdef int top = 63
    if r and q >= (<uint64_t>1 << 34):
        while not (q >> top):
            top -= 1
        # doubles in [2**top, 2**(top+1)) are 2**(top-52) apart
        if top >= 53 or ((1000000 - r) << (53 - top)) < 1000000:
            q += 1
    return -<int64_t>q if negative else <int64_t>q


cdef bint _read_iso_microseconds(const unsigned char* s, Py_ssize_t n, int64_t* value_us) noexcept nogil:
    """read_date's ISO branch on stripped text: datetime.fromisoformat (a final Z or z read as
    +00:00, no zone as UTC), then int(timestamp()) + microsecond / 10**6, in microseconds."""
    cdef isotext t
    cdef Py_ssize_t i, code_points, sep, p
    cdef int year = 0, month = 0, day = 0, rv, lead
    cdef isotime clock
    cdef int64_t offset_us = 0, local_s, total_us
    cdef int64_t _DAY_US = 86400 * <int64_t>1000000
    t.base = s
    t.base_len = n
    t.suffix = _UTC_SUFFIX
    t.len = n
    if n > 0 and (s[n - 1] == b'Z' or s[n - 1] == b'z'):
        t.base_len = n - 1
        t.len = n - 1 + 6
    code_points = t.len - t.base_len
    for i in range(t.base_len):
        if (s[i] & 0xC0) != 0x80:
            code_points += 1
    if code_points < 7:
        return False
    sep = _find_separator(&t)
    if sep < 0:
        return False
    clock.hour = clock.minute = clock.second = clock.microsecond = 0
    rv = _parse_date_part(&t, sep, &year, &month, &day)
    if rv == 0 and t.len > sep:
        lead = _at(&t, sep)  # the separator: any one character
        if (lead & 0x80) == 0:
            p = sep + 1
        elif (lead & 0xF0) == 0xE0:
            p = sep + 3
        elif (lead & 0xF0) == 0xF0:
            p = sep + 4
        else:
            p = sep + 2
        rv = _parse_time_part(&t, p, &clock, &offset_us)
    if rv < 0:
        return False
    if not (1 <= year <= 9999 and 1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        return False
    if clock.hour > 23 or clock.minute > 59 or clock.second > 59:
        return False
    if not (-_DAY_US < offset_us < _DAY_US):  # strictly within a day
        return False
    local_s = (_ordinal(year, month, day) - _EPOCH_ORDINAL) * 86400 + clock.hour * 3600 + clock.minute * 60 + clock.second
    total_us = local_s * 1000000 + clock.microsecond - offset_us
    value_us[0] = _whole_seconds(total_us) * 1000000 + clock.microsecond
    return True


cdef bint _read_date(const unsigned char* s, Py_ssize_t n, char* buf, decview* out) noexcept nogil:
    """read_date: epoch seconds or ISO 8601; buf (40 bytes) holds the ISO value's digits."""
    cdef Py_ssize_t a, b
    cdef int64_t value_us
    cdef uint64_t magnitude
    cdef int written
    _strip(s, n, &a, &b)
    if _read_decimal(s, a, b, True, out):
        return True
    if not _read_iso_microseconds(s + a, b - a, &value_us):
        return False
    magnitude = <uint64_t>(-value_us) if value_us < 0 else <uint64_t>value_us
    written = snprintf(buf, 40, "%s%llu.%06llu", "-" if value_us < 0 else "",
                       <unsigned long long>(magnitude // 1000000), <unsigned long long>(magnitude % 1000000))
    return _read_decimal(<const unsigned char*>buf, 0, written, False, out)


# ---------------------------------------------------------------------- booleans and addresses

cdef int _read_bool(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """read_bool: 1, 0, or -1. Only ASCII letters lower-case into 'true' or 'false'."""
    cdef Py_ssize_t a, b, i
    cdef const char* word = NULL
    _strip(s, n, &a, &b)
    if b - a == 4:
        word = "true"
    elif b - a == 5:
        word = "false"
    else:
        return -1
    for i in range(b - a):
        if (s[a + i] | 0x20 if 65 <= s[a + i] <= 90 else s[a + i]) != <unsigned char>word[i]:
            return -1
    return 1 if b - a == 4 else 0


cdef bint _parse_ipv4(const unsigned char* s, Py_ssize_t n, uint64_t* value) noexcept nogil:
    """IPv4Address: four dot-separated decimal octets, ASCII digits, no leading zeros, <= 255."""
    cdef Py_ssize_t i = 0, start, octets = 0
    cdef uint64_t octet
    value[0] = 0
    while True:
        start = i
        octet = 0
        while i < n and s[i] != b'.':
            if not (48 <= s[i] <= 57) or i - start >= 3:
                return False
            octet = octet * 10 + (s[i] - 48)
            i += 1
        if i == start or (s[start] == b'0' and i - start > 1) or octet > 255:
            return False
        value[0] = (value[0] << 8) | octet
        octets += 1
        if i == n:
            return octets == 4
        if octets == 4:
            return False
        i += 1  # the dot


cdef int _parse_hextet(const unsigned char* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """1 to 4 hex digits; the value or -1."""
    cdef int value = 0, c
    cdef Py_ssize_t i
    if b <= a or b - a > 4:
        return -1
    for i in range(a, b):
        c = s[i]
        if 48 <= c <= 57:
            value = value * 16 + c - 48
        elif 97 <= (c | 0x20) <= 102:
            value = value * 16 + (c | 0x20) - 87
        else:
            return -1
    return value


cdef bint _parse_ipv6(const unsigned char* s, Py_ssize_t n, uint64_t* hi, uint64_t* lo) noexcept nogil:
    """IPv6Address: an optional %scope (not empty, no second '%'), then ipaddress's rules for
    hextets, one '::', and an IPv4 tail."""
    cdef Py_ssize_t i, length = n, n_parts = 1, skip = -1, parts_hi, parts_lo, skipped
    cdef Py_ssize_t starts[10]
    cdef Py_ssize_t ends[10]
    cdef int preset[10]
    cdef int value
    cdef uint64_t v4
    cdef uint64_t words[8]
    cdef bint last_has_dot = False
    for i in range(n):
        if s[i] == b'/':
            return False
        if s[i] == b'%' and length == n:
            length = i
    if length < n:
        if length == n - 1:
            return False
        for i in range(length + 1, n):
            if s[i] == b'%':
                return False
    if length == 0:
        return False
    starts[0] = 0
    for i in range(length):
        if s[i] == b':':
            if n_parts == 10:
                return False  # more than 9 parts even before an IPv4 tail
            ends[n_parts - 1] = i
            starts[n_parts] = i + 1
            n_parts += 1
    ends[n_parts - 1] = length
    if n_parts < 3:
        return False
    for i in range(n_parts):
        preset[i] = -1
    for i in range(starts[n_parts - 1], length):
        if s[i] == b'.':
            last_has_dot = True
    if last_has_dot:
        if not _parse_ipv4(s + starts[n_parts - 1], length - starts[n_parts - 1], &v4):
            return False
        if n_parts == 10:
            return False
        preset[n_parts - 1] = <int>((v4 >> 16) & 0xFFFF)
        preset[n_parts] = <int>(v4 & 0xFFFF)
        starts[n_parts] = ends[n_parts] = 0
        n_parts += 1
    if n_parts > 9:
        return False
    for i in range(1, n_parts - 1):
        if preset[i] < 0 and starts[i] == ends[i]:
            if skip >= 0:
                return False
            skip = i
    if skip >= 0:
        parts_hi = skip
        parts_lo = n_parts - skip - 1
        if preset[0] < 0 and starts[0] == ends[0]:
            parts_hi -= 1
            if parts_hi:
                return False
        if preset[n_parts - 1] < 0 and starts[n_parts - 1] == ends[n_parts - 1]:
            parts_lo -= 1
            if parts_lo:
                return False
        skipped = 8 - (parts_hi + parts_lo)
        if skipped < 1:
            return False
    else:
        if n_parts != 8:
            return False
        parts_hi = n_parts
        parts_lo = 0
        skipped = 0
    cdef Py_ssize_t w = 0
    for i in range(parts_hi):
        value = preset[i] if preset[i] >= 0 else _parse_hextet(s, starts[i], ends[i])
        if value < 0:
            return False
        words[w] = value
        w += 1
    for i in range(skipped):
        words[w] = 0
        w += 1
    for i in range(n_parts - parts_lo, n_parts):
        value = preset[i] if preset[i] >= 0 else _parse_hextet(s, starts[i], ends[i])
        if value < 0:
            return False
        words[w] = value
        w += 1
    hi[0] = (words[0] << 48) | (words[1] << 32) | (words[2] << 16) | words[3]
    lo[0] = (words[4] << 48) | (words[5] << 32) | (words[6] << 16) | words[7]
    return True


cdef bint _read_address(const unsigned char* s, Py_ssize_t n, ipnet* out) noexcept nogil:
    """ipaddress.ip_address(text.strip()): IPv4 first, then IPv6."""
    cdef Py_ssize_t a, b
    _strip(s, n, &a, &b)
    out.hi = 0
    if _parse_ipv4(s + a, b - a, &out.lo):
        out.version = 4
        return True
    if _parse_ipv6(s + a, b - a, &out.hi, &out.lo):
        out.version = 6
        return True
    return False


# ---------------------------------------------------------------------- case folding

cdef uint32_t* _fold_from = NULL     # non-ASCII code points whose casefold differs, ascending
cdef uint32_t* _fold_start = NULL    # where each one's fold starts in _fold_to
cdef uint8_t* _fold_len = NULL       # its length (1 to 3 code points)
cdef uint32_t* _fold_to = NULL
cdef Py_ssize_t _fold_count = 0


cdef void _load_fold_table() except *:
    """Take str.casefold of every non-ASCII code point from the running Python (once). A block of code
    points that casefold leaves alone as a whole holds none that folds (a character folds to one or more
    characters, never to none), so only the few blocks with cased letters are read one by one."""
    global _fold_from, _fold_start, _fold_len, _fold_to, _fold_count
    if _fold_from != NULL:
        return
    entries = []
    cdef uint32_t codes[256]  # one block's code points, made into a str in C (lone surrogates too)
    cdef Py_ssize_t start, size, k
    for start in range(0x80, 0x110000, 256):
        size = min(256, 0x110000 - start)
        for k in range(size):
            codes[k] = <uint32_t>(start + k)
        block = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, codes, size)
        if block.casefold() == block:
            continue
        for offset, ch in enumerate(block):
            folded = ch.casefold()
            if folded != ch:
                entries.append((start + offset, folded))
    cdef Py_ssize_t total = sum(len(f) for _, f in entries), i, at = 0
    cdef uint32_t* fold_from = <uint32_t*>malloc(len(entries) * sizeof(uint32_t))
    cdef uint32_t* fold_start = <uint32_t*>malloc(len(entries) * sizeof(uint32_t))
    cdef uint8_t* fold_len = <uint8_t*>malloc(len(entries))
    cdef uint32_t* fold_to = <uint32_t*>malloc(total * sizeof(uint32_t))
    if not (fold_from and fold_start and fold_len and fold_to):
        free(fold_from)
        free(fold_start)
        free(fold_len)
        free(fold_to)
        raise MemoryError()
    for i, (code, folded) in enumerate(entries):
        fold_from[i] = code
        fold_start[i] = at
        fold_len[i] = len(folded)
        for ch in folded:
            fold_to[at] = ord(ch)
            at += 1
    _fold_start = fold_start
    _fold_len = fold_len
    _fold_to = fold_to
    _fold_count = len(entries)
    _fold_from = fold_from  # last: its being set means the table is complete


ctypedef struct folder:            # the case-folded code points of a list of pseg, one at a time
    const pseg* segs
    Py_ssize_t nseg, seg, off
    uint32_t pending[3]
    int n_pending, next_pending


cdef inline int64_t _fold_next(folder* f) noexcept nogil:
    """The next folded code point, or -1 at the end."""
    cdef const unsigned char* s
    cdef Py_ssize_t w, lo, hi, mid, k
    cdef Py_UCS4 code
    if f.next_pending < f.n_pending:
        f.next_pending += 1
        return f.pending[f.next_pending - 1]
    while f.seg < f.nseg and f.off >= f.segs[f.seg].len:
        f.seg += 1
        f.off = 0
    if f.seg >= f.nseg:
        return -1
    s = <const unsigned char*>f.segs[f.seg].text + f.off
    if s[0] < 0x80:
        f.off += 1
        return s[0] + 32 if 65 <= s[0] <= 90 else s[0]
    code = _decode(s, f.segs[f.seg].len - f.off, &w)
    f.off += w
    lo = 0
    hi = _fold_count
    while lo < hi:
        mid = (lo + hi) >> 1
        if _fold_from[mid] < code:
            lo = mid + 1
        else:
            hi = mid
    if lo == _fold_count or _fold_from[lo] != code:
        return code
    f.n_pending = _fold_len[lo] - 1
    f.next_pending = 0
    for k in range(f.n_pending):
        f.pending[k] = _fold_to[_fold_start[lo] + 1 + k]
    return _fold_to[_fold_start[lo]]


cdef bint _folds_equal(const pseg* segs, Py_ssize_t nseg, const char* text, Py_ssize_t n) noexcept nogil:
    """text.casefold() == (concatenated segs).casefold(); casefold maps each code point alone."""
    cdef pseg given
    cdef folder a, b
    cdef int64_t x, y
    given.text = text
    given.toks = NULL
    given.len = n
    a.segs = segs
    a.nseg = nseg
    b.segs = &given
    b.nseg = 1
    a.seg = a.off = b.seg = b.off = 0
    a.n_pending = a.next_pending = b.n_pending = b.next_pending = 0
    while True:
        x = _fold_next(&a)
        y = _fold_next(&b)
        if x != y:
            return False
        if x < 0:
            return True


# ---------------------------------------------------------------------- ARNs

cdef bint _arn_like(const pseg* segs, Py_ssize_t nseg, const unsigned char* text, Py_ssize_t n) noexcept nogil:
    """Six fields split at the first five ':' of pattern and value alike, each globbed alone."""
    cdef pcur cuts[6]              # the pattern's colons; cuts[5] is its end
    cdef Py_ssize_t marks[7]       # the value's field bounds (each field after marks[i] + 1)
    cdef Py_ssize_t i, found = 0, k
    cdef pcur start, end
    marks[0] = -1
    for i in range(n):
        if text[i] == b':':
            found += 1
            marks[found] = i
            if found == 5:
                break
    if found < 5:
        return False
    marks[6] = n
    found = 0
    for i in range(nseg):
        for k in range(segs[i].len):
            if (segs[i].toks[k] if segs[i].toks != NULL else <unsigned char>segs[i].text[k]) == b':':
                cuts[found].seg = i
                cuts[found].off = k
                found += 1
                if found == 5:
                    break
        if found == 5:
            break
    if found < 5:
        return False
    cuts[5].seg = nseg
    cuts[5].off = 0
    start.seg = 0
    start.off = 0
    for i in range(6):
        end = cuts[i]
        if not glob_range(segs, nseg, start, end, text + marks[i] + 1, marks[i + 1] - marks[i] - 1):
            return False
        start = end
        start.off += 1
    return True


# ---------------------------------------------------------------------- ConditionSet

cdef class ConditionSet:
    """Condition groups (one per statement) compiled to C; after freeze(), evaluated in C.

    ConditionSet(key_ids) -- key_ids maps lower-cased context keys to ids, shared with the
    caller; add_group() registers every condition key and policy-variable key not yet there
    (id len(key_ids)), so every context array built from the final dict covers them.
    """

    def __cinit__(self, dict key_ids):
        self._key_ids = key_ids
        self.patterns = PatternSet(key_ids)
        self.key_names = []
        self._name_ids = {}
        self._name_keys = []
        self._b_groups = []
        self._b_conds = []
        self._b_vals = []
        self._keep = []

    def __dealloc__(self):
        self._free_arrays()

    cdef void _free_arrays(self) noexcept:
        free(self._groups)
        free(self._conds)
        free(self._vals)
        free(self._names_key)
        self._groups = NULL
        self._conds = NULL
        self._vals = NULL
        self._names_key = NULL

    def __len__(self):
        return self._n_groups if self.frozen else len(self._b_groups)

    # ------------------------------------------------------------------ build phase

    cdef int32_t _name_id(self, str name):
        found = self._name_ids.get(name)
        if found is None:
            lowered = name.lower()
            key_id = self._key_ids.get(lowered)
            if key_id is None:
                key_id = self._key_ids[lowered] = len(self._key_ids)
            found = self._name_ids[name] = len(self.key_names)
            self.key_names.append(name)
            self._name_keys.append(key_id)
        return found

    def add_group(self, tuple conditions, bint substitute):
        """Compile one statement's conditions (evaluated in this order); return the group's
        index. substitute: the policy has Version 2012-10-17 (policy variables apply)."""
        if self.frozen:
            raise ValueError("ConditionSet is frozen; add_group() must come before freeze()")
        first = len(self._b_conds)
        names = set()
        for condition in conditions:
            self._b_conds.append(self._compile(condition, substitute))
            if self._b_conds[-1][0] != CF_NULL:
                names.add(self._b_conds[-1][6])
        self._b_groups.append((first, len(conditions), len(names)))
        return len(self._b_groups) - 1

    def _compile(self, condition, bint substitute):
        """A condition as (family, comparison, negated, qualifier, if_exists, key id, name id,
        unreadable, has_vars, first value, value count); its values go to _b_vals."""
        spec = OPERATORS[condition.base_operator]
        family = _FAMILIES[spec.family]
        comparison = _COMPARISONS[spec.comparison]
        name = self._name_id(condition.key)
        unreadable = False
        has_vars = False
        first = len(self._b_vals)
        if comparison == CC_EQUALS_IGNORE_CASE:
            _load_fold_table()
        for text in condition.values:
            # a value: (pattern, flag, text bytes, decimal bytes, network)
            if family == CF_STRING or family == CF_ARN:
                self._b_vals.append((self.patterns.add(text, substitute), 0, None, None, None))
                has_vars = has_vars or (substitute and "${" in text)
            elif family == CF_BINARY:
                self._b_vals.append((-1, 0, text.encode("utf-8", "surrogatepass"), None, None))
            elif family == CF_NULL:
                try:
                    flag = int(read_bool(text))
                except Exception:
                    flag = -1  # read when reached: Null stops at the first value that decides
                self._b_vals.append((-1, flag, None, None, None))
            else:
                try:
                    if family == CF_BOOL:
                        self._b_vals.append((-1, int(read_bool(text)), None, None, None))
                    elif family == CF_IP:
                        net = read_network(text)
                        self._b_vals.append((-1, 0, None, None, (
                            net.version, int(net.network_address), int(net.netmask))))
                    else:
                        bound = (read_number if family == CF_NUMERIC else read_date)(text)
                        self._b_vals.append((-1, 0, None, format(bound, "f").encode("ascii"), None))
                except Exception:
                    # only a value holding ${...} gets past the parser; the reference fails
                    # while reading it, before it evaluates any condition
                    unreadable = True
                    self._b_vals.append((-1, 0, None, None, None))
        return (family, comparison, spec.negated, _QUALIFIERS[condition.set_qualifier], condition.if_exists,
                self._name_keys[name], name, unreadable, has_vars, first, len(self._b_vals) - first)

    def freeze(self):
        """Compile the groups (and their patterns) into flat C arrays; later calls do nothing."""
        if self.frozen:
            return
        self.patterns.freeze()
        cdef Py_ssize_t n_groups = len(self._b_groups), n_conds = len(self._b_conds)
        cdef Py_ssize_t n_vals = len(self._b_vals), n_names = len(self.key_names), i
        cdef cond_t* c
        cdef cval* v
        cdef bytes data
        self._groups = <group_t*>calloc(n_groups + 1, sizeof(group_t))
        self._conds = <cond_t*>calloc(n_conds + 1, sizeof(cond_t))
        self._vals = <cval*>calloc(n_vals + 1, sizeof(cval))
        self._names_key = <int32_t*>calloc(n_names + 1, sizeof(int32_t))
        if not (self._groups and self._conds and self._vals and self._names_key):
            self._free_arrays()
            raise MemoryError()
        self._max_missing = 0
        for i, (first, count, names) in enumerate(self._b_groups):
            self._groups[i].first = first
            self._groups[i].count = count
            self._groups[i].n_names = names
            self._max_missing = max(self._max_missing, names)
        for i, spec in enumerate(self._b_conds):
            c = &self._conds[i]
            (c.family, c.comparison, c.negated, c.qualifier, c.if_exists, c.key, c.name, c.unreadable,
             c.has_vars, c.first, c.count) = spec
        for i, (pattern, flag, text, decimal, net) in enumerate(self._b_vals):
            v = &self._vals[i]
            v.pattern = pattern
            v.flag = flag
            if text is not None:
                data = text
                self._keep.append(data)
                v.text.ptr = PyBytes_AS_STRING(data)
                v.text.len = len(data)
            if decimal is not None:
                data = decimal
                self._keep.append(data)
                if not _read_decimal(<const unsigned char*>PyBytes_AS_STRING(data), 0, len(data), False, &v.num):
                    raise AssertionError(f"canonical decimal {decimal!r} does not read back")
            if net is not None:
                version, address, mask = net
                v.net.version = version
                v.net.hi = address >> 64
                v.net.lo = address & 0xFFFFFFFFFFFFFFFF
                v.net.mask_hi = mask >> 64
                v.net.mask_lo = mask & 0xFFFFFFFFFFFFFFFF
        for i in range(n_names):
            self._names_key[i] = self._name_keys[i]
        self._n_groups = n_groups
        self._n_conds = n_conds
        self._n_vals = n_vals
        self.nbytes = (self.patterns.nbytes + n_groups * sizeof(group_t) + n_conds * sizeof(cond_t)
                       + n_vals * sizeof(cval) + n_names * sizeof(int32_t) + sum(len(data) for data in self._keep))
        self._b_groups = self._b_conds = self._b_vals = None
        self.frozen = True

    # ------------------------------------------------------------------ C API (nogil)

    cdef Py_ssize_t scratch_segments(self) noexcept nogil:
        return self.patterns.max_segments()

    cdef Py_ssize_t max_missing(self, int32_t group) noexcept nogil:
        if not self.frozen or group < 0 or group >= self._n_groups:
            return 0
        return self._groups[group].n_names

    cdef Py_ssize_t max_missing_any(self) noexcept nogil:
        return self._max_missing

    cdef int32_t name_key(self, int32_t name) noexcept nogil:
        return self._names_key[name]

    cdef int holds(self, int32_t group, const ctx_entry* ctx, int32_t* missing,
                   int32_t* n_missing, pseg* scratch) noexcept nogil:
        if not self.frozen or group < 0 or group >= self._n_groups:
            return -1
        cdef const group_t* g = &self._groups[group]
        cdef const cond_t* c
        cdef const pseg* segs
        cdef int32_t start = n_missing[0], i, k
        cdef int result = 1, r
        # First every condition's comparator, in order, as statement_applies builds them:
        # typed policy values are read (a value holding ${...} fails the request) and String
        # and Arn values' variables resolved (one that cannot be makes the statement not apply).
        for i in range(g.first, g.first + g.count):
            c = &self._conds[i]
            if c.unreadable:
                return -1
            if c.has_vars:
                for k in range(c.first, c.first + c.count):
                    if self.patterns.segments(self._vals[k].pattern, ctx, scratch, &segs) < 0:
                        return 2
        # Then every condition against the request, in order; none is skipped.
        for i in range(g.first, g.first + g.count):
            r = self._condition(&self._conds[i], ctx, missing, n_missing, start, scratch)
            if r < 0:
                n_missing[0] = start  # the request fails; its missing keys do not matter
                return r
            if r == 0:
                result = 0
        return result

    cdef int _condition(self, const cond_t* c, const ctx_entry* ctx, int32_t* missing,
                        int32_t* n_missing, int32_t start, pseg* scratch) noexcept nogil:
        """condition_holds once the comparators exist: 1, 0, or -1 (an unreadable value)."""
        cdef const ctx_entry* entry = &ctx[c.key]
        cdef int32_t i, k
        cdef int m
        if c.family == CF_NULL:
            for i in range(c.first, c.first + c.count):
                if self._vals[i].flag < 0:
                    return -1
                if self._vals[i].flag == (entry.count < 0):
                    return 1
            return 0
        if entry.count < 0:
            for k in range(start, n_missing[0]):
                if missing[k] == c.name:
                    break
            else:
                missing[n_missing[0]] = c.name
                n_missing[0] += 1
            if c.if_exists or c.qualifier == CQ_ALL_VALUES:
                return 1
            if c.qualifier == CQ_ANY_VALUE:
                return 0
            return c.negated
        for i in range(entry.count):
            m = self._matches(c, <const unsigned char*>entry.values[i].ptr, entry.values[i].len, ctx, scratch)
            if m < 0:
                return -1
            if c.qualifier == CQ_ALL_VALUES:
                if m == c.negated:
                    return 0
            elif c.qualifier == CQ_ANY_VALUE:
                if m != c.negated:
                    return 1
            elif m:
                return not c.negated
        if c.qualifier == CQ_ALL_VALUES:
            return 1
        if c.qualifier == CQ_ANY_VALUE:
            return 0
        return c.negated

    cdef int _matches(self, const cond_t* c, const unsigned char* text, Py_ssize_t n,
                      const ctx_entry* ctx, pseg* scratch) noexcept nogil:
        """Whether one request value matches some policy value (positive sense): 1, 0, or -1
        when the value cannot be read."""
        cdef const cval* v
        cdef const pseg* segs
        cdef Py_ssize_t nseg
        cdef int32_t i
        cdef int flag, order
        cdef pcur start, end
        cdef ipnet address
        cdef decview number
        cdef char digits[40]
        cdef uint8_t family = c.family, comparison = c.comparison
        if family == CF_STRING or family == CF_ARN:
            start.seg = start.off = end.off = 0
            for i in range(c.first, c.first + c.count):
                nseg = self.patterns.segments(self._vals[i].pattern, ctx, scratch, &segs)
                if family == CF_ARN:
                    if _arn_like(segs, nseg, text, n):
                        return 1
                elif comparison == CC_LIKE:
                    end.seg = nseg
                    if glob_range(segs, nseg, start, end, text, n):
                        return 1
                elif comparison == CC_EQUALS:
                    if segments_equal(segs, nseg, <const char*>text, n):
                        return 1
                elif _folds_equal(segs, nseg, <const char*>text, n):
                    return 1
            return 0
        if family == CF_BINARY:
            for i in range(c.first, c.first + c.count):
                v = &self._vals[i]
                if v.text.len == n and memcmp(v.text.ptr, text, n) == 0:
                    return 1
            return 0
        if family == CF_BOOL:
            flag = _read_bool(text, n)
            if flag < 0:
                return -1
            for i in range(c.first, c.first + c.count):
                if self._vals[i].flag == flag:
                    return 1
            return 0
        if family == CF_IP:
            if not _read_address(text, n, &address):
                return -1
            for i in range(c.first, c.first + c.count):
                v = &self._vals[i]
                if (v.net.version == address.version and (address.hi & v.net.mask_hi) == v.net.hi
                        and (address.lo & v.net.mask_lo) == v.net.lo):
                    return 1
            return 0
        if family == CF_NUMERIC:
            if not _read_number(text, n, &number):
                return -1
        elif not _read_date(text, n, digits, &number):
            return -1
        for i in range(c.first, c.first + c.count):
            order = _compare(&number, &self._vals[i].num)
            if ((comparison == CC_EQUALS and order == 0) or (comparison == CC_LESS and order < 0)
                    or (comparison == CC_LESS_EQUALS and order <= 0) or (comparison == CC_GREATER and order > 0)
                    or (comparison == CC_GREATER_EQUALS and order >= 0)):
                return 1
        return 0

    # ------------------------------------------------------------------ Python API (tests)

    def evaluate(self, int group, context):
        """(result, missing) for a Python context (lower-cased keys; str or tuple values):
        holds()'s result code and the missing keys as spelled in the policy."""
        if not self.frozen:
            raise ValueError("freeze() the ConditionSet first")
        if not 0 <= group < self._n_groups:
            raise IndexError(group)
        cdef ContextArray ctx = ContextArray(self._key_ids, context)
        cdef int32_t* missing = <int32_t*>malloc((self.max_missing(group) + 1) * sizeof(int32_t))
        cdef pseg* scratch = <pseg*>malloc(self.scratch_segments() * sizeof(pseg))
        cdef int32_t n_missing = 0
        cdef int result
        if missing == NULL or scratch == NULL:
            free(missing)
            free(scratch)
            raise MemoryError()
        with nogil:
            result = self.holds(group, ctx.entries, missing, &n_missing, scratch)
        names = [self.key_names[missing[i]] for i in range(n_missing)]
        free(missing)
        free(scratch)
        return result, names


cdef bint _read_number(const unsigned char* s, Py_ssize_t n, decview* out) noexcept nogil:
    """read_number: the stripped text as [+-]?(\\d+(\\.\\d*)?|\\.\\d+)."""
    cdef Py_ssize_t a, b
    _strip(s, n, &a, &b)
    return _read_decimal(s, a, b, False, out)


def _read_date_for_tests(str text):
    """read_date as the compiled code reads it: the value as a decimal string, or None."""
    cdef bytes data = text.encode("utf-8", "surrogatepass")
    cdef decview value
    cdef char digits[40]
    if not _read_date(<const unsigned char*>PyBytes_AS_STRING(data), len(data), digits, &value):
        return None
    return _decview_text(&value)


def _read_number_for_tests(str text):
    """read_number as the compiled code reads it: the value as a decimal string, or None."""
    cdef bytes data = text.encode("utf-8", "surrogatepass")
    cdef decview value
    if not _read_number(<const unsigned char*>PyBytes_AS_STRING(data), len(data), &value):
        return None
    return _decview_text(&value)


def _compare_for_tests(str a, str b):
    """_compare of two read_number texts."""
    cdef bytes x = a.encode("utf-8", "surrogatepass"), y = b.encode("utf-8", "surrogatepass")
    cdef decview dx, dy
    if not (_read_number(<const unsigned char*>PyBytes_AS_STRING(x), len(x), &dx)
            and _read_number(<const unsigned char*>PyBytes_AS_STRING(y), len(y), &dy)):
        raise ValueError("not numbers")
    return _compare(&dx, &dy)


def _read_address_for_tests(str text):
    """ip_address as the compiled code reads it: (version, int) or None."""
    cdef bytes data = text.encode("utf-8", "surrogatepass")
    cdef ipnet address
    if not _read_address(<const unsigned char*>PyBytes_AS_STRING(data), len(data), &address):
        return None
    return address.version, (<object>address.hi << 64) | address.lo


cdef str _decview_text(const decview* x):
    """Normalised decimal text of a decview: sign, significant digits, exponent as 'dE-k'."""
    if x.sig < 0:
        return "0"
    cdef Py_ssize_t p = x.sig
    cdef int d
    digits = []
    while True:
        d = _next_digit(x, &p)
        if d < 0:
            break
        digits.append(chr(48 + d))
    text = "".join(digits).rstrip("0")
    return ("-" if x.neg else "") + f"0.{text}E{x.exp}"
