"""iam-evaluator: AWS IAM policy evaluation, faithful and fast.

parse → validate → evaluate: ``parse_policy`` builds the immutable model,
``validate_policy`` adds type, catalog, size and security findings, ``reference.evaluate``
decides a request exactly as AWS's documented logic does.
"""
from importlib.metadata import PackageNotFoundError, version

from .decision import Decision, DecisionKind, StatementRef
from .findings import Finding, PolicyValidationError, Severity
from .model import Condition, Effect, Policy, Principal, Statement
from .parse import PolicyKind, parse_policy
from .principals import RequestError
from .request import PolicySet, Request

try:
    __version__ = version("iam-evaluator")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Condition", "Decision", "DecisionKind", "Effect", "Finding", "Policy", "PolicyKind", "PolicySet",
    "PolicyValidationError", "Principal", "Request", "RequestError", "Severity", "Statement", "StatementRef",
    "parse_policy",
]
