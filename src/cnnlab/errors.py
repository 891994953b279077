"""Errors a user can cause. The CLI turns each into one line on stderr and exit status 2."""


class CnnlabError(Exception):
    """A problem the user can fix: bad option, missing or corrupt file, bad input.

    The message must say what is wrong and how to fix it, in one line.
    """

    exit_code = 2


class DataError(CnnlabError):
    """Dataset files are missing, corrupt or unreadable."""


class RunError(CnnlabError):
    """A run folder (weights, config, metrics) is missing, corrupt or does not fit its model."""


class Interrupted(CnnlabError):
    """Training was stopped by Ctrl-C or SIGTERM after writing a resumable checkpoint.

    exit_code is 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as shells expect.
    """

    def __init__(self, message: str, exit_code: int, run_dir=None):
        super().__init__(message)
        self.exit_code = exit_code
        self.run_dir = run_dir
