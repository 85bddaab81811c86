"""The exporter's errors. Each names the problem and says what to do instead."""

from __future__ import annotations


class ExportError(Exception):
    """Base class: an export could not be carried out."""


class UnsupportedModelError(ExportError):
    """The model has a part that cannot be exported exactly (proj_size, GRU, a head that mixes steps)."""


class CheckpointError(ExportError):
    """A checkpoint is missing, unreadable, or does not describe a stacked LSTM."""


class VerificationError(ExportError):
    """The exported graph does not reproduce PyTorch within tolerance.

    ``max_error`` is the largest absolute difference measured, ``tolerance`` the bound it broke.
    """

    def __init__(self, message: str, *, max_error: float, tolerance: float) -> None:
        super().__init__(message)
        self.max_error = max_error
        self.tolerance = tolerance
