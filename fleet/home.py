"""FLEET_HOME: where the controller keeps job records and logs (and a `local` host's work)."""

from __future__ import annotations

import os
from pathlib import Path


def fleet_home() -> Path:
    """$FLEET_HOME, default ~/.fleet."""
    return Path(os.environ.get("FLEET_HOME") or Path.home() / ".fleet").expanduser()
