"""HMAC request signing: the documented example, canonical form, verifier, keys, body check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from artlens.auth.keys import ApiKeySource, FileKeys, issue_key, parse_keys, revoke_key
from artlens.auth.policy import Authenticator
from artlens.auth.replay import MemoryNonces
from artlens.auth.signing import (
    SCHEME,
    HmacVerifier,
    LazyVerifier,
    SignedRequests,
    canonical_query,
    canonical_request,
    sign_request,
    verify_signed_body,
)
from artlens.errors import NotFound, Unauthorized, Unavailable
from artlens.settings import ConfigError, SigningSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "signing.md"
NOW = 1_767_225_600.0


def _doc_value(text: str, label: str) -> str:
    match = re.search(rf"(?:^|Inputs: ){label}:? `([^`]+)`", text, re.M)
    assert match, f"docs/signing.md lost its '{label}'"
    return match.group(1)


def test_worked_example_in_the_docs_is_what_the_code_and_plain_hmac_compute():
    text = DOC.read_text()
    secret = _doc_value(text, "secret")
    canonical = re.search(r"```text\n(.*?)\n```", text, re.S).group(1)
    documented_body_hash = _doc_value(text, "Body SHA-256")
    documented_signature = _doc_value(text, "Signature")
    # Independent of artlens.signing: only hashlib/hmac on what the page shows.
    assert hashlib.sha256(b"hello artlens").hexdigest() == documented_body_hash
    plain = hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert plain == documented_signature
    # And the implementation builds exactly that string and those headers from the inputs.
    query = [("scope", "all"), ("neighbors", "3"), ("note", "a b/é")]
    assert canonical_request(
        "post", "/predict", query, [("content-type", "image/jpeg"), ("host", "api.example")],
        1767225600, "n0nce-0123456789abcdef", "ak_0123456789abcdef", documented_body_hash,
    ) == canonical
    headers = sign_request("ak_0123456789abcdef", secret, "POST", "/predict", query,
                           b"hello artlens", host="api.example", content_type="image/jpeg",
                           now=1767225600, nonce="n0nce-0123456789abcdef")
    assert headers["Authorization"] == f"{SCHEME} {documented_signature}"
    assert headers["X-ArtLens-Content-SHA256"] == documented_body_hash
    assert headers["X-ArtLens-Signed-Headers"] == "content-type;host"
    assert (headers["Host"], headers["Content-Type"]) == ("api.example", "image/jpeg")


def test_canonical_query_sorts_and_encodes_strictly():
    assert canonical_query([]) == ""
    assert canonical_query([("b", "2"), ("a", "z"), ("a", "1"), ("x", "")]) == "a=1&a=z&b=2&x="
    assert canonical_query([("q", "a+b c~*'")]) == "q=a%2Bb%20c~%2A%27"


# --------------------------------------------------------------------------- verifier


class Keys:
    """A key backend in memory (the real file and Secrets Manager backends are tested below and
    in the integration tests)."""

    def __init__(self):
        self.keys = parse_keys({"ak_good": {"secret": "s3cret-value", "name": "alice"},
                                "ak_old": {"secret": "old", "revoked": "2026-01-01"}})
        self.reads = 0

    def read(self):
        self.reads += 1
        return dict(self.keys)

    def write(self, keys):
        self.keys = dict(keys)


@pytest.fixture
def verifier():
    clock = [NOW]
    v = HmacVerifier(ApiKeySource(Keys(), ttl_s=60), clock=lambda: clock[0])
    v.clock = clock
    return v


def event_for(headers: dict, method="POST", path="/predict", query=None, stage_path=None):
    return {
        "type": "REQUEST", "httpMethod": method, "path": path, "headers": headers,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()},
        "requestContext": {"path": stage_path or f"/prod{path}", "requestId": "r1"},
    }


SECRET = "s3cret-value"


HOST = "abc123.execute-api.eu-west-1.amazonaws.com"


def signed(query=None, body=b"img", key_id="ak_good", secret=SECRET, method="POST",
           path="/predict", **kw):
    kw.setdefault("content_type", "image/jpeg" if method == "POST" else None)
    return sign_request(key_id, secret, method, path, list((query or {}).items()), body,
                        host=kw.pop("host", HOST), now=kw.pop("now", NOW), **kw)


def credentials(headers):
    return headers["Authorization"].split(" ", 1)[1]


def test_a_signed_request_is_accepted(verifier):
    headers = signed({"neighbors": "3"})
    event = event_for(headers, query={"neighbors": "3"})
    principal = verifier(credentials(headers), event)
    assert (principal.sub, principal.scheme) == ("ak_good", "hmac")


def test_the_stage_prefixed_path_of_the_execute_api_url_is_accepted(verifier):
    headers = sign_request("ak_good", "s3cret-value", "POST", "/prod/predict", [], b"",
                           host=HOST, now=NOW)
    assert verifier(credentials(headers), event_for(headers)).sub == "ak_good"


@pytest.mark.parametrize("change", [
    "method", "path", "query_value", "query_added", "timestamp", "nonce", "content", "key_id",
    "host", "content_type",
])
def test_any_tampering_breaks_the_signature(verifier, change):
    headers = signed({"neighbors": "3"})
    method, path, query = "POST", "/predict", {"neighbors": "3"}
    if change == "method":
        method = "GET"
    elif change == "path":
        path = "/map"
    elif change == "query_value":
        query = {"neighbors": "20"}
    elif change == "query_added":
        query = {"neighbors": "3", "scope": "all"}
    elif change == "timestamp":
        headers["X-ArtLens-Timestamp"] = str(int(NOW) + 1)
    elif change == "nonce":
        headers["X-ArtLens-Nonce"] = "another-nonce-0000000"
    elif change == "content":
        headers["X-ArtLens-Content-SHA256"] = hashlib.sha256(b"other").hexdigest()
    elif change == "key_id":
        headers["X-ArtLens-Key-Id"] = "ak_old"
    elif change == "host":
        headers["Host"] = "evil.example"
    elif change == "content_type":
        headers["Content-Type"] = "application/json"
    event = event_for(headers, method=method, path=path, query=query, stage_path=f"/prod{path}")
    with pytest.raises(Unauthorized) as refused:
        verifier(credentials(headers), event)
    assert refused.value.code in ("bad_signature", "bad_key")


@pytest.mark.parametrize("skew", [-301, 301, -10_000_000])
def test_timestamps_outside_five_minutes_are_refused(verifier, skew):
    headers = signed(now=NOW + skew)
    with pytest.raises(Unauthorized) as refused:
        verifier(credentials(headers), event_for(headers))
    assert refused.value.code == "stale_request"


def test_the_window_edges_are_inclusive(verifier):
    for skew in (-300, 300):
        headers = signed(now=NOW + skew)
        assert verifier(credentials(headers), event_for(headers)).sub == "ak_good"


def test_revoked_unknown_and_wrong_secret_keys_are_refused(verifier):
    for key_id, secret in (("ak_old", "old"), ("ak_nobody", "x"), ("ak_good", "guess")):
        headers = signed(key_id=key_id, secret=secret)
        with pytest.raises(Unauthorized):
            verifier(credentials(headers), event_for(headers))


@pytest.mark.parametrize("header,value", [
    ("X-ArtLens-Key-Id", ""), ("X-ArtLens-Key-Id", "ak bad"), ("X-ArtLens-Timestamp", "-5"),
    ("X-ArtLens-Timestamp", "1e9"), ("X-ArtLens-Nonce", "short"),
    ("X-ArtLens-Nonce", "x" * 129), ("X-ArtLens-Content-SHA256", "abc"),
    ("X-ArtLens-Content-SHA256", hashlib.sha256(b"img").hexdigest().upper()),
    ("X-ArtLens-Content-SHA256", hashlib.sha256(b"img").hexdigest() + "0"),
    ("X-ArtLens-Signed-Headers", ""), ("X-ArtLens-Signed-Headers", "host"),
    ("X-ArtLens-Signed-Headers", "host;content-type"), ("X-ArtLens-Signed-Headers", "HOST"),
    ("X-ArtLens-Signed-Headers", "content-type"),
    ("Authorization", "ArtLens-HMAC-SHA256  " + "0" * 64),
])
def test_malformed_signature_headers_are_refused(verifier, header, value):
    headers = signed()
    headers[header] = value
    with pytest.raises(Unauthorized) as refused:
        verifier(credentials(headers), event_for(headers))
    assert refused.value.code == "bad_signature"


def test_a_malformed_authorization_value_is_refused(verifier):
    headers = signed()
    for value in ("zz" * 32, "0" * 63, "0" * 65, credentials(headers) + "00"):
        with pytest.raises(Unauthorized):
            verifier(value, event_for(headers))


def test_the_nonce_ledger_being_down_refuses_the_request(verifier):
    class Down:
        def remember(self, *args):
            raise Unavailable("The database is not reachable.")

    headers = signed(body=b"img")
    with pytest.raises(Unavailable):
        verify_signed_body(proxy_event(headers, b"img"), guard(verifier, Down()))


# --------------------------------------------------------------------------- dispatch


def test_authenticate_dispatches_on_the_scheme_word(verifier):
    headers = signed()
    assert Authenticator({SCHEME: verifier}).authenticate(event_for(headers)).scheme == "hmac"
    with pytest.raises(Unauthorized):  # a scheme the authenticator was not built with
        Authenticator({}).authenticate(event_for(headers))


def test_lazy_verifier_denies_when_signing_is_not_configured():
    def broken():
        raise ConfigError("set exactly one of API_KEYS_SECRET_ARN and API_KEYS_FILE")

    lazy = LazyVerifier(broken)
    headers = signed()
    with pytest.raises(Unauthorized):
        lazy(credentials(headers), event_for(headers))


def test_signing_settings_from_env():
    local = SigningSettings.from_env({"ARTLENS_TOKEN_KEY_FILE": "/state/token.key"})
    assert (local.api_keys_file, local.api_keys_ttl_s) == ("/state/api_keys.json", 2.0)
    aws = SigningSettings.from_env({"API_KEYS_SECRET_ARN": "arn:x", "API_KEYS_TTL_S": "30"})
    assert (aws.api_keys_secret_arn, aws.api_keys_ttl_s) == ("arn:x", 30.0)
    for bad in ({}, {"API_KEYS_SECRET_ARN": "a", "API_KEYS_FILE": "f"},
                {"API_KEYS_FILE": "f", "API_KEYS_TTL_S": "soon"}):
        with pytest.raises(ConfigError):
            SigningSettings.from_env(bad)


# --------------------------------------------------------------------------- body check


def proxy_event(headers, body: bytes, scheme="hmac", method="POST", path="/predict", query=None):
    """A proxy event as the predict handler receives it, with the authorizer's context as API
    Gateway passes it - possibly from its cache, for another request with the same
    Authorization header."""
    return {
        "httpMethod": method, "path": path, "resource": path, "headers": headers,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
        "body": base64.b64encode(body).decode(), "isBase64Encoded": True,
        "requestContext": {"path": f"/prod{path}",
                           "authorizer": {"scheme": scheme, "sub": "ak_good"}},
    }


def guard(verifier, nonces=None):
    return SignedRequests(nonces or MemoryNonces(lambda: NOW), lambda: verifier)


def refusal(event, checker) -> str:
    with pytest.raises(Unauthorized) as refused:
        verify_signed_body(event, checker)
    assert refused.value.status == 401
    return refused.value.code


def test_the_predict_side_checks_the_body_against_the_signed_hash(verifier):
    headers = signed(body=b"the real body")
    checker = guard(verifier)
    assert refusal(proxy_event(headers, b"a swapped body"), checker) == "body_hash_mismatch"
    verify_signed_body(proxy_event(headers, b"the real body"), checker)
    # Bearer requests carry no body hash and are not checked.
    bearer = proxy_event({"Authorization": "Bearer x.y.z"}, b"anything", scheme="bearer")
    verify_signed_body(bearer, checker)


def test_the_predict_side_accepts_a_signed_request_once(verifier):
    """API Gateway may serve a repeated Authorization from its policy cache without asking the
    authorizer, so the replay check lives where every request passes: the predict handler."""
    checker = guard(verifier)
    headers = signed(body=b"img")
    verify_signed_body(proxy_event(headers, b"img"), checker)
    assert refusal(proxy_event(headers, b"img"), checker) == "replayed_request"
    # another nonce is another request
    verify_signed_body(proxy_event(signed(body=b"img"), b"img"), checker)


# ------------------------------------------------- issue 13: the cached authorizer context


def forged(headers: dict, **changes) -> dict:
    """A captured signed request's headers with some values replaced by the attacker."""
    return {**headers, **changes}


