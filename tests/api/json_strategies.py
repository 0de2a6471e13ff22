"""Hypothesis strategies for hostile JSON: any value, including what Python's
JSON parser accepts but JSON/UTF-8 cannot carry back (NaN, ±Infinity, lone surrogates)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

# st.text() never draws surrogates; a JSON body can hold them as "\ud800" escapes.
LONE_SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
TEXT = st.lists(st.characters() | LONE_SURROGATES, max_size=12).map("".join)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # includes nan, inf, -inf
    | TEXT
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)


# Values near what the fields take (small numbers around their bounds, short
# strings and lists of them), so that many drawn requests are valid or only
# just not: any JSON alone is nearly always a 422 on the first field.
PLAUSIBLE = (
    st.integers(-2, 130)
    | st.floats(-1.0, 11.0)
    | st.booleans()
    | st.none()
    | st.text(max_size=6)
    | st.lists(st.text(max_size=4), max_size=3)
    | st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=2)
)
# The values known to have crashed the gateway, alone or nested somewhere in a
# list or object: drawn often, not left to chance.
KILLERS = st.sampled_from([float("nan"), float("inf"), float("-inf"), "\ud800", "a\udfffb", 10**400])
HOSTILE = st.recursive(
    KILLERS,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=2)
        | st.dictionaries(st.text(max_size=3) | LONE_SURROGATES, inner, min_size=1, max_size=2)
    ),
    max_leaves=3,
)
# An object with a killer inside and plain keys: what reaches `metadata`'s own check.
HOSTILE_OBJECT = st.dictionaries(st.text(max_size=3), HOSTILE, min_size=1, max_size=2)
FIELD_VALUES = st.one_of(KILLERS, HOSTILE_OBJECT, HOSTILE, JSON, PLAUSIBLE)


def dumps(value) -> bytes:
    """As a client could send it: NaN/Infinity literals, surrogates as \\uXXXX escapes."""
    return json.dumps(value, allow_nan=True, ensure_ascii=True).encode()
