"""The Google API clients of a move: built offline, called with bounded retries, polled to done.

The clients come from the discovery documents bundled with
google-api-python-client (`static_discovery=True`: building one fetches
nothing), pointed at another address when the plan gives `api_endpoints`
(the stand-in server of the tests). A request is first a `Call`, a value that
can be rendered as one line for `--dry-run` (method, path and body, with
every secret masked) or sent. Sending retries a conflict (409: another
operation runs on the instance), a quota answer (429), a server error (5xx)
and a broken connection, a bounded number of times with a growing, jittered
pause; then it gives up with `ApiUnavailable`, which the runner tries again
later. Any other answer of 400 and up is an `ApiError` with a hint. A
long-running operation is polled through `cutover.wait`, with backoff, until
it is done or its time is up. Credentials are never logged or shown.
"""

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import google.auth
import google_auth_httplib2
import httplib2
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from cutover import wait
from cutover.cloud.resources import Api, Operation, dms_operation_from, sql_operation_from
from cutover.errors import Retryable, StepFailed, UsageError
from cutover.log import MASK, redact, register_secret
from cutover.plan import CloudCredentials, Dms, resolve_secret
from cutover.steps import Change

log = logging.getLogger(__name__)

T = TypeVar("T")

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# The versions whose discovery documents google-api-python-client bundles.
VERSIONS = {Api.DATAMIGRATION: "v1", Api.SQLADMIN: "v1", Api.MONITORING: "v3"}
# Body fields that hold a secret (connection profiles, a new instance's settings).
SECRET_FIELDS = frozenset({"password", "rootPassword", "clientKey", "privateKey"})
# A fixed namespace: a move's step gets the same requestId in every run, on every machine.
_REQUEST_IDS = uuid.UUID("6f1c2a0e-3b7d-5e4f-9a8b-0c1d2e3f4a5b")

CREDENTIALS_HINT = (
    "run `gcloud auth application-default login`, or give dms.credentials: file:PATH "
    "of a service account's JSON key"
)


class ApiError(StepFailed):
    """A Google API refused a call; nothing in the answer suggests that trying again helps."""

    def __init__(self, message: str, *, hint: str, status: int, code: str) -> None:
        super().__init__(message, hint=hint)
        self.status = status  # the HTTP status
        self.code = code  # the google.rpc code's name, e.g. FAILED_PRECONDITION


class NotFound(ApiError):
    """The resource of the call does not exist."""


class AlreadyExists(ApiError):
    """A create met a resource of the same name (not one made with the same requestId)."""


class OperationFailed(StepFailed):
    """A long-running operation ended with an error."""


class ApiUnavailable(Retryable):
    """The API kept answering busy (409, 429, 5xx) or could not be reached, past the retries."""


def request_id(move: str, step: str, *, generation: int = 0) -> str:
    """The requestId of one create or delete: the same for a step of a move in every run.

    A run that died after sending a create sends the same ID again, and DMS
    answers with the first request's operation instead of making a second
    resource. `generation` tells apart a step done again on purpose (a job
    deleted and made anew), which must not be taken for the first.
    """
    return str(uuid.uuid5(_REQUEST_IDS, f"{move}/{step}/{generation}"))


def credentials_for(ref: str) -> Credentials:
    """The credentials the plan's dms.credentials names: a key by reference, ADC, or none."""
    if ref == CloudCredentials.ANONYMOUS:
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    if ref == CloudCredentials.APPLICATION_DEFAULT:
        try:
            found, _project = google.auth.default(scopes=[SCOPE])
        except DefaultCredentialsError:
            raise UsageError(
                "dms.credentials: no application default credentials were found",
                hint=CREDENTIALS_HINT,
            ) from None
        credentials: Credentials = found
        return credentials
    text = resolve_secret(ref, where="dms.credentials")
    register_secret(text)
    try:
        info = json.loads(text)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        # The message names the reference, never what it holds.
        raise UsageError(
            f"dms.credentials: {ref} does not hold a JSON key",
            hint="give the JSON key file of a service account (IAM > Service accounts > Keys)",
        )
    private_key = info.get("private_key")
    if isinstance(private_key, str):
        register_secret(private_key)
    try:
        key: Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[SCOPE]
        )
    except (ValueError, KeyError, GoogleAuthError):
        raise UsageError(
            f"dms.credentials: {ref} is not a service account's key",
            hint="give the JSON key file of a service account (its type is service_account)",
        ) from None
    return key