@pytest.mark.parametrize("attack", [
    "other_body", "other_route", "other_query", "own_nonce", "timestamp_1", "fresh_timestamp",
    "other_host", "other_content_type", "no_signed_headers",
])
def test_a_captured_authorization_under_a_cached_context_is_refused(verifier, attack):
    """The issue-13 reproduction: the predict handler gets a cached authorizer context
    (scheme hmac) and the captured Authorization value, with everything else forged."""
    captured = signed({"neighbors": "3"}, body=b"the victim's picture")
    body, method, path, query = b"the victim's picture", "POST", "/predict", {"neighbors": "3"}
    headers = dict(captured)
    if attack == "other_body":
        body = b"the attacker's picture"
        headers = forged(captured, **{"X-ArtLens-Content-SHA256":
                                      hashlib.sha256(body).hexdigest()})
    elif attack == "other_route":
        method, path, body = "GET", "/map", b""
    elif attack == "other_query":
        query = {"neighbors": "20", "scope": "all"}
    elif attack == "own_nonce":
        headers = forged(captured, **{"X-ArtLens-Nonce": "attacker-nonce-0123456789"})
    elif attack == "timestamp_1":
        headers = forged(captured, **{"X-ArtLens-Timestamp": "1"})
    elif attack == "fresh_timestamp":
        headers = forged(captured, **{"X-ArtLens-Timestamp": str(int(NOW) + 60)})
    elif attack == "other_host":
        headers = forged(captured, Host="attacker.example")
    elif attack == "other_content_type":
        headers = forged(captured, **{"Content-Type": "application/json"})
    elif attack == "no_signed_headers":
        headers = {k: v for k, v in captured.items() if k != "X-ArtLens-Signed-Headers"}
    event = proxy_event(headers, body, method=method, path=path, query=query)
    code = refusal(event, guard(verifier))
    expected = {"timestamp_1": "stale_request"}.get(attack, "bad_signature")
    assert code == expected
    # The untouched request itself is fine, once.
    original = proxy_event(captured, b"the victim's picture", query={"neighbors": "3"})
    checker = guard(verifier)
    verify_signed_body(original, checker)
    assert refusal(original, checker) == "replayed_request"


