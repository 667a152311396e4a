"""Unit-tier helpers: tests here import ``consumed`` (a consumed Kafka message without a broker) from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
