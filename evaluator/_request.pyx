# cython: language_level=3, embedsignature=True
"""How a request's text is read, compiled: ``Request.create`` checks and normalises a request here,
and both converters of the compiled engine read strings by ``text`` and ``context_text``. A single
call pays for these checks once, at C speed."""
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

from collections.abc import Mapping

from .principals import Caller, RequestError


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)


cdef str shown(object value):
    """A value for an error message, cut short (messages travel in logs and gRPC trailers); never raises: a
    value that cannot show itself (nested deeper than ``repr`` goes, or whose ``__repr__`` fails) is named
    by its type."""
    try:
        text = repr(value)
    except Exception:  # RecursionError, or any error of a hostile __repr__
        return f"a {type(value).__name__} that cannot be shown"
    return text if len(text) <= 200 else text[:200] + "…"


cpdef str text(object value, str what):
    """A request string as IAM reads it: the characters of a ``str`` (a subclass is read for
    what it holds, never through its own methods), which must encode to UTF-8 (no lone
    surrogates). Every path that takes a request (``Request.create``, both converters of the
    compiled engine) reads strings by this rule."""
    if not isinstance(value, str):
        raise RequestError(f"{what} must be a string, not {shown(value)}")
    if type(value) is not str:
        value = str.__str__(value)
    if not PyUnicode_IS_ASCII(value):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(f"{what} is not valid Unicode text (a lone surrogate at {exc.start})") from None
    return value


cpdef str context_text(object value, object key):
    """One context value as IAM reads it: a string by ``text``, JSON booleans and numbers as
    their JSON text (subclasses of int and float by their value, never their own ``repr``)."""
    if type(value) is str and PyUnicode_IS_ASCII(value):  # the common case, settled before any message
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return text(value, f"context key {shown(key)}")
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    raise RequestError(f"context key {shown(key)}: values are strings, numbers, booleans or lists of them, "
                       f"not {shown(value)}")


cdef object _context_value(object key, object value):
    if isinstance(value, (list, tuple)):
        return tuple([context_text(item, key) for item in tuple(value)])
    return context_text(value, key)


def create(cls, principal, action, resource, context, resource_account, session_tags):
    """``Request.create``: check and normalise a request; raises ``RequestError`` with what is wrong."""
    cdef Py_ssize_t size, account_at = 0, account_len = 0
    cdef const char* data
    principal = text(principal, "request principal")
    action = text(action, "request action")
    resource = text(resource, "request resource")
    caller = Caller.parse(principal)
    data = PyUnicode_AsUTF8AndSize(action, &size)
    if not valid_action(data, size):
        raise RequestError(f"request action {shown(action)} is not service:Action")
    data = PyUnicode_AsUTF8AndSize(resource, &size)
    cdef bint star = size == 1 and data[0] == b"*"
    if not star and not arn_account(data, size, &account_at, &account_len):
        raise RequestError(f"request resource {shown(resource)} is neither an ARN nor \"*\"")
    if resource_account is None:
        resource_account = data[account_at:account_at + account_len].decode("utf-8") if account_len \
            else caller.account
    else:
        resource_account = text(resource_account, "resource account")
    if context is not None and type(context) is not dict and not isinstance(context, Mapping):
        raise RequestError(f"request context must be an object, not {type(context).__name__}")
    cdef dict normalised = {}
    for key, value in dict(context or {}).items():
        if type(key) is not str or not PyUnicode_IS_ASCII(key):
            key = text(key, "context key")
        if not key:
            raise RequestError("context key names must be non-empty")
        folded = key.lower()
        if folded in normalised:
            raise RequestError(f"context key {shown(key)} is given twice (key names are case-insensitive)")
        # A plain ASCII string, the common value, is settled here.
        normalised[folded] = value if type(value) is str and PyUnicode_IS_ASCII(value) \
            else _context_value(key, value)
    cdef dict tags = {}
    if session_tags is not None:
        if type(session_tags) is not dict and not isinstance(session_tags, Mapping):
            raise RequestError("session tags must map tag keys to values")
        if caller.kind != "assumed-role":
            raise RequestError("session tags belong to an assumed-role session principal")
        for key, value in dict(session_tags).items():
            key = text(key, "session tag key")
            if any(key.lower() == other.lower() for other in tags):
                raise RequestError(f"session tag {shown(key)} is given twice (tag keys ignore case)")
            tags[key] = text(value, "session tag value")
    # Built without __init__, which sets each field through object.__setattr__ (frozen): every field
    # is checked above, and a request is made per call on the single-call path.
    request = object.__new__(cls)
    cdef dict fields = request.__dict__
    fields["principal"] = principal
    fields["action"] = action
    fields["resource"] = resource
    fields["resource_account"] = resource_account
    fields["context"] = normalised
    fields["session_tags"] = tags
    return request