def test_the_hmac_header_is_verified_even_when_the_cached_context_says_bearer(verifier):
    captured = signed(body=b"img")
    event = proxy_event(forged(captured, **{"X-ArtLens-Nonce": "attacker-nonce-0123456789"}),
                        b"img", scheme="bearer")
    assert refusal(event, guard(verifier)) == "bad_signature"


def test_without_api_keys_the_predict_side_refuses_signed_requests():
    """A bare nonce ledger cannot check a signature: fail closed."""
    headers = signed(body=b"img")
    assert refusal(proxy_event(headers, b"img"), MemoryNonces(lambda: NOW)) == "unauthorized"


def test_uppercase_or_odd_length_signature_hex_is_refused(verifier):
    headers = signed(body=b"img")
    value = credentials(headers)
    for bad in (value.upper(), value[:-1], value + "0"):
        event = proxy_event(forged(headers, Authorization=f"{SCHEME} {bad}"), b"img")
        assert refusal(event, guard(verifier)) == "bad_signature"


def test_a_twice_sent_signed_header_is_refused(verifier):
    headers = signed(body=b"img")
    event = proxy_event(headers, b"img")
    event["multiValueHeaders"] = {"Content-Type": ["image/jpeg", "application/json"]}
    assert refusal(event, guard(verifier)) == "bad_signature"


