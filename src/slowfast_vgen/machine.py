"""What a benchmark ran on: recorded with every ``sfvgen bench`` result (docs/benchmarks.md)."""

from __future__ import annotations

import platform
from datetime import date
from typing import Any

import torch


def machine() -> dict[str, Any]:
    info = {"date": date.today().isoformat(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
