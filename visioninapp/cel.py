"""CEL as the Kubernetes API server evaluates it in `x-kubernetes-validations`.

One environment for everything that evaluates our CRD rules (the pydantic models, `validate`, the
cluster harness), so a rule that compiles here is written in the dialect a real API server accepts:
standard CEL plus the `strings` and `optional` extensions that Kubernetes enables. Rules are written
with standard functions only; Kubernetes-only libraries (`quantity`, `isSorted`, ...) are not bound,
so a rule using one fails to compile here, at CRD generation time, instead of in a user's cluster.

`regex_matches` is the same RE2 engine for the schema's `pattern` keyword: the API server checks
patterns with Go's regexp (RE2 syntax, where `$` is the end of the text unless `(?m)` is set), which
Python's `re` does not reproduce (its `$` also matches before a trailing newline).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_optional, ext_strings

__all__ = ["CelError", "compile_rule", "evaluate_rule", "regex_matches"]


class CelError(ValueError):
    """A rule failed to compile or to evaluate."""


@lru_cache(maxsize=1)
def _environment() -> Any:
    return cel.NewEnv(
        variables={"self": cel.Type.DYN, "oldSelf": cel.Type.DYN},
        extensions=[ext_strings.ExtStrings(), ext_optional.ExtOptional()],
    )


@lru_cache(maxsize=512)
def compile_rule(rule: str) -> Any:
    """Compile a rule once; raises `CelError` with the compiler's message when it is invalid."""
    try:
        return _environment().compile(rule)
    except RuntimeError as error:
        raise CelError(f"invalid CEL rule {rule!r}: {error}") from None


def evaluate_rule(rule: str, self_value: Any, old_self: Any = None) -> bool:
    """Evaluate a rule against plain JSON data, as the API server does after defaulting.

    A rule that does not evaluate to a boolean (for example a missing key without `has()`) is an
    error, as it is in Kubernetes.
    """
    data: dict[str, Any] = {"self": self_value}
    if old_self is not None:
        data["oldSelf"] = old_self
    result = compile_rule(rule).eval(data=data)
    value = result.value()
    if not isinstance(value, bool):
        raise CelError(f"rule {rule!r} did not evaluate to a boolean: {value}")
    return value


@lru_cache(maxsize=1)
def _regex_program() -> Any:
    env = cel.NewEnv(variables={"value": cel.Type.STRING, "pattern": cel.Type.STRING})
    return env.compile("value.matches(pattern)")


def regex_matches(pattern: str, value: str) -> bool:
    """Whether RE2 finds `pattern` in `value` (unanchored, as Go's `regexp.MatchString`)."""
    try:
        result = _regex_program().eval(data={"value": value, "pattern": pattern}).value()
    except RuntimeError as error:
        raise CelError(f"invalid regular expression {pattern!r}: {error}") from None
    if not isinstance(result, bool):
        raise CelError(f"invalid regular expression {pattern!r}: {result}")
    return result
