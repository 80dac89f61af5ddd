"""What a latency number depends on besides the model: CPU, cores, threads, library versions (docs/bench.md)."""

from __future__ import annotations

import os
import platform
from importlib import metadata

_LIBRARIES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "ai-edge-litert", "litert-torch", "executorch",
              "torchao", "mnv4")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int:
    """CPUs this process may run on (respects taskset / container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Distinct (package, core) pairs in /proc/cpuinfo, capped by the usable CPUs; usable CPUs when unknown."""
    cores: set[tuple[str, str]] = set()
    package = core = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "physical id":
                    package = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and core is not None:  # blank line ends one logical CPU
                    cores.add((package or "0", core))
                    package = core = None
        if core is not None:
            cores.add((package or "0", core))
    except OSError:
        pass
    return min(len(cores), usable_cpus()) if cores else usable_cpus()


def default_threads() -> int:
    """One thread per physical core: conv kernels gain nothing from SMT siblings, and oversubscription adds jitter."""
    return max(1, physical_cores())


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def capture_environment(threads: int) -> dict:
    import torch

    libraries = library_versions()
    libraries["torch"] = torch.__version__  # the build tag too (+cpu, +cu130): the metadata version drops it
    env = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count() or 1,
        "usable_cpus": usable_cpus(),
        "physical_cores": physical_cores(),
        "threads": threads,
        "platform": platform.platform(),
        "libraries": libraries,
        "torch_config": {
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "cuda": torch.cuda.is_available(),
        },
    }
    try:
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]  # > cores: the machine was busy; numbers noisy
    except OSError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["libraries"]["cuda"] = torch.version.cuda or ""
    return env