def test_a_revoked_key_stops_within_the_key_cache_ttl_whatever_the_gateway_cached():
    keys = Keys()
    clock = [0.0]
    source = ApiKeySource(keys, ttl_s=60, clock=lambda: clock[0])
    checker = guard(HmacVerifier(source, clock=lambda: NOW))
    verify_signed_body(proxy_event(signed(body=b"a"), b"a"), checker)
    keys.keys = {k: (replace(v, revoked="now") if k == "ak_good" else v)
                 for k, v in keys.keys.items()}
    clock[0] = 59.0  # within the TTL the cached key document still holds the key
    verify_signed_body(proxy_event(signed(body=b"b"), b"b"), checker)
    clock[0] = 60.0  # the bound: from here on, refused on every request
    assert refusal(proxy_event(signed(body=b"c"), b"c"), checker) == "bad_key"


def test_signed_requests_from_env_reads_the_local_key_file(tmp_path):
    key = issue_key(FileKeys(tmp_path / "api_keys.json"), "carol")
    checker = SignedRequests.from_env(MemoryNonces(),
                                      {"API_KEYS_FILE": str(tmp_path / "api_keys.json")})
    headers = sign_request(key.key_id, key.secret, "POST", "/predict", [], b"x", host=HOST,
                           content_type="image/jpeg")
    verify_signed_body(proxy_event(headers, b"x"), checker)
    broken = SignedRequests.from_env(MemoryNonces(), {})  # no keys configured: refused
    assert refusal(proxy_event(signed(body=b"x"), b"x"), broken) == "unauthorized"


