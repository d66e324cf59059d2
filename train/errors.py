"""The errors `vlm train` stops on, each carrying its exit code: 2 configuration, 3 non-finite loss, 4 data,
5 replay mismatch."""
from __future__ import annotations

from conversation.errors import ImageLoadError, RecordError, RecordFileError
from instruct_data.audit import AuditError
from vlm.fingerprint import FingerprintDrift


class TrainError(Exception):
    """An error the user can act on, printed as one line; `vlm train` exits with `exit_code`."""

    exit_code = 1


class ConfigError(TrainError, ValueError):
    """A configuration value or key that cannot be used, naming the key and why."""

    exit_code = 2


class NonFiniteLossError(TrainError, RuntimeError):
    """The loss became NaN/inf; the run stopped before the optimizer step, checkpoints untouched."""

    exit_code = 3


class DataFailure(TrainError, RuntimeError):
    """The data fed to the model cannot train the run (nothing supervised, too many skips); the message says why."""

    exit_code = 4


class ReplayMismatch(TrainError, RuntimeError):
    """`--replay-step N` recomputed a loss that differs from the logged one: the step is not reproducible."""

    exit_code = 5


# Errors of the lower layers (which cannot derive from TrainError) and what `vlm train` exits with on them.
LOWER_EXIT_CODES: dict[type[BaseException], int] = {
    FileNotFoundError: 2,  # the config file, a data file, a model directory
    RecordFileError: 2,  # names the record file
    AuditError: 4,  # the pre-flight audit found data that cannot train
    RecordError: 4,  # a bad record under data.guards.strict
    ImageLoadError: 4,  # a bad image under data.guards.strict
    FingerprintDrift: 2,  # the preprocessing changed since the checkpoint, under checkpoint.strict_fingerprint
}


def exit_code(err: BaseException) -> int | None:
    """The exit code for an error the user can act on; None for a bug (let its traceback show)."""
    if isinstance(err, TrainError):
        return err.exit_code
    return next((code for cls, code in LOWER_EXIT_CODES.items() if isinstance(err, cls)), None)
