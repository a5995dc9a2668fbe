"""The REQUEST authorizer handler with its signing key in (moto) Secrets Manager."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import boto3
import jwt
import pytest
from moto import mock_aws

from artlens.auth.tokens import MAX_TOKEN_LENGTH, mint_token, verify_token
from lambdas import authorizer
from local_stack.events import LambdaContext

KEY = "s" * 64
METHOD_ARN = "arn:aws:execute-api:eu-west-1:123456789012:abc123def4/prod/POST/predict"
WILDCARD = "arn:aws:execute-api:eu-west-1:123456789012:abc123def4/prod/*/*"




def authorizer_event(authorization: str | None) -> dict:
    headers = {"Host": "abc123def4.execute-api.eu-west-1.amazonaws.com"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return {
        "type": "REQUEST",
        "methodArn": METHOD_ARN,
        "resource": "/predict",
        "path": "/predict",
        "httpMethod": "POST",
        "headers": headers,
        "queryStringParameters": {},
        "requestContext": {"requestId": "req-42", "stage": "prod"},
    }


@pytest.fixture
def aws_env(monkeypatch):
    for name in ("ARTLENS_TOKEN_KEY", "ARTLENS_TOKEN_KEY_FILE", "CORS_ORIGIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    authorizer.reset()
    yield monkeypatch
    authorizer.reset()


@pytest.fixture
def secret(aws_env):
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        arn = client.create_secret(Name="artlens/token-key", SecretString=KEY)["ARN"]
        aws_env.setenv("TOKEN_SECRET_ARN", arn)
        yield arn


def call(authorization: str | None) -> dict:
    return authorizer.handler(authorizer_event(authorization), LambdaContext("artlens-authorizer"))


def denied(authorization: str | None) -> None:
    with pytest.raises(Exception) as info:
        call(authorization)
    assert type(info.value) is Exception
    assert str(info.value) == "Unauthorized"


def test_valid_token_is_allowed_on_the_whole_api(secret):
    token = mint_token(KEY, "dev", 300)
    answer = call(f"Bearer {token}")
    assert answer["principalId"] == "dev"
    statement = answer["policyDocument"]["Statement"][0]
    assert statement["Effect"] == "Allow"
    assert statement["Resource"] == WILDCARD
    assert answer["context"] == {
        "sub": "dev", "scheme": "bearer", "exp": verify_token(KEY, token)["exp"],
        "scopes": "predict",
    }


def test_expired_token_is_unauthorized(secret):
    denied(f"Bearer {mint_token(KEY, 'dev', 10, now=time.time() - 600)}")


def test_token_from_another_key_is_unauthorized(secret):
    denied(f"Bearer {mint_token('x' * 64, 'dev', 300)}")


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz",
     "Bearer " + "a" * (MAX_TOKEN_LENGTH + 10)],
    ids=["missing", "empty", "no-token", "garbled", "basic", "oversized"],
)
def test_anything_but_a_valid_bearer_is_unauthorized(secret, authorization):
    denied(authorization)


def test_alg_none_is_unauthorized(secret):
    token = jwt.encode({"sub": "dev", "exp": int(time.time()) + 300}, None, algorithm="none")
    denied(f"Bearer {token}")


def test_credentials_never_reach_the_log(secret, caplog):
    token = mint_token("x" * 64, "dev", 300)
    with caplog.at_level("INFO"):
        denied(f"Bearer {token}")
    denial = [r for r in caplog.records if r.getMessage() == "request denied"]
    assert denial and denial[0].reason == "unauthorized"
    for record in caplog.records:
        assert token not in repr(record.__dict__)
        assert token.split(".")[2] not in repr(record.__dict__)  # not even the signature


def test_unreachable_secrets_manager_is_unauthorized_not_a_crash(aws_env):
    # Outside moto: a real client whose endpoint refuses connections.
    aws_env.setenv("TOKEN_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:k-a1")
    aws_env.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:9")
    started = time.monotonic()
    denied(f"Bearer {mint_token(KEY, 'dev', 300)}")
    assert time.monotonic() - started < 20


def test_missing_configuration_is_unauthorized(aws_env):
    aws_env.delenv("TOKEN_SECRET_ARN", raising=False)
    denied(f"Bearer {mint_token(KEY, 'dev', 300)}")


def test_local_key_from_env(aws_env):
    aws_env.setenv("ARTLENS_TOKEN_KEY", KEY)
    assert call(f"Bearer {mint_token(KEY, 'local', 60)}")["principalId"] == "local"


def test_the_authorizer_imports_no_numerical_or_database_library():
    """Its cold start stays small: a fresh interpreter importing the handler loads neither
    numpy, psycopg2, onnxruntime nor Pillow (the signed-request replay check is predict's)."""
    probe = (
        "import json, sys; import lambdas.authorizer; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    loaded = set(json.loads(completed.stdout.strip().splitlines()[-1]))
    assert "lambdas" in loaded and "artlens" in loaded
    assert loaded.isdisjoint({"numpy", "psycopg2", "onnxruntime", "PIL", "pgvector"}), loaded


# --------------------------------------------------------------------------- issue 13


def signed_event(tmp_path, aws_env, now: float) -> dict:
    from artlens.auth.keys import FileKeys, issue_key
    from artlens.auth.signing import sign_request

    key = issue_key(FileKeys(tmp_path / "api_keys.json"), "clock-skew")
    aws_env.setenv("API_KEYS_FILE", str(tmp_path / "api_keys.json"))
    event = authorizer_event(None)
    event["headers"] = sign_request(key.key_id, key.secret, "POST", "/predict", [], b"img",
                                    host=event["headers"]["Host"], content_type="image/jpeg",
                                    now=now)
    return event


def test_a_stale_signed_request_is_denied_with_the_documented_code(secret, tmp_path, aws_env):
    answer = authorizer.handler(signed_event(tmp_path, aws_env, time.time() - 3600),
                                LambdaContext("artlens-authorizer"))
    (statement,) = answer["policyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Resource"] == METHOD_ARN
    assert answer["context"]["error"] == "stale_request"


def test_a_fresh_signed_request_is_allowed(secret, tmp_path, aws_env):
    answer = authorizer.handler(signed_event(tmp_path, aws_env, time.time()),
                                LambdaContext("artlens-authorizer"))
    assert answer["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    assert answer["context"]["scheme"] == "hmac"


def test_other_signed_refusals_stay_a_bare_401(secret, tmp_path, aws_env):
    event = signed_event(tmp_path, aws_env, time.time())
    event["headers"]["X-ArtLens-Key-Id"] = "ak_0000000000000000"  # unknown: not told
    with pytest.raises(Exception) as info:
        authorizer.handler(event, LambdaContext("artlens-authorizer"))
    assert str(info.value) == "Unauthorized"


# --------------------------------------------------------------------------- issue 14: scopes


def test_the_allow_carries_the_tokens_scopes_for_the_routes(secret):
    """What the predict function reads as requestContext.authorizer: str/int values only."""
    for scopes, expected in ((("predict",), "predict"), (("review", "predict"), "predict review")):
        answer = call(f"Bearer {mint_token(KEY, 'carol', 600, scopes=scopes)}")
        assert answer["context"]["scopes"] == expected
        assert all(isinstance(v, str | int | bool) for v in answer["context"].values())
    old = jwt.encode({"sub": "dev", "exp": int(time.time()) + 600}, KEY, algorithm="HS256")
    assert call(f"Bearer {old}")["context"]["scopes"] == "predict"  # minted before scopes


@pytest.mark.parametrize("claim", ["admin", "predict superuser", ["review"], 1])
def test_a_token_with_an_unknown_or_malformed_scope_is_unauthorized(secret, claim):
    token = jwt.encode({"sub": "dev", "exp": int(time.time()) + 600, "scope": claim}, KEY,
                       algorithm="HS256")
    denied(f"Bearer {token}")


def test_a_signed_requests_allow_carries_its_keys_scopes(secret, tmp_path, aws_env):
    from artlens.auth.keys import FileKeys, set_key_scopes

    event = signed_event(tmp_path, aws_env, time.time())  # issued with the default: predict
    answer = authorizer.handler(event, LambdaContext("artlens-authorizer"))
    assert answer["context"]["scopes"] == "predict"
    key_id = event["headers"]["X-ArtLens-Key-Id"]
    set_key_scopes(FileKeys(tmp_path / "api_keys.json"), key_id, ["predict", "review"])
    authorizer.reset()  # a fresh container: the key document is read again
    answer = authorizer.handler(signed_event_for(tmp_path, key_id, aws_env),
                                LambdaContext("artlens-authorizer"))
    assert answer["context"]["scopes"] == "predict review"


def signed_event_for(tmp_path, key_id: str, aws_env) -> dict:
    from artlens.auth.keys import FileKeys
    from artlens.auth.signing import sign_request

    key = FileKeys(tmp_path / "api_keys.json").read()[key_id]
    event = authorizer_event(None)
    event["headers"] = sign_request(key.key_id, key.secret, "POST", "/predict", [], b"img",
                                    host=event["headers"]["Host"], content_type="image/jpeg")
    return event
