"""The `skiporacle` command line: every parser and command, on top of the one-way flow
data -> search -> eval (heal beside it) -> oracle -> controller.  Nothing below imports it."""
