"""User-facing errors: raised for user mistakes, printed by the CLI as one line (no traceback)."""


class UserError(Exception):
    """A mistake in what the user gave us (missing file, bad layout, corrupt data, ...)."""


class DataError(UserError):
    """A dataset, video or label file that cannot be read as promised."""
