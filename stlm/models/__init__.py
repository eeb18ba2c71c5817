"""The model zoo: embedder -> core -> head, every part behind a registry keyed by its config string.

from stlm.models import build_model, count_params, solve_budget
"""

from stlm.models.params import ParamCount, count_params, solve_budget
from stlm.models.shell import STLM, build_model

__all__ = ["STLM", "ParamCount", "build_model", "count_params", "solve_budget"]
