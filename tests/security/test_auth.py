"""The Authenticator on its own: token files, bearer headers, client certificate names."""

from __future__ import annotations

import pytest

from rnnstream.server.auth import Authenticator, TokenTable
from rnnstream.server.errors import Unauthenticated
from rnnstream.server.secret_files import SecretFileError
from tests.security.conftest import ALICE_TOKEN, BOB_TOKEN, write_tokens

SPARE = "alice-second-token-000000000"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("x-rnnstream-session", "s" * 22), ("authorization", f"Bearer {token}")]


def test_token_file_pairs_principals_with_tokens_and_skips_comments():
    table = TokenTable.parse(
        f"# comment\n\nalice {ALICE_TOKEN}  # first\nalice\t{SPARE}\n  bob {BOB_TOKEN}\n", "f"
    )
    assert len(table) == 3
    assert table.principal(ALICE_TOKEN) == "alice" and table.principal(SPARE) == "alice"
    assert table.principal(BOB_TOKEN) == "bob" and table.principal("nope" * 5) is None


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        (f"alice {ALICE_TOKEN} extra\n", "line 1: expected PRINCIPAL TOKEN"),
        ("# only a comment\n", "no PRINCIPAL TOKEN line"),
        (f"alice {ALICE_TOKEN}\nbob {ALICE_TOKEN}\n", "line 2: the same token as line 1"),
        ("alice 123456789012345\n", "line 1: the token of alice has 15 characters"),
    ],
)
def test_a_bad_token_file_is_refused_naming_flag_and_line_not_token(text, wanted):
    with pytest.raises(SecretFileError) as refused:
        TokenTable.parse(text, "/etc/tokens")
    message = str(refused.value)
    assert message.startswith("--auth-tokens /etc/tokens") and wanted in message
    assert ALICE_TOKEN not in message and "123456789012345" not in message


def test_tokens_name_the_principal_and_reload_keeps_old_tokens_on_a_bad_file(tmp_path):
    path = write_tokens(tmp_path / "tokens", f"alice {ALICE_TOKEN}\n")
    auth = Authenticator(str(path))
    assert auth.enabled and auth.principal(bearer(ALICE_TOKEN), {}) == "alice"
    for metadata, reason in (
        ([], "missing_token"),
        ([("authorization", ALICE_TOKEN)], "malformed_token"),
        (bearer(ALICE_TOKEN) * 2, "malformed_token"),
        (bearer(BOB_TOKEN), "unknown_token"),
    ):
        with pytest.raises(Unauthenticated) as refused:
            auth.principal(metadata, {})
        assert refused.value.reason == reason and ALICE_TOKEN not in refused.value.message
    write_tokens(path, "alice short\n")
    with pytest.raises(SecretFileError):
        auth.reload()
    assert auth.principal(bearer(ALICE_TOKEN), {}) == "alice"
    write_tokens(path, f"bob {BOB_TOKEN}\n")
    auth.reload()
    assert auth.principal(bearer(BOB_TOKEN), {}) == "bob"
    with pytest.raises(Unauthenticated):
        auth.principal(bearer(ALICE_TOKEN), {})


def test_client_certificates_name_the_principal_by_common_name(tmp_path):
    peer = {"x509_common_name": [b"alice"], "x509_subject_alternative_name": [b"a.example"]}
    auth = Authenticator(client_certificates=True)
    assert auth.principal([], peer) == "alice"
    with pytest.raises(Unauthenticated) as refused:
        auth.principal([], {})
    assert refused.value.reason == "certificate_without_cn"

    both = Authenticator(
        str(write_tokens(tmp_path / "t", f"alice {ALICE_TOKEN}\nbob {BOB_TOKEN}\n")), True
    )
    assert both.principal(bearer(ALICE_TOKEN), peer) == "alice"
    with pytest.raises(Unauthenticated) as refused:
        both.principal(bearer(BOB_TOKEN), peer)
    assert refused.value.reason == "certificate_mismatch"
    with pytest.raises(Unauthenticated) as refused:
        both.principal([], peer)
    assert refused.value.reason == "missing_token"


def test_without_tokens_or_certificates_everyone_is_the_empty_principal():
    auth = Authenticator()
    assert not auth.enabled and auth.principal(None, {}) == ""
