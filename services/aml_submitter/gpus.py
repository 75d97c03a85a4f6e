"""GPU assignment for local trials: NNI's trialGpuNumber, maxTrialNumberPerGpu, useActiveGpu."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GpuAllocator", "GpuInfo", "detect_gpus"]


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as nvidia-smi reports it."""

    index: int
    active_processes: int


def detect_gpus() -> list[GpuInfo]:
    """The machine's GPUs (empty without nvidia-smi or a driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "--query-gpu=index,uuid", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
        apps = subprocess.run([smi, "--query-compute-apps=gpu_uuid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    busy = [line.strip() for line in apps.splitlines() if line.strip()]
    gpus = []
    for line in listing.splitlines():
        if not line.strip():
            continue
        index, uuid = (part.strip() for part in line.split(",", 1))
        gpus.append(GpuInfo(int(index), busy.count(uuid)))
    return gpus


@dataclass
class GpuAllocator:
    """Hands out GPU indices to trials; waits while none are free."""

    gpus: list[GpuInfo]
    _load: dict[int, int] = field(default_factory=dict)
    _freed: asyncio.Condition | None = None

    @classmethod
    def detect(cls) -> GpuAllocator:
        return cls(detect_gpus())

    def _candidates(self, service: dict[str, Any]) -> list[int]:
        per_gpu = int(service.get("maxTrialNumberPerGpu") or 1)
        use_active = bool(service.get("useActiveGpu"))
        allowed = service.get("gpuIndices")
        out = []
        for gpu in self.gpus:
            if allowed is not None and gpu.index not in allowed:
                continue
            if not use_active and gpu.active_processes and not self._load.get(gpu.index):
                continue  # someone else's process is on it
            if self._load.get(gpu.index, 0) < per_gpu:
                out.append(gpu.index)
        return out

    def try_acquire(self, count: int, service: dict[str, Any]) -> list[int] | None:
        """``count`` GPU indices if that many are free now, else None."""
        free = self._candidates(service)
        if len(free) < count:
            return None
        chosen = sorted(free, key=lambda i: (self._load.get(i, 0), i))[:count]
        for index in chosen:
            self._load[index] = self._load.get(index, 0) + 1
        return chosen

    async def acquire(self, count: int, service: dict[str, Any]) -> list[int]:
        """Wait until ``count`` GPUs are free; raises ValueError if the machine never has that many."""
        if count > len(self.gpus):
            raise ValueError(f"trialGpuNumber is {count} but this machine has {len(self.gpus)} GPU(s)")
        if self._freed is None:
            self._freed = asyncio.Condition()
        async with self._freed:
            while (chosen := self.try_acquire(count, service)) is None:
                await self._freed.wait()
        return chosen

    def release(self, indices: list[int]) -> None:
        for index in indices:
            self._load[index] = max(0, self._load.get(index, 0) - 1)
        if self._freed is not None:
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        assert self._freed is not None
        async with self._freed:
            self._freed.notify_all()
