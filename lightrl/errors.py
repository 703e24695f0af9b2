"""The two ways lightrl stops on purpose; `python -m lightrl.run` prints either as one `lightrl: error:` line."""


class UserError(ValueError):
    """A configuration or input error the user can fix (exit status 2); the message says what, where and how."""


class RunStopped(RuntimeError):
    """A run that started stopped on purpose, e.g. a failed checkpoint save (exit status 1)."""
