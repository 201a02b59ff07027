"""Helpers shared by the benchmarks: machine description, peak-memory meters, timing.

Peak memory is measured as an *increase* over a baseline taken after the model and its inputs exist:

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` at the baseline. Exact for tensors (the caching allocator's own slack and
  the CUDA context are not counted), so several rows can share one process.
* CPU: the process' peak resident set (``VmHWM`` in ``/proc/self/status``) minus its resident set at
  the baseline. Linux resets ``VmHWM`` to the current RSS when ``5`` is written to
  ``/proc/self/clear_refs``; where that is not allowed we fall back to ``ru_maxrss``, which can only
  grow, and say so in the result (``memory_meter``). Resident-set numbers include whatever the C
  allocator keeps after a free, which is why the CPU benchmark runs each row in a fresh process.
"""

from __future__ import annotations

import datetime as _dt
import functools
import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "REPO_ROOT",
    "start_provenance",
    "DTYPES",
    "MemoryMeter",
    "machine_info",
    "provenance_info",
    "sync",
    "time_calls",
    "summarize_times",
    "available_memory_bytes",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _ru_maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def _rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else _ru_maxrss_bytes()


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory increase of a block of work on ``device``.

    ``start()`` collects garbage, takes the baseline and resets the peak; ``peak_increase()`` is the
    peak since ``start()`` minus that baseline, in bytes.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.baseline = 0
        self.kind = ""

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda max_memory_allocated - memory_allocated at baseline"
        else:
            resettable = _reset_rss_peak()
            self.baseline = _rss_bytes()
            self.kind = ("VmHWM - VmRSS at baseline (peak reset via /proc/self/clear_refs)" if resettable
                         else "ru_maxrss - VmRSS at baseline (peak not resettable: includes model build)")

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        kb = _status_kb("VmHWM")
        return kb * 1024 if kb is not None else _ru_maxrss_bytes()

    def peak_increase(self) -> int:
        return max(self.peak() - self.baseline, 0)


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a run could use: total GPU memory, or MemAvailable of the host."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], repeats: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (device synchronized around each). The
    result of each call is dropped before the next one starts."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        del out
    return times


def summarize_times(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


# ---------------------------------------------------------------------------------------------
# where a result came from
# ---------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, memory, load, and the GPU when ``device`` is CUDA."""
    device = torch.device(device)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    mem = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_total_bytes": mem,
        "load_average_at_start": _load_average(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_name=props.name, gpu_memory_bytes=int(props.total_memory),
                    gpu_capability=f"{props.major}.{props.minor}", cuda_version=torch.version.cuda)
    return info


@functools.cache
def _git_dirty() -> bool | None:
    """Whether tracked files differ from HEAD, read once per process (``start_provenance``)."""
    try:
        res = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(res.stdout.strip()) if res.returncode == 0 else None


def start_provenance() -> None:
    """Read the git commit and whether the tree is dirty now, as the benchmark starts: both are cached, so a
    commit or edit made while it runs (minutes) is not recorded as what it ran. Called on import."""
    from sinkinterp import provenance

    provenance.git_commit()
    _git_dirty()


def provenance_info(argv: list[str]) -> dict[str, Any]:
    """Versions, git commit (as the process started), date and the exact command line of this run."""
    import shlex

    from sinkinterp import provenance

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *argv]),
        "versions": provenance.versions(),
        "git_commit": provenance.git_commit(),
        "git_dirty": _git_dirty(),
    }


start_provenance()
