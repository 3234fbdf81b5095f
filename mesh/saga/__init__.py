"""Orchestrated sagas persisted in the orchestrating service's database.

A `SagaDefinition` is an ordered list of `Step`s (action + compensation); a
`SagaRunner` runs them, records progress step by step in `mesh_saga`
(`saga_migrations()`), compensates in reverse on failure, resumes unfinished
sagas after a crash (`recover()`) and parks compensations that keep failing.
"""

from mesh.saga.classify import (
    Classifier,
    default_classifier,
    failure_of,
    is_transient_db_error,
    status_code,
)
from mesh.saga.errors import SagaBusy, SagaConflict, SagaFailed, SagaInterrupted, StepCancelled
from mesh.saga.metrics import SagaMetrics
from mesh.saga.model import (
    ErrorKind,
    Phase,
    SagaContext,
    SagaDefinition,
    SagaFailure,
    SagaResult,
    SagaState,
    SagaStatus,
    SagaTransition,
    Step,
    StepAction,
    StepRetry,
    TransitionEvent,
    TransitionHook,
)
from mesh.saga.runner import DEFAULT_COMPENSATION_RETRY, SagaRunner, default_owner
from mesh.saga.store import SAGA_MIGRATION_VERSION, SAGA_TABLE, SagaStore, saga_migrations

__all__ = [
    "DEFAULT_COMPENSATION_RETRY",
    "SAGA_MIGRATION_VERSION",
    "SAGA_TABLE",
    "Classifier",
    "ErrorKind",
    "Phase",
    "SagaBusy",
    "SagaConflict",
    "SagaContext",
    "SagaDefinition",
    "SagaFailed",
    "SagaFailure",
    "SagaInterrupted",
    "SagaMetrics",
    "SagaResult",
    "SagaRunner",
    "SagaState",
    "SagaStatus",
    "SagaStore",
    "SagaTransition",
    "Step",
    "StepAction",
    "StepCancelled",
    "StepRetry",
    "TransitionEvent",
    "TransitionHook",
    "default_classifier",
    "default_owner",
    "failure_of",
    "is_transient_db_error",
    "saga_migrations",
    "status_code",
]
