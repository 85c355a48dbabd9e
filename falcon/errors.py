"""The one exception type users see.

Anything raised as :class:`FalconError` is a problem with the user's input or environment (a bad
layer spec, an unknown model, a missing file, no network). The CLI prints its message on one line
and exits non-zero; the app shows it with ``st.error``. Every other exception is a bug.
"""


class FalconError(ValueError):
    """A user-facing error whose message says what to change."""


def one_line(text: object, limit: int = 180, empty: str = "unknown error") -> str:
    """``text`` (an exception, say) on one line, whitespace collapsed, cut to ``limit`` characters with "…"."""
    s = " ".join(str(text).split()) or empty
    return s if len(s) <= limit else s[: limit - 1] + "…"
