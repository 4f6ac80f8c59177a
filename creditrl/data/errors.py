"""The data error type (its own module so every data module can raise it without import cycles)."""


class DataError(ValueError):
    """A data problem with a message meant for the user: it names the file, the row, the field and the fix."""
