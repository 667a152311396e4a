"""Pure, Kafka-free logic: no I/O, time passed in."""

import os

# Haystack reports usage to its vendor unless told not to; opsloop sends nothing off-site by default.
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