def mask_secrets(value: object) -> object:
    """A JSON value with every secret field's value masked, at any depth."""
    if isinstance(value, Mapping):
        return {
            k: (MASK if k in SECRET_FIELDS and v is not None else mask_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request, built and not yet sent; `parse` maps its answer to a typed value."""

    api: Api
    method: str  # GET, POST, PATCH, DELETE
    uri: str
    body: str | None
    parse: Callable[[Mapping[str, Any]], T]
    request: Any = field(repr=False)  # googleapiclient.http.HttpRequest

    @property
    def path(self) -> str:
        """The URI's path and query, without the address and the `alt=json` every call has."""
        parts = urlsplit(self.uri)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "alt"]
        return parts.path + (f"?{urlencode(query)}" if query else "")

    def render(self) -> str:
        """The call as one line: `api: METHOD /path?query {body}`, secrets masked."""
        line = f"{self.api.value}: {self.method} {self.path}"
        if self.body:
            try:
                shown = json.dumps(mask_secrets(json.loads(self.body)), separators=(",", ":"))
            except ValueError:
                shown = "(a body that is not JSON)"
            line += f" {shown}"
        return redact(line)

    def change(self) -> Change:
        """The call as a Change, for a step's record and a dry run."""
        return Change(f"gcp/{self.api.value}", self.render())


@dataclass(frozen=True)
class RetryPolicy:
    """How often a busy answer is tried again, and how long it waits in between."""

    attempts: int = 6
    initial: float = 1.0  # seconds before the second attempt; each pause doubles...
    maximum: float = 30.0  # ...up to this, each with up to `initial` seconds of jitter


@dataclass(frozen=True)
class Polling:
    """How a long-running operation is polled: first after `interval`, then less often."""

    interval: float = 2.0
    backoff: float = 1.5
    max_interval: float = 20.0


def _error_details(exc: HttpError) -> tuple[str, str]:
    """The google.rpc code name and the message of an error answer."""
    try:
        data = json.loads(exc.content.decode("utf-8", "replace"))
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "", str(exc.reason or "")
    code = error.get("status") if isinstance(error.get("status"), str) else ""
    if not code:  # Cloud SQL's older shape: errors[{reason, message}]
        first = (error.get("errors") or [{}])[0]
        code = first.get("reason", "") if isinstance(first, dict) else ""
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    return str(code), str(message)


def _is_busy(exc: BaseException) -> bool:
    """An answer or a failure that another attempt may not meet."""
    if isinstance(exc, HttpError):
        status = exc.resp.status
        if status == 409:
            return _error_details(exc)[0] != "ALREADY_EXISTS"
        return status in (408, 429) or status >= 500
    return isinstance(exc, OSError | httplib2.HttpLib2Error)


def _hint(status: int, code: str) -> str:
    if status == 401:
        return "the credentials were refused: " + CREDENTIALS_HINT
    if status == 403:
        return (
            "the credentials may not do this, or the API is not enabled in the project: grant "
            "roles/datamigration.admin, roles/cloudsql.admin and roles/monitoring.viewer, and "
            "enable the Database Migration, Cloud SQL Admin and Monitoring APIs"
        )
    if status == 404:
        return "check dms.project, dms.region and the instance names in the plan"
    if code == "ALREADY_EXISTS":
        return (
            "a resource of that name exists, not made by this move's earlier runs: delete it, "
            "or rename the move"
        )
    if code == "FAILED_PRECONDITION":
        return (
            "the resource is not in a state that allows this yet: `cutover status` shows "
            "where it stands; run the command again once it is ready"
        )
    return "the API refused the request as sent: check the plan's dms section"


class Clients:
    """The three API clients of one move; each is built on first use, from the bundled docs."""

    def __init__(
        self,
        *,
        credentials: Credentials,
        endpoints: Mapping[Api, str | None] | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        polling: Polling = Polling(),
        clock: wait.Clock = time.monotonic,
        sleep: wait.Sleep = time.sleep,
    ) -> None:
        self._credentials = credentials
        self._endpoints = dict(endpoints or {})
        self._timeout = timeout
        self.retry = retry
        self.polling = polling
        self._clock = clock
        self._sleep = sleep
        self._services: dict[Api, Any] = {}

    @property
    def clock(self) -> wait.Clock:
        """The clock the waits of these clients read (a test's may be fake)."""
        return self._clock

    @property
    def sleep(self) -> wait.Sleep:
        """How these clients pause between polls."""
        return self._sleep

    @classmethod
    def from_plan(cls, dms: Dms, **options: Any) -> "Clients":
        """The clients for a plan's dms section: its credentials and its endpoints."""
        endpoints = {
            Api.DATAMIGRATION: dms.api_endpoints.datamigration,
            Api.SQLADMIN: dms.api_endpoints.sqladmin,
            Api.MONITORING: dms.api_endpoints.monitoring,
        }
        return cls(credentials=credentials_for(dms.credentials), endpoints=endpoints, **options)

    def service(self, api: Api) -> Any:
        """The discovery-built client of one API (an untyped googleapiclient Resource)."""
        built = self._services.get(api)
        if built is None:
            endpoint = self._endpoints.get(api)
            # A transport of its own per API: httplib2 connections are not shared safely.
            http = google_auth_httplib2.AuthorizedHttp(
                self._credentials, http=httplib2.Http(timeout=self._timeout)
            )
            built = build(
                api.value,
                VERSIONS[api],
                http=http,
                static_discovery=True,
                cache_discovery=False,
                client_options={"api_endpoint": endpoint} if endpoint else None,
            )
            self._services[api] = built
        return built

    def call(
        self,
        api: Api,
        make: Callable[[Any], Any],
        parse: Callable[[Mapping[str, Any]], T],
    ) -> Call[T]:
        """A Call from the request `make` builds on the API's client (nothing is sent)."""
        request = make(self.service(api))
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        return Call(api, request.method, request.uri, body, parse, request)

    def execute(self, call: Call[T]) -> T:
        """Send a call, trying a busy answer again within the retry policy; its typed answer."""
        policy = self.retry

        def before_sleep(state: RetryCallState) -> None:
            outcome = state.outcome
            failure = outcome.exception() if outcome is not None else None
            pause = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "%s %s: %s; again in %.1f s (attempt %d of %d)",
                call.method,
                call.path,
                _describe_failure(failure),
                pause,
                state.attempt_number + 1,
                policy.attempts,
            )

        retrying = Retrying(
            stop=stop_after_attempt(max(1, policy.attempts)),
            wait=wait_exponential(multiplier=policy.initial, max=policy.maximum)
            + wait_random(0, policy.initial),
            retry=retry_if_exception(_is_busy),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        log.debug("%s %s", call.method, call.path)
        try:
            answer = retrying(call.request.execute, num_retries=0)
        except HttpError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise self._error(call, exc, attempts=attempts) from None
        except (OSError, httplib2.HttpLib2Error) as exc:
            raise ApiUnavailable(
                redact(f"{call.api.value} {call.method} {call.path}: {_describe_failure(exc)}"),
                hint="check the network path to the API (proxy, firewall, DNS); "
                "run the command again",
                delay=policy.maximum,
            ) from None
        return call.parse(answer if isinstance(answer, Mapping) else {})

    def _error(self, call: Call[Any], exc: HttpError, *, attempts: int) -> Exception:
        status = exc.resp.status
        code, message = _error_details(exc)
        said = f"{call.api.value} {call.method} {call.path}: HTTP {status}"
        said += f" {code}" if code else ""
        said += f": {message}" if message else ""
        if _is_busy(exc):
            return ApiUnavailable(
                redact(f"{said} (still after {attempts} attempts)"),
                hint="the API is busy or another operation holds the resource: run the "
                "command again in a few minutes",
                delay=self.retry.maximum,
            )
        kind = {404: NotFound}.get(status, AlreadyExists if code == "ALREADY_EXISTS" else ApiError)
        return kind(redact(said), hint=_hint(status, code), status=status, code=code)

    def operation(self, operation: Operation) -> Call[Operation]:
        """The call that reads an operation again (DMS and Cloud SQL keep them differently)."""
        if operation.api is Api.DATAMIGRATION:
            return self.call(
                Api.DATAMIGRATION,
                lambda s: s.projects().locations().operations().get(name=operation.name),
                dms_operation_from,
            )
        return self.call(
            Api.SQLADMIN,
            lambda s: s.operations().get(project=operation.project, operation=operation.name),
            sql_operation_from,
        )

    def wait_for(
        self, operation: Operation, *, timeout: float | wait.Deadline, what: str
    ) -> Operation:
        """Poll an operation until it is done; OperationFailed when it ended with an error."""
        finished = operation
        if not operation.done:
            polling = self.polling

            def probe() -> Operation | None:
                now = self.execute(self.operation(operation))
                return now if now.done else None

            finished = wait.until(
                probe,
                timeout=timeout,
                what=f"{what} did not finish (operation {operation.name})",
                hint="it may still finish: run the command again, which waits for it anew",
                clock=self._clock,
                sleep=self._sleep,
                interval=polling.interval,
                backoff=polling.backoff,
                max_interval=polling.max_interval,
            )
        if finished.error is not None:
            raise OperationFailed(
                redact(f"{what} failed: {finished.error} (operation {finished.name})"),
                hint="the message is Google's; fix its cause and run the command again",
            )
        return finished

    def run(
        self, call: Call[Operation], *, timeout: float | wait.Deadline, what: str, dry_run: bool
    ) -> Sequence[Change]:
        """Send a call that starts an operation and wait for it; with dry_run, only say it."""
        if not dry_run:
            self.wait_for(self.execute(call), timeout=timeout, what=what)
        return [call.change()]


def _describe_failure(failure: BaseException | None) -> str:
    if isinstance(failure, HttpError):
        code, _ = _error_details(failure)
        return f"HTTP {failure.resp.status}" + (f" {code}" if code else "")
    if failure is None:
        return "no answer"
    return f"{type(failure).__name__}: {failure}"
