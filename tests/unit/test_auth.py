"""Tokens, the signing-key source, the scheme table, the authorizer policy and the scopes
routes require (artlens.auth)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import Any

import boto3
import jwt
import pytest
from botocore.config import Config
from moto import mock_aws

from artlens.api.responses import response_for_exception
from artlens.auth.keys import ApiKeySource, FileKeys, issue_key, parse_keys, set_key_scopes
from artlens.auth.policy import (
    Authenticator,
    BearerVerifier,
    Principal,
    allow_policy,
    api_wildcard_resource,
    principal_sub,
    require_scope,
    scopes_of,
    with_verified_principal,
)
from artlens.auth.replay import MemoryNonces
from artlens.auth.signing import (
    HmacVerifier,
    SignedRequests,
    sign_request,
    verified_event,
    verify_signed_body,
)
from artlens.auth.tokens import (
    MAX_TOKEN_LENGTH,
    TokenKeySource,
    mint_token,
    token_scopes,
    verify_token,
)
from artlens.errors import Forbidden, NotFound, Unauthorized
from artlens.names import SCOPE_PREDICT, SCOPE_REVIEW, SCOPES

KEY = "k" * 64
OTHER_KEY = "o" * 64
METHOD_ARN = "arn:aws:execute-api:eu-west-1:123456789012:abc123def4/prod/POST/predict"


def refused(fn, *args) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        fn(*args)
    assert info.value.status == 401
    return info.value


def test_mint_and_verify_round_trip():
    token = mint_token(KEY, "dev", 600)
    claims = verify_token(KEY, token)
    assert claims["sub"] == "dev"
    assert claims["exp"] - claims["iat"] == 600
    assert abs(claims["iat"] - time.time()) < 5
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_expired_token_is_refused():
    token = mint_token(KEY, "dev", 10, now=time.time() - 3600)
    assert "Expired" in refused(verify_token, KEY, token).message


def test_token_signed_with_another_key_is_refused():
    refused(verify_token, KEY, mint_token(OTHER_KEY, "dev", 600))


def test_alg_none_is_refused():
    token = jwt.encode({"sub": "dev", "exp": int(time.time()) + 600}, None, algorithm="none")
    refused(verify_token, KEY, token)


def test_other_hmac_algorithm_is_refused_even_with_the_right_key():
    token = jwt.encode({"sub": "dev", "exp": int(time.time()) + 600}, KEY, algorithm="HS512")
    assert verify_token(KEY, mint_token(KEY, "dev", 60))  # the key itself is fine
    refused(verify_token, KEY, token)


def test_token_without_exp_is_refused():
    refused(verify_token, KEY, jwt.encode({"sub": "dev"}, KEY, algorithm="HS256"))


def test_token_without_sub_is_refused():
    token = jwt.encode({"exp": int(time.time()) + 60}, KEY, algorithm="HS256")
    refused(verify_token, KEY, token)


def test_tampered_payload_is_refused():
    header, payload, signature = mint_token(KEY, "dev", 600).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    refused(verify_token, KEY, f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * (MAX_TOKEN_LENGTH + 1)])
def test_garbled_missing_or_oversized_tokens_are_refused(token):
    refused(verify_token, KEY, token)


def test_short_keys_are_refused_when_minting():
    with pytest.raises(ValueError):
        mint_token("short", "dev", 60)


# --------------------------------------------------------------------------- policy


def test_allow_policy_covers_the_whole_api():
    policy = allow_policy("dev", METHOD_ARN, {"sub": "dev", "scheme": "bearer"})
    statement = policy["policyDocument"]["Statement"][0]
    assert policy["principalId"] == "dev"
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "execute-api:Invoke"
    assert statement["Resource"] == "arn:aws:execute-api:eu-west-1:123456789012:abc123def4/prod/*/*"
    assert policy["context"] == {"sub": "dev", "scheme": "bearer"}


def test_wildcard_resource_keeps_partition_and_stage():
    arn = "arn:aws-cn:execute-api:cn-north-1:123456789012:api9/v1/GET/map"
    expected = "arn:aws-cn:execute-api:cn-north-1:123456789012:api9/v1/*/*"
    assert api_wildcard_resource(arn) == expected


@pytest.mark.parametrize("arn", ["", "arn:aws:s3:::bucket", "arn:aws:execute-api:eu-west-1:1:api"])
def test_malformed_method_arn_is_refused(arn):
    refused(api_wildcard_resource, arn)


# --------------------------------------------------------------------------- key source


def test_literal_and_file_key_sources(tmp_path):
    assert TokenKeySource(literal=KEY).key() == KEY.encode()
    key_file = tmp_path / "token.key"
    key_file.write_text(KEY + "\n")
    assert TokenKeySource(file=key_file).key() == KEY.encode()


def test_missing_key_file_or_short_key_fails_closed(tmp_path):
    refused(TokenKeySource(file=tmp_path / "absent").key)
    refused(TokenKeySource(literal="short").key)


def test_key_source_needs_exactly_one_origin():
    with pytest.raises(ValueError):
        TokenKeySource(literal=KEY, file="x")
    with pytest.raises(ValueError):
        TokenKeySource(secret_arn="arn:x")  # no client


@mock_aws
def test_secrets_manager_key_is_cached_until_ttl():
    client = boto3.client("secretsmanager", region_name="eu-west-1")
    arn = client.create_secret(Name="artlens/token", SecretString=KEY)["ARN"]
    now = [1000.0]
    source = TokenKeySource(secret_arn=arn, secrets_client=client, ttl_s=60, clock=lambda: now[0])
    assert source.key() == KEY.encode()
    client.put_secret_value(SecretId=arn, SecretString=OTHER_KEY)
    now[0] += 30
    assert source.key() == KEY.encode()  # cached
    now[0] += 31
    assert source.key() == OTHER_KEY.encode()  # rotation picked up after the TTL


@mock_aws
def test_secrets_manager_json_secret():
    client = boto3.client("secretsmanager", region_name="eu-west-1")
    arn = client.create_secret(Name="t", SecretString=json.dumps({"key": OTHER_KEY}))["ARN"]
    assert TokenKeySource(secret_arn=arn, secrets_client=client).key() == OTHER_KEY.encode()


@mock_aws
def test_missing_secret_fails_closed():
    client = boto3.client("secretsmanager", region_name="eu-west-1")
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:absent-AbCdEf"
    refused(TokenKeySource(secret_arn=arn, secrets_client=client).key)


def test_unreachable_secrets_manager_fails_closed(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client(
        "secretsmanager",
        region_name="eu-west-1",
        endpoint_url="http://127.0.0.1:9",  # nothing listens on the discard port
        config=Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}),
    )
    source = TokenKeySource(secret_arn="arn:aws:secretsmanager:eu-west-1:1:secret:x",
                            secrets_client=client)
    started = time.monotonic()
    refused(source.key)
    assert time.monotonic() - started < 10


# --------------------------------------------------------------------------- authenticate


def request(authorization: str | None) -> dict:
    headers = {} if authorization is None else {"authorization": authorization}
    return {"type": "REQUEST", "methodArn": METHOD_ARN, "headers": headers}


def bearer_only() -> Authenticator:
    return Authenticator({"Bearer": BearerVerifier(TokenKeySource(literal=KEY))})


def test_authenticate_bearer_case_insensitive_scheme():
    token = mint_token(KEY, "alice", 60)
    expires_at = verify_token(KEY, token)["exp"]
    for scheme in ("Bearer", "bearer", "BEARER"):
        principal = bearer_only().authenticate(request(f"{scheme} {token}"))
        assert principal == Principal(sub="alice", scheme="bearer", expires_at=expires_at)
        # the token's end reaches GET /whoami through the authorizer context
        assert principal.context() == {"sub": "alice", "scheme": "bearer", "exp": expires_at,
                                       "scopes": "predict"}


@pytest.mark.parametrize("value", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "token"])
def test_authenticate_refuses_missing_or_unknown_schemes(value):
    refused(bearer_only().authenticate, request(value))


def test_a_second_scheme_plugs_in_where_the_authenticator_is_built():
    def verify(credentials, event):
        if credentials != "letmein":
            raise Unauthorized("bad signature")
        return Principal(sub="client-1", scheme="test-hmac")

    both = Authenticator({"Bearer": BearerVerifier(TokenKeySource(literal=KEY)),
                          "Test-HMAC": verify})
    assert both.schemes == ("bearer", "test-hmac")
    principal = both.authenticate(request("test-hmac letmein"))
    assert principal.context() == {"sub": "client-1", "scheme": "test-hmac",
                                   "scopes": "predict"}
    refused(both.authenticate, request("Test-HMAC wrong"))
    refused(bearer_only().authenticate, request("test-hmac letmein"))  # nothing global


# --------------------------------------------------------------------------- issue 13


def test_an_exp_given_as_a_string_is_refused():
    """PyJWT reads "exp": "9999999999" as a number; a token must carry integers."""
    now = int(time.time())
    for claims in ({"sub": "dev", "exp": str(now + 600)},
                   {"sub": "dev", "exp": now + 600, "iat": str(now)},
                   {"sub": "dev", "exp": float(now + 600)},
                   {"sub": "dev", "exp": True}):
        token = jwt.encode(claims, KEY, algorithm="HS256")
        assert "integers" in refused(verify_token, KEY, token).message or claims["exp"] is True


def test_tokens_living_longer_than_the_cap_are_refused():
    now = int(time.time())
    year = jwt.encode({"sub": "dev", "exp": now + 365 * 86400}, KEY, algorithm="HS256")
    assert "maximum" in refused(verify_token, KEY, year).message
    old_iat = jwt.encode({"sub": "dev", "iat": now - 40 * 86400, "exp": now + 600}, KEY,
                         algorithm="HS256")
    assert "maximum" in refused(verify_token, KEY, old_iat).message
    month = mint_token(KEY, "dev", 30 * 86400)
    assert verify_token(KEY, month)["sub"] == "dev"  # the cap itself is allowed
    refused(lambda: verify_token(KEY, month, max_lifetime_s=3600))  # a lower configured cap
    with pytest.raises(ValueError):
        mint_token(KEY, "dev", 31 * 86400)
    verifier = BearerVerifier(TokenKeySource(literal=KEY), max_lifetime_s=3600)
    with pytest.raises(Unauthorized):
        verifier(month, {})


# --------------------------------------------------------------------------- issue 14: scopes


def test_tokens_carry_their_scopes_sorted_and_space_separated():
    plain = verify_token(KEY, mint_token(KEY, "dev", 60))
    assert plain["scope"] == "predict" and token_scopes(plain) == {"predict"}
    curator = verify_token(KEY, mint_token(KEY, "carol", 60, scopes=("review", "predict",
                                                                        "review")))
    assert curator["scope"] == "predict review"
    assert token_scopes(curator) == {"predict", "review"}


@pytest.mark.parametrize("scopes", [("admin",), ("predict", "write"), (), "review", ("",)])
def test_minting_refuses_unknown_or_missing_scopes(scopes):
    with pytest.raises(ValueError):
        mint_token(KEY, "dev", 60, scopes=scopes)


def test_a_token_without_a_scope_claim_can_only_predict():
    old = jwt.encode({"sub": "dev", "exp": int(time.time()) + 600}, KEY, algorithm="HS256")
    principal = bearer_only().authenticate(request(f"Bearer {old}"))
    assert principal.scopes == {"predict"}
    assert principal.context()["scopes"] == "predict"


@pytest.mark.parametrize("claim", [["predict", "review"], 7, None, True, {"review": 1}])
def test_a_scope_claim_that_is_not_a_string_is_refused(claim):
    token = jwt.encode({"sub": "dev", "exp": int(time.time()) + 600, "scope": claim}, KEY,
                       algorithm="HS256")
    assert "string" in refused(verify_token, KEY, token).message
    refused(bearer_only().authenticate, request(f"Bearer {token}"))


@pytest.mark.parametrize("claim", ["admin", "predict admin", "review  x" * 300, "", "   "])
def test_a_scope_claim_naming_an_unknown_scope_is_refused(claim):
    token = jwt.encode({"sub": "dev", "exp": int(time.time()) + 600, "scope": claim[:3000]},
                       KEY, algorithm="HS256")
    message = refused(verify_token, KEY, token).message
    assert "scope" in message and len(message) < 200  # never echoes a long claim back


def routed(principal: Principal | None, *, stringly: bool = False) -> dict:
    """The proxy event a route sees behind the authorizer (API Gateway passes context values
    as strings: `stringly`)."""
    event: dict = {"httpMethod": "POST", "path": "/reviews", "headers": {}}
    if principal is not None:
        context = {**principal.context(), "principalId": principal.sub}
        if stringly:
            context = {name: str(value) for name, value in context.items()}
        event["requestContext"] = {"authorizer": context}
    return event


def forbidden(event: Mapping[str, Any]) -> Forbidden:
    with pytest.raises(Forbidden) as info:
        require_scope(event, SCOPE_REVIEW)
    assert (info.value.status, info.value.code) == (403, "insufficient_scope")
    return info.value


def test_a_predict_only_token_cannot_review_and_a_review_token_can():
    predict_only = bearer_only().authenticate(request(f"Bearer {mint_token(KEY, 'pat', 60)}"))
    curator = bearer_only().authenticate(
        request(f"Bearer {mint_token(KEY, 'carol', 60, scopes=SCOPES)}"))
    for stringly in (False, True):
        refusal = forbidden(routed(predict_only, stringly=stringly))
        assert refusal.message == ("This needs the 'review' scope; ask for a key or token "
                                   "with it.")
        assert require_scope(routed(curator, stringly=stringly), SCOPE_REVIEW) == "carol"
        assert require_scope(routed(predict_only, stringly=stringly), SCOPE_PREDICT) == "pat"
    assert scopes_of(routed(curator)) == {"predict", "review"}
    # the one place errors become responses answers the documented JSON
    response = response_for_exception(refusal, "*", None)
    assert response["statusCode"] == 403
    assert json.loads(response["body"])["error"] == "insufficient_scope"


def test_contexts_without_scopes_or_without_anyone():
    legacy = {"requestContext": {"authorizer": {"sub": "dev", "scheme": "bearer"}}}
    assert scopes_of(legacy) == {"predict"} and principal_sub(legacy) == "dev"
    forbidden(legacy)
    nobody: dict = {"httpMethod": "POST", "path": "/reviews"}
    assert principal_sub(nobody) is None and scopes_of(nobody) == {"predict"}
    with pytest.raises(Unauthorized):
        require_scope(nobody, SCOPE_REVIEW)
    with pytest.raises(ValueError):
        require_scope(legacy, "admin")  # a route asking for a scope that does not exist


def test_a_signed_requests_cached_context_is_never_trusted_for_scopes():
    """A captured signed request's Authorization header may come back with the context API
    Gateway cached for it: until the predict function verified the request, no scope (and no
    sub) is read from that context."""
    cached = {"sub": "ak_x", "scheme": "hmac", "scopes": "predict review", "principalId": "ak_x"}
    for event in (
        {"headers": {}, "requestContext": {"authorizer": cached}},
        {"headers": {"Authorization": "ArtLens-HMAC-SHA256 " + "0" * 64},
         "requestContext": {"authorizer": {**cached, "scheme": "bearer"}}},
        # API Gateway's context values are strings: "true" is not the in-process flag
        {"headers": {}, "requestContext": {"authorizer": {**cached, "verified": "true"}}},
    ):
        for read in (scopes_of, principal_sub, lambda e: require_scope(e, SCOPE_REVIEW)):
            with pytest.raises(Unauthorized):
                read(event)
    verified = with_verified_principal(
        {"headers": {}, "requestContext": {"authorizer": cached, "requestId": "r"}},
        Principal(sub="ak_x", scheme="hmac", scopes=frozenset({"predict"})),
    )
    assert verified["requestContext"]["requestId"] == "r"
    assert forbidden(verified)  # the verified key's scopes, not the cached "predict review"


# ----- API keys


def read_document(path) -> dict:
    return json.loads(path.read_text())


def test_keys_store_and_show_their_scopes(tmp_path):
    backend = FileKeys(tmp_path / "api_keys.json")
    plain = issue_key(backend, "alice")
    curator = issue_key(backend, "carol", ("review", "predict"))
    assert plain.scopes == ("predict",) and curator.scopes == ("predict", "review")
    document = read_document(tmp_path / "api_keys.json")
    assert document[curator.key_id]["scopes"] == ["predict", "review"]
    assert backend.read()[curator.key_id].scopes == ("predict", "review")
    shown = curator.public()
    assert shown["scopes"] == ["predict", "review"] and "secret" not in shown
    for bad in (("admin",), (), "review"):
        with pytest.raises(ValueError):
            issue_key(backend, "mallory", bad)
    assert len(backend.read()) == 2  # nothing was written for the refused ones


def test_an_old_key_document_without_scopes_reads_as_predict_only(tmp_path):
    (tmp_path / "api_keys.json").write_text(json.dumps({
        "ak_old": {"name": "old", "secret": "s" * 43, "created": "2025-01-01T00:00:00+00:00",
                   "revoked": None},
    }))
    (old,) = FileKeys(tmp_path / "api_keys.json").read().values()
    assert old.scopes == ("predict",) and old.public()["scopes"] == ["predict"]


@pytest.mark.parametrize("scopes", ["predict review", ["admin"], [], [1], None, {"review": 1}])
def test_a_key_entry_with_malformed_scopes_is_skipped(scopes):
    keys = parse_keys({"ak_bad": {"secret": "s" * 43, "scopes": scopes},
                       "ak_good": {"secret": "t" * 43, "scopes": ["review"]}})
    assert list(keys) == ["ak_good"] and keys["ak_good"].scopes == ("review",)


def signed_event(key, cached_scopes: str = "predict review") -> dict:
    body = b"decision"
    headers = sign_request(key.key_id, key.secret, "POST", "/reviews", [], body,
                           host="api.example", content_type="application/json")
    return {
        "httpMethod": "POST", "path": "/reviews", "resource": "/reviews", "headers": headers,
        "body": base64.b64encode(body).decode(), "isBase64Encoded": True,
        "requestContext": {"authorizer": {"sub": key.key_id, "scheme": "hmac",
                                          "scopes": cached_scopes, "principalId": key.key_id}},
    }


def test_a_signed_request_gets_its_keys_scopes_from_the_full_verification(tmp_path):
    backend = FileKeys(tmp_path / "api_keys.json")
    key = issue_key(backend, "carol", SCOPES)
    checker = SignedRequests(MemoryNonces(),
                             lambda: HmacVerifier(ApiKeySource(backend, ttl_s=0)))
    principal = verify_signed_body(signed_event(key), checker)
    assert principal == Principal(sub=key.key_id, scheme="hmac",
                                  scopes=frozenset({"predict", "review"}))
    assert require_scope(verified_event(signed_event(key), checker), SCOPE_REVIEW) == key.key_id
    # The review scope is taken away: the very next request is refused, whatever the
    # authorizer context (cached for a header captured earlier) still says.
    assert set_key_scopes(backend, key.key_id, ["predict"]).scopes == ("predict",)
    forbidden(verified_event(signed_event(key, cached_scopes="predict review"), checker))
    with pytest.raises(NotFound):
        set_key_scopes(backend, "ak_missing", ["predict"])
    unsigned = routed(Principal(sub="dev", scheme="bearer"))
    assert verified_event(unsigned, checker) is unsigned  # bearer requests pass unchanged
    assert verify_signed_body(unsigned, checker) is None


def test_the_hmac_verifier_puts_the_keys_scopes_in_the_authorizer_context(tmp_path):
    backend = FileKeys(tmp_path / "api_keys.json")
    plain, curator = issue_key(backend, "alice"), issue_key(backend, "carol", SCOPES)
    verifier = HmacVerifier(ApiKeySource(backend, ttl_s=0))
    for key, scopes in ((plain, "predict"), (curator, "predict review")):
        event = signed_event(key)
        principal = verifier(event["headers"]["Authorization"].split(" ", 1)[1], event)
        assert principal.context() == {"sub": key.key_id, "scheme": "hmac", "scopes": scopes}


# ----- command lines


def test_the_key_cli_issues_and_changes_scopes(tmp_path, capsys):
    from client import keys as cli

    state = ["--state-dir", str(tmp_path), "--json"]
    assert cli.main([*state, "issue", "--name", "carol", "--scope", "review"]) == 0
    issued = json.loads(capsys.readouterr().out)
    assert issued["scopes"] == ["review"]
    assert cli.main([*state, "issue", "--name", "alice"]) == 0
    plain = json.loads(capsys.readouterr().out)
    document = read_document(tmp_path / "api_keys.json")
    assert document[issued["key_id"]]["scopes"] == ["review"]
    assert document[plain["key_id"]]["scopes"] == ["predict"]
    assert cli.main([*state, "scopes", plain["key_id"], "--scope", "predict", "--scope",
                     "review"]) == 0
    assert json.loads(capsys.readouterr().out)["scopes"] == ["predict", "review"]
    assert read_document(tmp_path / "api_keys.json")[plain["key_id"]]["scopes"] == [
        "predict", "review"]
    assert cli.main([*state, "scopes", "ak_missing", "--scope", "predict"]) == 1
    for argv in (["issue", "--name", "x", "--scope", "admin"], ["scopes", plain["key_id"]]):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*state, *argv])
        assert exit_.value.code == 2
    assert cli.main(["--state-dir", str(tmp_path), "list"]) == 0
    assert "predict review" in capsys.readouterr().out


def test_make_token_takes_scopes(tmp_path, capsys):
    from local_stack import token

    assert token.main(["--state-dir", str(tmp_path)]) == 0
    key = (tmp_path / "token.key").read_bytes().strip()
    assert verify_token(key, capsys.readouterr().out.strip())["scope"] == "predict"
    assert token.main(["--state-dir", str(tmp_path), "--scope", "predict", "--scope",
                       "review"]) == 0
    assert verify_token(key, capsys.readouterr().out.strip())["scope"] == "predict review"
    with pytest.raises(SystemExit):
        token.main(["--state-dir", str(tmp_path), "--scope", "admin"])
