"""Entity batches as messages: an EntityBatch header plus its records in the payload frame.

``make_batch`` gives what ``encode_message`` needs; ``decode_batch`` turns a decoded
ENTITY_BATCH back into records and checks the payload against its header.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from corec_node.wire import limits
from corec_node.wire.entities import (
    DEFAULT_ZSTD_LEVEL,
    RECORD_BYTES,
    as_entity_array,
    decode_entities,
    encode_entities,
    frame_record_count,
)
from corec_node.wire.errors import WireError
from corec_node.wire.messages import EntityBatch


def make_batch(
    records: Any, channel: int, *, compress: bool = False, level: int = DEFAULT_ZSTD_LEVEL
) -> tuple[EntityBatch, bytes]:
    """``(EntityBatch, payload)`` for records that all belong to ``channel``.

    Raises ValueError if a record has another channel (a batch travels on its channel's
    topic, so subscribers to that topic must only get that channel) or is invalid.
    """
    arr = as_entity_array(records)
    if arr.size and not (arr["channel"] == channel).all():
        raise ValueError(f"batch for channel {channel} holds records of other channels")
    payload = encode_entities(arr, compress=compress, level=level)
    return EntityBatch(channel=channel, count=len(arr), compressed=compress), payload


def decode_batch(
    msg: EntityBatch, payload: Any, *, max_records: int = limits.MAX_BATCH_RECORDS
) -> np.ndarray:
    """Records of a decoded ENTITY_BATCH (read-only array; ``.copy()`` to write).

    WireError "count" if the payload does not hold ``msg.count`` records (checked before
    decompressing), "channel" if a record's channel is not the header's, "too_large" if
    ``msg.count`` exceeds ``max_records``; plus every reason of ``decode_entities``.
    """
    if msg.count > max_records:
        raise WireError("too_large", f"{msg.count} records > {max_records}")
    check_batch_payload(msg, payload)
    arr = decode_entities(payload, compressed=msg.compressed, max_records=msg.count)
    if arr.size and not (arr["channel"] == msg.channel).all():
        raise WireError("channel", f"records of another channel in a channel {msg.channel} batch")
    return arr


def check_batch_payload(msg: EntityBatch, payload: Any) -> None:
    """Check, without decompressing, that ``payload`` holds ``msg.count`` records.

    WireError "length" (raw bytes not whole records), "zstd" (no readable frame header or
    content size) or "count".
    """
    if msg.compressed:
        records = frame_record_count(payload)
    else:
        try:
            size = memoryview(payload).nbytes
        except TypeError:
            raise WireError("frames", "payload is not a byte buffer") from None
        if size % RECORD_BYTES:
            raise WireError("length", f"payload of {size} bytes is not whole records")
        records = size // RECORD_BYTES
    if records != msg.count:
        raise WireError("count", f"payload holds {records} records, header says {msg.count}")
