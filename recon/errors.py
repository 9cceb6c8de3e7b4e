"""The one exception type whose message is meant for the user.

Every stage raises :class:`InputError` for bad input it can explain in one sentence (what is wrong and how to fix
it). The CLI prints the message alone and exits non-zero; anything else is a bug and keeps its traceback.
``img2mesh`` re-exports it so both packages raise the same type.
"""


class InputError(Exception):
    """Bad input, missing weights or an unusable device, explained in one sentence naming the problem and a fix."""
