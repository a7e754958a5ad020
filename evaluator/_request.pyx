# cython: language_level=3, embedsignature=True
"""How a request's text is read, compiled: ``Request.create`` checks and normalises a request here,
and both converters of the compiled engine read strings by ``text`` and ``context_text``. A single
call pays for these checks once, at C speed."""
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport intptr_t
from libc.string cimport memcmp

from ._identity cimport identity_clear, identity_get, identity_put, identity_table

from collections.abc import Mapping
from dataclasses import fields
from types import MemberDescriptorType

from .principals import Caller, RequestError


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    bint PyUnicode_IS_ASCII(object text)
    int PyObject_GenericSetAttr(object o, object name, object value) except -1
    Py_ssize_t PyDict_GET_SIZE(object d)
    PyObject* PyDict_SetDefault(object d, object key, object value) except NULL


cdef extern from "structmember.h":
    enum: T_OBJECT_EX


cdef extern from *:
    """
    static PyObject* request_object_new(PyObject* cls, PyObject* no_args) {
        return PyBaseObject_Type.tp_new((PyTypeObject*)cls, no_args, NULL);
    }

    static PyObject* request_dict_sized(Py_ssize_t n) {
    #if PY_VERSION_HEX < 0x030D0000
        return _PyDict_NewPresized(n);
    #else
        return PyDict_New();
    #endif
    }
    """
    object object_new "request_object_new"(object cls, tuple no_args)
    dict dict_sized "request_dict_sized"(Py_ssize_t n)


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


cdef Py_ssize_t KEPT = 4096
"""Entries each memo of this module keeps (principals, context key names): requests repeat both heavily; a
memo starts again when full, so hostile input cannot grow it without bound."""
cdef dict _callers = {}  # principal (exact str) -> Caller: ``Caller.parse`` is a Python call
cdef dict _folded = {}   # context key name (exact str) -> its lower case, which also carries its hash
cdef identity_table _folded_keys  # its keys by address: the first look (``_identity``)


cdef object _caller(str principal):
    caller = _callers.get(principal)
    if caller is None:
        caller = Caller.parse(principal)
        if len(_callers) >= KEPT:
            _callers.clear()
        _callers[principal] = caller
    return caller


cdef object _given_twice(object key):
    return RequestError(f"context key {shown(key)} is given twice (key names are case-insensitive)")


cdef dict _normalised(dict context, bint shared):
    """The context keyed by lower-case names, every value checked (``context_text``). ``shared``: the
    caller's own dict, read without a copy; then None at a value whose reading could run the caller's code
    (a list or tuple subclass, which might change the dict), to start again on a copy. Nothing else read
    here runs the caller's code, except to make the message of an error that ends the reading."""
    cdef dict normalised = dict_sized(len(context))  # no resize as it fills
    cdef Py_ssize_t size
    cdef intptr_t found
    for key, value in context.items():
        if type(key) is not str or not PyUnicode_IS_ASCII(key):
            key = text(key, "context key")
        if identity_get(&_folded_keys, <PyObject*>key, &found):
            folded = <object><PyObject*>found
        else:
            folded = _folded.get(key)
            if folded is None:
                if not key:
                    raise RequestError("context key names must be non-empty")
                folded = key.lower()
                if len(_folded) >= KEPT:
                    _folded.clear()
                    identity_clear(&_folded_keys)
                _folded[key] = folded
                if identity_put(&_folded_keys, <PyObject*>key, <intptr_t><PyObject*>folded) < 0:
                    raise MemoryError()
        if type(value) is str and PyUnicode_IS_ASCII(value):  # the common values, settled here
            pass
        elif value is True or value is False:
            value = "true" if value is True else "false"
        elif folded in normalised:  # told before the value is read, as for any other key given twice
            raise _given_twice(key)
        elif shared and type(value) is not list and type(value) is not tuple and isinstance(value, (list, tuple)):
            return None
        else:
            value = _context_value(key, value)
        size = PyDict_GET_SIZE(normalised)
        PyDict_SetDefault(normalised, folded, value)  # one lookup: a key given twice leaves the size as it was
        if PyDict_GET_SIZE(normalised) == size:
            raise _given_twice(key)
    return normalised


