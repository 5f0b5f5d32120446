"""The environment a model runs in: capture, compare, judge, export."""

from .capture import canonical_name, capture_environment, clear_cache
from .compare import KINDS, LEVELS, Difference, compare_environments, version_level
from .export import export_dockerfile, export_requirements, roots_for_flavor
from .policy import EnvironmentWarning, EnvPolicy, Verdict, evaluate, fix_command

__all__ = [
    "KINDS",
    "LEVELS",
    "Difference",
    "EnvPolicy",
    "EnvironmentWarning",
    "Verdict",
    "canonical_name",
    "capture_environment",
    "clear_cache",
    "compare_environments",
    "evaluate",
    "export_dockerfile",
    "export_requirements",
    "fix_command",
    "roots_for_flavor",
    "version_level",
]
