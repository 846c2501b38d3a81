"""A writer behind HTTP calls: a stop URL, a start URL, and a status URL that answers
200 once the writer has drained (no write in flight) and anything else while it drains.
A health URL answers 200 while the writer writes successfully, anything else otherwise."""

import urllib.error
import urllib.request
from collections.abc import Sequence

from cutover.errors import StepFailed
from cutover.log import redact
from cutover.plan import HttpWriter as HttpSpec
from cutover.plan import resolve_secret
from cutover.steps import Change

HEALTH_BODY = 200  # bytes of an unhealthy answer's body shown to the operator


class HttpWriter:
    """Stops and starts a writer by calling its URLs."""

    def __init__(self, name: str, spec: HttpSpec) -> None:
        self.name = name
        self._spec = spec

    def _request(self, url: str, method: str) -> urllib.request.Request:
        request = urllib.request.Request(url, method=method, data=b"" if method != "GET" else None)
        if self._spec.token:
            token = resolve_secret(self._spec.token, where=f"writers[{self.name}].http.token")
            request.add_header("Authorization", f"Bearer {token}")
        return request

    def _call(self, url: str, method: str) -> int:
        request = self._request(url, method)
        try:
            with urllib.request.urlopen(request, timeout=self._spec.timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StepFailed(
                f"writer {self.name}: {method} {url} failed: {reason}",
                hint="check that the writer's control endpoint is reachable from here",
            ) from None

    def _control(self, url: str, *, what: str, dry_run: bool) -> Sequence[Change]:
        change = Change(f"writer {self.name}", f"{self._spec.method} {url}")
        if dry_run:
            return [change]
        status = self._call(url, self._spec.method)
        if not 200 <= status < 300:
            raise StepFailed(
                f"writer {self.name}: {what} answered HTTP {status}",
                hint=f"the writer did not accept the {what} call; see its own log",
            )
        return [change]

    def stop(self, *, dry_run: bool) -> Sequence[Change]:
        """Ask the writer to stop writing."""
        return self._control(self._spec.stop, what="stop", dry_run=dry_run)

    def start(self, *, dry_run: bool) -> Sequence[Change]:
        """Ask the writer to write again."""
        return self._control(self._spec.start, what="start", dry_run=dry_run)

    def is_drained(self) -> bool:
        """No write in flight (without a status URL: as soon as stop was accepted)."""
        if self._spec.status is None:
            return True
        return self._call(self._spec.status, "GET") == 200

    def draining(self) -> str:
        """Nothing more to say than is_drained."""
        return ""

    def is_healthy(self) -> tuple[bool, str]:
        """GET the health URL: 200 is healthy; otherwise its code and the start of its body."""
        if self._spec.health is None:
            return True, ""
        request = self._request(self._spec.health, "GET")
        try:
            with urllib.request.urlopen(request, timeout=self._spec.timeout) as response:
                status, body = int(response.status), response.read(HEALTH_BODY)
        except urllib.error.HTTPError as exc:
            status, body = int(exc.code), exc.read(HEALTH_BODY)
        except (urllib.error.URLError, OSError) as exc:
            return False, redact(f"GET {self._spec.health} failed: {getattr(exc, 'reason', exc)}")
        if status == 200:
            return True, ""
        text = body.decode(errors="replace").strip()
        return False, redact(f"HTTP {status}" + (f": {text}" if text else ""))
