"""The one exception every decoder raises."""

from __future__ import annotations


class WireError(ValueError):
    """A peer sent bytes that do not follow protocol/SPEC.md.

    It is always the remote side's fault: the receiver drops the frame, counts it under
    ``reason`` and carries on. Nothing else ever escapes a decoder.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
