"""kubetest-infra: end-to-end test infrastructure on Kubernetes (Kind).

Pipeline, one module a stage: ``tags → digest → build → load → render → apply → wait``, run as one
dependency graph by :mod:`kubetest_infra.orchestrate` from a ``suite.yaml``
(:mod:`kubetest_infra.suite`), under the ownership rules of :mod:`kubetest_infra.session`. The edges:
the ``kti`` command (:mod:`kubetest_infra.cli`) and the pytest plugin (:mod:`kubetest_infra.plugin`).
Documentation: ``docs/index.md`` (the tutorial is ``docs/tutorial.md``).
"""

from kubetest_infra.build import Builder, BuildEvent, BuildSpec, BuiltImage
from kubetest_infra.buildplan import BuildPlan, ImageUse, plan_build
from kubetest_infra.cleanup import Removal, gc, remove_run_images
from kubetest_infra.digest import InputDigest, compute_digest
from kubetest_infra.engine import Engine, EngineInfo, ImageInfo, get_engine
from kubetest_infra.errors import (
    BaseImageError,
    BuildError,
    BuildTimeoutError,
    CommandError,
    CommandTimeoutError,
    ConfigError,
    ContextError,
    DockerfileError,
    EngineError,
    EngineUnavailableError,
    KtiError,
    MultiBuildError,
    StaleImageError,
    TagError,
    UnknownEngineError,
)
from kubetest_infra.runner import CommandResult, Runner, SubprocessRunner
from kubetest_infra.tags import image_ref, new_run_id, parse_ref, require_pinned, resolve_run_id

__version__ = "0.1.0"

__all__ = [
    "BaseImageError",
    "BuildError",
    "BuildEvent",
    "BuildPlan",
    "BuildSpec",
    "BuildTimeoutError",
    "Builder",
    "BuiltImage",
    "CommandError",
    "CommandResult",
    "CommandTimeoutError",
    "ConfigError",
    "ContextError",
    "DockerfileError",
    "Engine",
    "EngineError",
    "EngineInfo",
    "EngineUnavailableError",
    "ImageInfo",
    "ImageUse",
    "InputDigest",
    "KtiError",
    "MultiBuildError",
    "Removal",
    "Runner",
    "StaleImageError",
    "SubprocessRunner",
    "TagError",
    "UnknownEngineError",
    "__version__",
    "compute_digest",
    "gc",
    "get_engine",
    "image_ref",
    "new_run_id",
    "parse_ref",
    "plan_build",
    "remove_run_images",
    "require_pinned",
    "resolve_run_id",
]
