"""The one exception tree: every failure the service raises is a `ServiceError` carrying a kind
(whose problem it is) and a `Reason` the words can say in Chinese and English; none carries a
Python exception's text or a secret."""

from __future__ import annotations

import inspect

import pytest

from core import errors
from core.errors import (
    AddressRefused,
    ApiError,
    Busy,
    ConfigError,
    Failure,
    Reason,
    ServiceError,
    TooLarge,
    UploadError,
    UpstreamError,
)
from drawing import reasons

# One of each exception, made as the service makes them.
MADE = [
    ServiceError(),
    UpstreamError(Failure.RATE_LIMIT, Reason.of("rate_limited", model="Kwai-Kolors/Kolors"), status=429, retry_after=7.0),
    UploadError(Reason.of("host_unreachable", host="lsky"), unsafe=True),
    AddressRefused(Reason.of("address_refused", host="10.0.0.1", place="private"), unresolved=False),
    TooLarge("the answer was over 20 MB"),
    Busy(held=3 * 2**20, budget=2**20),
    ConfigError("invalid configuration:\n  API_KEYS: empty"),
    ApiError(400, "'model' must be a string.", param="model"),
]


def test_every_exception_of_the_service_derives_from_the_one_base():
    defined = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == errors.__name__
    ]
    assert set(defined) == {type(exc) for exc in MADE}  # a new exception gets a row in MADE
    assert all(issubclass(cls, ServiceError) for cls in defined)


@pytest.mark.parametrize("exc", MADE, ids=lambda exc: type(exc).__name__)
def test_each_carries_a_kind_and_a_reason_the_words_can_say(exc):
    assert isinstance(exc.kind, Failure) and isinstance(exc.reason, Reason)
    assert exc.reason.code in reasons.REASONS
    chinese, english = reasons.zh(exc.reason), reasons.en(exc.reason)
    assert chinese and english and "Traceback" not in english and "Error(" not in english


def test_a_bare_service_error_is_an_internal_one_and_says_only_its_reason():
    exc = ServiceError()
    assert exc.kind is Failure.INTERNAL and exc.reason == errors.INTERNAL and str(exc) == "internal"
    said = ServiceError(Failure.TIMEOUT, Reason.of("too_late", wait=10, out=None))
    assert str(said) == "too_late{'wait': 10, 'out': None}"  # a log line: the code and plain values


def test_a_reason_keeps_its_parameters_in_order_and_compares_by_value():
    reason = Reason.of("after_attempts", last=Reason.of("gateway_timeout"), attempts=3, keys=2)
    assert [name for name, _ in reason.params] == ["last", "attempts", "keys"]
    assert reason.args["attempts"] == 3 and reason.get("keys") == 2 and reason.get("missing", "-") == "-"
    assert reason == Reason.of("after_attempts", last=Reason.of("gateway_timeout"), attempts=3, keys=2)
    assert len({reason, Reason.of("after_attempts", last=Reason.of("gateway_timeout"), attempts=3, keys=2)}) == 1
    with pytest.raises(AttributeError):
        reason.code = "other"  # type: ignore[misc]


@pytest.mark.parametrize("status, kind", [(400, Failure.BAD_REQUEST), (429, Failure.BAD_REQUEST), (503, Failure.INTERNAL)])
def test_an_api_errors_kind_follows_its_status(status, kind):
    exc = ApiError(status, "said", code="x", retry_after=10)
    assert exc.kind is kind and exc.reason == Reason.of("answered", status=status)
    assert (exc.status, exc.message, exc.code, exc.retry_after, str(exc)) == (status, "said", "x", 10, "said")


def test_what_each_failure_keeps_for_its_handlers():
    upstream = MADE[1]
    assert (upstream.status, upstream.retry_after) == (429, 7.0)
    assert MADE[2].unsafe and MADE[2].kind is Failure.BAD_RESPONSE  # never offer that link
    assert not MADE[3].unresolved and MADE[3].kind is Failure.BAD_RESPONSE
    assert MADE[4].reason.code == "over_cap" and MADE[5].reason.code == "busy"
    assert (MADE[5].held, MADE[5].budget) == (3 * 2**20, 2**20) and str(MADE[5]) == "3145728 of 1048576 bytes held"


def test_a_configuration_error_is_also_a_value_error_naming_every_bad_variable():
    with pytest.raises(ValueError, match="API_KEYS: empty"):
        raise ConfigError("invalid configuration:\n  API_KEYS: empty")
    assert issubclass(ConfigError, ServiceError)


def test_the_kinds_are_the_strings_logs_and_metrics_use():
    assert {kind.value for kind in Failure} >= {"auth", "balance", "rate_limit", "timeout", "no_keys", "internal"}
    assert f"{Failure.RATE_LIMIT}" == "rate_limit"
