"""The one error type that means "the user's input is wrong", and the one that means "the run stopped; resume it"."""


class BadInput(ValueError):
    """An input problem the user can fix.

    The CLI prints the message as one line on stderr and exits with code 2;
    messages must therefore be a single line that names the offending value.
    """


class RunStopped(RuntimeError):
    """The run stopped before its end through no fault of its input (for example its worker processes kept dying).

    Everything it wrote is whole: `--resume` finishes it.  The CLI prints the message as one line on stderr
    and exits with code 1.
    """
