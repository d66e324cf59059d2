"""Error types of the data path: bad records, unreadable record files and unreadable images."""
from __future__ import annotations


class RecordError(ValueError):
    """A record that cannot be used, naming the record, the offending field and why."""

    def __init__(self, record_id: str, field: str, reason: str) -> None:
        self.record_id = str(record_id)
        self.field = field
        self.reason = reason
        super().__init__(f"record {self.record_id!r}: {field}: {reason}")

    def __reduce__(self):  # keep the three fields when pickled across DataLoader workers
        return (type(self), (self.record_id, self.field, self.reason))


class RecordFileError(ValueError):
    """A record file that cannot be used (or not past some position): the message names the file and where."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class ImageLoadError(OSError):
    """An image file that cannot be resolved, opened or decoded safely."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"image {self.path!r}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))