# --------------------------------------------------------------------------- keys


def test_key_file_issue_revoke_and_permissions(tmp_path):
    backend = FileKeys(tmp_path / "api_keys.json")
    key = issue_key(backend, "alice")
    assert stat.S_IMODE((tmp_path / "api_keys.json").stat().st_mode) == 0o600
    assert key.secret not in repr(key) and key.secret not in str(key.public())
    assert backend.read()[key.key_id].active
    assert revoke_key(backend, key.key_id).revoked is not None
    assert not backend.read()[key.key_id].active
    with pytest.raises(NotFound):
        revoke_key(backend, "ak_missing")


def test_key_source_caches_for_its_ttl_then_sees_revocation(tmp_path):
    backend = FileKeys(tmp_path / "api_keys.json")
    key = issue_key(backend, "bob")
    clock = [0.0]
    source = ApiKeySource(backend, ttl_s=5, clock=lambda: clock[0])
    assert source.get(key.key_id).active
    revoke_key(backend, key.key_id)
    clock[0] = 4.9
    assert source.get(key.key_id).active  # cached
    clock[0] = 5.0
    assert not source.get(key.key_id).active


def test_an_unreadable_key_document_fails_closed(tmp_path):
    (tmp_path / "api_keys.json").write_text("{not json")
    with pytest.raises(Unauthorized):
        ApiKeySource(FileKeys(tmp_path / "api_keys.json"), ttl_s=1).get("ak_x")
