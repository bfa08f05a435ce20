"""${VAR} interpolation of a Compose file, as the Compose Specification defines it (12-interpolation.md).

The JSON Schema only makes sense of the file after it. The Python implementations on PyPI come inside
whole tools that do not fit here (docker-compose 1.29.2 requires jsonschema < 4 and PyYAML < 6;
podman-compose is a GPL-2.0 CLI that also folds service environments in), so this follows the spec's
grammar, operator by operator. Compose interpolates values, never keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
# The two-character operators first: ":-" must not be read as "-" after a name ending in ":".
OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    """What Compose stops on: a malformed expression, or a required variable without a value."""


def interpolate(document, env: Mapping[str, str]):
    """A copy of a parsed Compose document with every string value interpolated from `env`."""
    if isinstance(document, dict):
        return {key: interpolate(value, env) for key, value in document.items()}
    if isinstance(document, list):
        return [interpolate(item, env) for item in document]
    if isinstance(document, str):
        return substitute(document, env)
    return document


def substitute(text: str, env: Mapping[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):  # a literal dollar sign
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 1)
            out.append(_braced(text[i + 2 : end], env))
            i = end + 1
        elif match := NAME.match(text, i + 1):  # $VAR
            out.append(env.get(match.group(), ""))
            i = match.end()
        else:  # not a variable: kept as written
            out.append("$")
            i += 1
    return "".join(out)


def _closing_brace(text: str, opening: int) -> int:
    depth = 0
    for j in range(opening, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise InterpolationError(f"invalid interpolation format: unclosed brace in {text!r}")


def _braced(expression: str, env: Mapping[str, str]) -> str:
    match = NAME.match(expression)
    if not match:
        raise InterpolationError(f"invalid interpolation format: ${{{expression}}}")
    name, rest = match.group(), expression[match.end() :]
    value = env.get(name)
    if not rest:
        return value or ""  # unset: Compose warns and substitutes an empty string
    operator = next((op for op in OPERATORS if rest.startswith(op)), None)
    if operator is None:  # ${VAR/a/b} and other shell forms are not Compose
        raise InterpolationError(f"invalid interpolation format: ${{{expression}}}")
    argument = rest[len(operator) :]
    # With a colon, an empty value counts as unset.
    has_value = value is not None and (value != "" or not operator.startswith(":"))
    kind = operator[-1]
    if kind == "-":
        return value if has_value else substitute(argument, env)
    if kind == "+":
        return substitute(argument, env) if has_value else ""
    if not has_value:  # "?": required
        raise InterpolationError(f"required variable {name} is missing a value: {substitute(argument, env)}")
    return value
