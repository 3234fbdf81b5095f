"""Errors `SagaRunner.run` raises besides a step's own error; all map to gRPC statuses."""

from __future__ import annotations

import grpc

from base.errors import Aborted, AlreadyExists, ServiceError, Unavailable
from mesh.saga.model import SagaFailure


class SagaFailed(ServiceError):
    """The saga failed earlier (or in another process): its recorded failure, replayed.

    The first `run()` of a saga raises the step's own exception; later runs of
    the same saga id (a client retry) get this, with the same code and message."""

    def __init__(self, saga_id: str, failure: SagaFailure) -> None:
        super().__init__(failure.message or f"saga {saga_id} failed", reason=failure.reason)
        self.saga_id = saga_id
        self.failure = failure
        try:
            self.code = grpc.StatusCode[failure.code]
        except KeyError:
            self.code = grpc.StatusCode.INTERNAL


class SagaBusy(Aborted):
    """The saga is being run by another runner (its lease is live); retry later."""


class SagaInterrupted(Unavailable):
    """The saga could not record its progress (database down, transition hook failed).

    It stays unfinished in the database and is resumed by recovery or by the next
    `run()` of the same saga id."""


class SagaConflict(AlreadyExists):
    """The saga id is taken by a saga of another definition."""


class StepCancelled(Unavailable):
    """A step's action raised CancelledError while its drive was not being cancelled: it
    awaited something another task cancelled, or a call on a channel closed under it.
    Transient (UNAVAILABLE), as a dropped connection is: the step is retried, then
    undone as one that may have taken effect. Raised in its place, the CancelledError
    ended the drive with no failure recorded and its lease kept until it ran out."""