def create(cls, principal, action, resource, context=None, resource_account=None, session_tags=None):
    """Check and normalise a request; raises ``RequestError`` with what is wrong (``Request.create``)."""
    cdef Py_ssize_t size, account_at = 0, account_len = 0
    cdef const char* data
    principal = text(principal, "request principal")
    action = text(action, "request action")
    resource = text(resource, "request resource")
    caller = _caller(principal)
    data = PyUnicode_AsUTF8AndSize(action, &size)
    if not valid_action(data, size):
        raise RequestError(f"request action {shown(action)} is not service:Action")
    data = PyUnicode_AsUTF8AndSize(resource, &size)
    cdef bint star = size == 1 and data[0] == b"*"
    if not star and not arn_account(data, size, &account_at, &account_len):
        raise RequestError(f"request resource {shown(resource)} is neither an ARN nor \"*\"")
    global _checked_action, _checked_resource, _checked_account_at, _checked_account_len
    _checked_action, _checked_resource = action, resource
    _checked_account_at, _checked_account_len = account_at, account_len
    cdef const char* own
    cdef Py_ssize_t own_len
    if resource_account is None:
        resource_account = caller.account
        if account_len:  # the ARN's account: the caller's own string when it is the same (most often)
            own = PyUnicode_AsUTF8AndSize(resource_account, &own_len)
            if own_len != account_len or memcmp(own, data + account_at, account_len) != 0:
                resource_account = data[account_at:account_at + account_len].decode("utf-8")
    else:
        resource_account = text(resource_account, "resource account")
    cdef dict normalised = None
    if type(context) is dict:
        normalised = _normalised(context, True)
    elif context is not None and not isinstance(context, Mapping):
        raise RequestError(f"request context must be an object, not {type(context).__name__}")
    if normalised is None:
        normalised = _normalised(dict(context or {}), False)
    cdef dict tags = _tags(caller, session_tags) if session_tags is not None else {}
    # Built without __init__, which sets each field through object.__setattr__ (frozen): every field
    # is checked above, and a request is made per call on the single-call path. A Request's own slots are
    # filled in place; a subclass's fields are set as object.__setattr__ would (it may define them anew).
    request = _new(cls)
    cdef PyObject* values[N_FIELDS]
    values[:] = [<PyObject*>principal, <PyObject*>action, <PyObject*>resource, <PyObject*>resource_account,
                 <PyObject*>normalised, <PyObject*>tags]
    cdef Py_ssize_t i
    cdef PyObject** slot
    if cls is _request_type:
        for i in range(N_FIELDS):
            slot = <PyObject**>(<char*><PyObject*>request + _offsets[i])
            Py_XDECREF(slot[0])
            Py_INCREF(<object>values[i])
            slot[0] = values[i]
    else:
        for i in range(N_FIELDS):
            PyObject_GenericSetAttr(request, FIELDS[i], <object>values[i])
    return request


# The action and resource strings create checked last, held (so no other string takes their address): a single
# call on the request just made reads them without checking their shape again.
cdef object _checked_action = None
cdef object _checked_resource = None
cdef Py_ssize_t _checked_account_at = 0, _checked_account_len = 0


cdef bint checked_action(object action) noexcept:
    """Whether ``action`` is the very string ``create`` found a valid action last."""
    return action is _checked_action


cdef bint checked_resource(object resource, Py_ssize_t* start, Py_ssize_t* length) noexcept:
    """Whether ``resource`` is the very string ``create`` found an ARN or "*" last; if so, where its account
    field lies (as ``arn_account`` says; length 0 for "*")."""
    if resource is not _checked_resource:
        return False
    start[0], length[0] = _checked_account_at, _checked_account_len
    return True


cdef tuple FIELDS = ("principal", "action", "resource", "resource_account", "context", "session_tags")
cdef object _request_type = None  # ``Request``, whose fields lie at these offsets:
cdef Py_ssize_t _offsets[N_FIELDS]


def lay_out(cls):
    """Record where the slots of ``Request``'s fields lie (``request.py`` calls this once), so that ``create``
    fills them and the engine reads them (``request_fields``) with no attribute looked up by name."""
    global _request_type
    if tuple([f.name for f in fields(cls)]) != FIELDS:
        raise TypeError("Request's fields are not those create sets")
    for i, name in enumerate(FIELDS):
        descriptor = cls.__dict__.get(name)
        if type(descriptor) is not MemberDescriptorType \
                or (<PyMemberDescrObject*><PyObject*>descriptor).d_member.type != T_OBJECT_EX:
            raise TypeError(f"Request's field {name} is not an object slot")
        _offsets[i] = (<PyMemberDescrObject*><PyObject*>descriptor).d_member.offset
    _request_type = cls


cdef bint request_fields(object request, PyObject** values) noexcept:
    """The fields of a ``Request`` (exactly: a subclass may define them anew), borrowed, in ``FIELDS`` order;
    False for any other object, or one with a field deleted (it is read by name then)."""
    if type(request) is not _request_type:
        return False
    cdef Py_ssize_t i
    for i in range(N_FIELDS):
        values[i] = (<PyObject**>(<char*><PyObject*>request + _offsets[i]))[0]
        if values[i] == NULL:
            return False
    return True


cdef dict _tags(object caller, object session_tags):
    """The session tags of an assumed-role session, each key and value checked."""
    if type(session_tags) is not dict and not isinstance(session_tags, Mapping):
        raise RequestError("session tags must map tag keys to values")
    if caller.kind != "assumed-role":
        raise RequestError("session tags belong to an assumed-role session principal")
    cdef dict tags = {}
    for key, value in dict(session_tags).items():
        key = text(key, "session tag key")
        if any(key.lower() == other.lower() for other in tags):
            raise RequestError(f"session tag {shown(key)} is given twice (tag keys ignore case)")
        tags[key] = text(value, "session tag value")
    return tags


cdef object _made = None  # the last class object.__new__ accepted, which it would accept again


cdef object _new(object cls):
    """``object.__new__(cls)``, its checks made once per class."""
    global _made
    if cls is not _made:
        request = object.__new__(cls)
        _made = cls
        return request
    return object_new(cls, ())
