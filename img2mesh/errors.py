"""User-facing errors; see :mod:`recon.errors` for the contract (one sentence, non-zero exit, no traceback)."""

from recon.errors import InputError

__all__ = ["InputError"]
