"""`base.errors.status_for`: the google.rpc.Status a domain error becomes."""

from __future__ import annotations

from google.rpc import error_details_pb2

from base.errors import NotFound, ResourceExhausted, status_for


def _retry_info(status: object) -> error_details_pb2.RetryInfo | None:
    for detail in status.details:  # type: ignore[attr-defined]
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    return None


def test_resource_exhausted_with_retry_after_carries_retry_info() -> None:
    status = status_for(
        ResourceExhausted("slow down", reason="LOGIN_THROTTLED", retry_after_s=42.5)
    )
    assert status.code == 8  # RESOURCE_EXHAUSTED
    info = _retry_info(status)
    assert info is not None and info.retry_delay.ToMilliseconds() == 42_500


def test_errors_without_retry_after_carry_no_retry_info() -> None:
    assert _retry_info(status_for(ResourceExhausted("quota"))) is None
    assert _retry_info(status_for(NotFound("gone"))) is None
