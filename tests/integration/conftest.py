"""Integration-tier helpers: tests here import ``actuation`` (shared actuation helpers) from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
