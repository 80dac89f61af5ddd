"""``mnv4 bench``: latency of MobileNetV4 and the MobileNetV3 baselines on this machine, per runtime.

    from mnv4.bench import BenchConfig, run_benchmark, write_json
    report = run_benchmark(BenchConfig(models=["mobilenetv4_conv_small"], backends=["eager"]))
"""

from .backends import Backend, all_backends, resolve_backends
from .catalog import BASELINES, DEFAULT_MODELS, PAPER_MODELS, REFERENCE_MODEL, catalog_entry, resolve_models
from .environment import capture_environment, default_threads
from .results import BenchRecord, BenchReport, format_table, load_results, write_csv, write_json
from .runner import BenchConfig, run_benchmark
from .timing import Timing, time_callable

__all__ = [
    "BASELINES", "DEFAULT_MODELS", "PAPER_MODELS", "REFERENCE_MODEL", "Backend", "BenchConfig", "BenchRecord",
    "BenchReport", "Timing", "all_backends", "capture_environment", "catalog_entry", "default_threads",
    "format_table", "load_results", "resolve_backends", "resolve_models", "run_benchmark", "time_callable",
    "write_csv", "write_json",
]
