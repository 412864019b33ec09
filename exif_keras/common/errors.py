"""One error base for the whole package, one subclass per stage.

Every error a user can fix (a bad flag, a missing folder, damaged records, a photo that is not an
image) is an :class:`ExifKerasError`; the commands print its message in one line, without a
traceback. It derives from ``ValueError`` because every one of them is a bad value handed in,
and so that callers who catch ``ValueError`` keep working.
"""

from __future__ import annotations


class ExifKerasError(ValueError):
    """A problem the user can fix; its message says what to do."""


class RecordsError(ExifKerasError):
    """Converting photos to records, or reading records back (stage 1, ``records/``)."""


class DataError(ExifKerasError):
    """The input pipeline (stage 2, ``data/``)."""


class ModelError(ExifKerasError):
    """Building or loading a model or a run folder (stage 3, ``modeling/``)."""


class TrainError(ExifKerasError):
    """Training: bad configuration, no labelled example, devices (stage 4, ``training/``)."""


class ServingError(ExifKerasError):
    """Exporting or predicting (stage 5, ``serving/``)."""


class AnalysisError(ExifKerasError):
    """Studies, explanations, benchmarks (stage 6, ``analysis/``)."""
