"""Errors the user can cause or fix, kept apart so the CLI can map each one to a single line.

`UserError` means bad input (config, seeds, API key): the CLI prints its message and exits 2.
`StopRun` means the run cannot go on (the server stayed down past the retry budget): the work
kept so far is saved, the message is printed, and the CLI exits 1. `Unreachable` is the StopRun
of a server that never answered: its message (URL and network error) is the whole report.
"""


class UserError(Exception):
    """Bad input the user can fix; one line, exit status 2."""


class StopRun(Exception):
    """The run must stop early; kept work is saved first; exit status 1."""


class Unreachable(StopRun):
    """No connection to the server before it ever answered; a bigger budget would not help."""
