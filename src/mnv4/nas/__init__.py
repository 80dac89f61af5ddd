"""Architecture search: the MobileNetV4 paper's two-stage TuNAS search over the UIB space (paper §6.1, App. A).

Library use::

    from mnv4.nas import SearchConfig, search
    result = search(SearchConfig(space="conv_small", data="/data/imagenet", target_model="mobilenetv4_conv_small",
                                 ridge_point="pixel8-edgetpu"))
    result.spec          # the found architecture, also written as a spec file (create_model takes it)

Command line: ``mnv4 search ...`` (see docs/nas.md).
"""

from .config import SearchConfig
from .controller import Controller, Reinforce, RLSchedule, reward
from .report import spec_as_python
from .search import SearchResult, StageResult, make_cost, resolve_target, search
from .space import SPACES, Decision, SearchSpace, StageSpace, get_space
from .supernet import SuperNet

__all__ = [
    "SPACES",
    "Controller",
    "Decision",
    "RLSchedule",
    "Reinforce",
    "SearchConfig",
    "SearchResult",
    "SearchSpace",
    "StageResult",
    "StageSpace",
    "SuperNet",
    "get_space",
    "make_cost",
    "resolve_target",
    "reward",
    "search",
    "spec_as_python",
]
