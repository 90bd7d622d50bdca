"""The redactor every error and log line passes through: secrets it was told of, and the shapes of
secrets it was not (signed URLs of any scheme, bearer tokens, secret-named fields), cut; our own
messages and paths left readable."""

from __future__ import annotations

import json

import pytest

from syncer.errors import SyncerError
from syncer.log import REDACT
from syncer.procore.http import EXCERPT_CHARS, excerpt

TOKEN = "eyJhbGciOiJSUzI1NiJ9.unregistered-token-value"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see gopher://store/x?sig=abc now", "see gopher://store/x?… now"),
        ("HTTP://STORE/Y?X-Amz-Signature=zz", "HTTP://STORE/Y?…"),
        (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer ***"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZDEyMzQ1Ng==", "Authorization: Basic ***"),
        (
            '{"client_secret": "s3cr3t", "access_token":"tok"}',
            '{"client_secret": "***", "access_token":"***"}',
        ),
        ("{'client_secret': 'abc'}", "{'client_secret': '***'}"),
        ("X-Amz-Security-Token: FQoGZXIvYXdzEJr more", "X-Amz-Security-Token: *** more"),
        (
            "grant_type=client_credentials&client_secret=abc&x=1",
            "grant_type=client_credentials&client_secret=***&x=1",
        ),
    ],
)
def test_secrets_it_was_not_told_of_are_cut_by_their_shape(text: str, expected: str) -> None:
    assert REDACT(text) == expected


def test_a_secret_inside_a_json_log_line_is_cut_too() -> None:
    line = json.dumps({"msg": 'HTTP 403: {"access_token": "tok123"}'})
    assert "tok123" not in REDACT(line)


@pytest.mark.parametrize(
    "text",
    [
        "procore.client_secret: required key is missing",
        "the bearer token goes only to Procore hosts",
        "token request: HTTP 500",
        "mirror/Design sig/IMG_1.jpg",
    ],
)
def test_our_own_messages_and_paths_stay_readable(text: str) -> None:
    assert REDACT(text) == text


def test_a_field_value_ends_at_a_slash_so_the_rest_of_a_path_stays() -> None:
    assert REDACT("/m/Design sig=1/a.jpg") == "/m/Design sig=***/a.jpg"


def test_an_error_is_scrubbed_where_it_is_made() -> None:
    assert str(SyncerError(f"refused: Bearer {TOKEN}")) == "refused: Bearer ***"


def test_a_told_secret_cut_in_half_by_an_excerpt_leaves_no_half() -> None:
    secret = "a-registered-secret-of-forty-characters!"
    REDACT.add(secret)
    body = "x" * (EXCERPT_CHARS - 20) + " " + secret
    assert secret[:15] not in excerpt(body)
