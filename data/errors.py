"""The one error type that means "the user's input is wrong"."""


class BadInput(ValueError):
    """An input problem the user can fix.

    The CLI prints the message as one line on stderr and exits with code 2;
    messages must therefore be a single line that names the offending value.
    """
