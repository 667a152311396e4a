"""Writing a Faust table from a batch (``take_events``), keeping the source partition.

``table[key] = value`` needs Faust's current event to pick the changelog partition, and a
batch has none; ``use_partitioner=True`` would hash the key instead, so with several
workers a key's changelog could land on a partition another worker owns (see the Faust
notes). ``put`` stores the value and sends it to the changelog partition of the event it
came from, like ``table[key] = value`` inside ``async for event in stream`` would.
"""

from __future__ import annotations


def put(table, key, value, partition: int) -> None:
    table.data[key] = value  # the store, without Faust's own (event-bound) changelog write
    table.send_changelog(partition, key, value)

