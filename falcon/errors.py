"""The one exception type users see.

Anything raised as :class:`FalconError` is a problem with the user's input or environment (a bad
layer spec, an unknown model, a missing file, no network). The CLI prints its message on one line
and exits non-zero; the app shows it with ``st.error``. Every other exception is a bug.
"""


class FalconError(ValueError):
    """A user-facing error whose message says what to change."""
