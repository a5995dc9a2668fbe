"""Tokens, the signing-key source, the scheme table and the authorizer policy (artlens.auth)."""

from __future__ import annotations

import base64
import json
import time

import boto3
import jwt
import pytest
from botocore.config import Config
from moto import mock_aws

from artlens.auth.policy import (
    Authenticator,
    BearerVerifier,
    Principal,
    allow_policy,
    api_wildcard_resource,
)
from artlens.auth.tokens import MAX_TOKEN_LENGTH, TokenKeySource, mint_token, verify_token
from artlens.errors import Unauthorized

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
        assert principal.context() == {"sub": "alice", "scheme": "bearer", "exp": expires_at}


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
    assert principal.context() == {"sub": "client-1", "scheme": "test-hmac"}
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
