"""The run machinery every training in mnv4 shares: classification (``mnv4.train``), detection
(``mnv4.detection``), the search's supernet (``mnv4.nas``) and segmentation (``mnv4.segmentation``) are tasks on one
step loop with one set of guarantees (``loop.Engine``, ``loop.Task``).

Modules, from the bottom up (each imports only those above it in this list, and nothing outside ``mnv4.errors`` /
``mnv4.specs``):

- ``outputs``: output paths checked before work, files written under a temporary name and moved into place when
  checked, temporary files of killed writers removed, fingerprints of the data an artefact was made from;
- ``seeds``: seed streams and the samplers that make a run a function of its seed;
- ``distributed``: the process group under ``torchrun``, reductions, SyncBN;
- ``checkpoint``: atomic checkpoint files, read without unpickling code, with fall-backs past unreadable ones;
- ``config``: ``RunConfig`` / ``SupervisedConfig`` (the fields runs share) and one check of every config's fields;
- ``guard``: the NaN/inf stop before a bad value reaches the weights, BN statistics, optimiser or EMA;
- ``metrics``: ``steps.csv`` / ``epochs.csv`` / TensorBoard, cut back to the step a run resumes from;
- ``optim``: parameter groups, optimisers by name, LR schedules by name (warm-up + cosine or poly), one optimiser
  step;
- ``plan``: the step arithmetic (micro-batches, accumulation, steps per epoch, warm-up);
- ``state``: ``RunState``, what a checkpoint holds;
- ``resume``: the checks a checkpoint passes to continue a run, and ``best.pt`` repair;
- ``device``: the run's process group and torch settings, autocast, DDP / compile, the EMA;
- ``loop``: ``Engine`` and ``Task``.
"""

from .checkpoint import atomic_save, checkpoint_to_resume, list_checkpoints, load_checkpoint, prune_checkpoints
from .config import RunConfig, SupervisedConfig, check_fields
from .guard import NonFiniteError, NonFiniteGuard, NonFiniteLossError
from .loop import Engine, Task
from .metrics import MetricLog
from .optim import SCHEDULES, Optimization, OptimizerSettings, WarmupCosine, WarmupPoly, param_groups
from .outputs import (
    check_output_file,
    check_output_folder,
    claim_run_folder,
    fingerprint,
    remove_stale_temp_files,
    staged_file,
    write_text_file,
)
from .plan import RunPlan
from .seeds import MicroBatchSampler, ShardSampler, mix_seed
from .state import EpochTotals, RunState

__all__ = [
    "Engine",
    "EpochTotals",
    "MetricLog",
    "MicroBatchSampler",
    "NonFiniteError",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "Optimization",
    "OptimizerSettings",
    "RunConfig",
    "RunPlan",
    "RunState",
    "SCHEDULES",
    "ShardSampler",
    "SupervisedConfig",
    "Task",
    "WarmupCosine",
    "WarmupPoly",
    "atomic_save",
    "check_fields",
    "check_output_file",
    "check_output_folder",
    "checkpoint_to_resume",
    "claim_run_folder",
    "fingerprint",
    "list_checkpoints",
    "load_checkpoint",
    "mix_seed",
    "param_groups",
    "prune_checkpoints",
    "remove_stale_temp_files",
    "staged_file",
    "write_text_file",
]
