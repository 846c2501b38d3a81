"""Redaction: no secret survives into a log line, an error or the ledger."""

import logging
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover import log
from cutover.log import MASK, RedactingFilter, redact, register_secret


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host=db password=abc123 user=x", f"host=db password={MASK} user=x"),
        ("password = 'a b c' dbname=x", f"password = {MASK} dbname=x"),
        ("postgresql://app:pw@db:5432/app", f"postgresql://app:{MASK}@db:5432/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_dsn_passwords_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_long_error_is_redacted_in_linear_time() -> None:
    # A key of 2 MB in an error's detail, then a DSN: took hours when every letter began
    # a scan for "://" to the end of the text (20 kB: 1.1 s).
    text = "Key (k)=(" + "ab12" * 500_000 + ") postgresql://app:pw@db/app"
    began = time.perf_counter()
    assert redact(text).endswith(f"postgresql://app:{MASK}@db/app")
    assert time.perf_counter() - began < 2.0


@given(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=3, max_size=40),
    st.text(max_size=40),
    st.text(max_size=40),
)
def test_a_registered_secret_never_survives(secret: str, before: str, after: str) -> None:
    known = set(log._known_secrets)
    try:
        register_secret(secret)
        assert secret not in redact(before + secret + after)
    finally:  # random secrets would mask ordinary text in later tests
        log._known_secrets.intersection_update(known)


def test_log_records_are_redacted_before_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("tok-981273")
    logger = logging.getLogger("cutover.test")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logger.info("calling %s with %s", "http://lb/stop", "tok-981273")
    assert "tok-981273" not in caplog.text
    assert MASK in caplog.text
