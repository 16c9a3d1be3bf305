"""The replay's errors and exit codes, below everything that raises them (the drive-bag reader,
the evaluation, the player) so that each layer can say why a replay cannot go on."""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class ReplayError(RuntimeError):
    """The replay cannot go on; the message says what to fix. exit_code: what the CLI returns."""

    exit_code = EXIT_FAILURE


class UsageError(ReplayError):
    """A bad argument (a folder that does not exist, an output that would be replaced): exit code 2."""

    exit_code = EXIT_USAGE


class BagError(ReplayError):
    """The bag cannot be replayed (missing topic, wrong type, unreadable)."""

    exit_code = EXIT_USAGE


class NodeError(ReplayError):
    """localize_node failed to start or died; the message carries the tail of its log."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.exit_code = EXIT_USAGE if returncode == EXIT_USAGE else EXIT_FAILURE
