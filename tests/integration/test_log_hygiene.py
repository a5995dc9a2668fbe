"""Logging hygiene: the handlers' logs are structured (Powertools JSON on stdout), every line
carries a request or correlation id, and nothing logged contains a bearer token, an API key
secret, a signature or image bytes.

The handlers run in a child process (as in a Lambda container, their Powertools loggers own
stdout there), driven the way the local stack drives them: gateway-shaped events for a bearer
request, a signed request, a refused request, and an S3 -> SQS ingestion batch.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

from artlens.auth.keys import FileKeys, issue_key
from bench.stress import REPO_ROOT, stack_env
from tests.imagegen import jpeg_bytes

TOKEN_KEY = "log-hygiene-token-key-" + "k" * 40

DRIVER = r"""
import json, os, sys, uuid
from artlens.auth.tokens import mint_token
from artlens.lake import LocalLake
from artlens.auth.signing import sign_request
from artlens.index.embeddings import EmbeddingStore
from local_stack import events

EmbeddingStore(os.environ["DATABASE_URL"]).migrate()
from lambdas import authorizer, embed, predict  # cold start after the schema exists

image = open(os.environ["PICTURE"], "rb").read()
token = mint_token(os.environ["ARTLENS_TOKEN_KEY"], "dev", 600)
signed = sign_request(os.environ["KEY_ID"], os.environ["KEY_SECRET"], "POST", "/predict",
                      [("neighbors", "2")], image, host="127.0.0.1:8000",
                      content_type="image/jpeg")
print(json.dumps({"token": token, "signature": signed["Authorization"]}), file=sys.stderr)
statuses = []
for headers in ({"Authorization": "Bearer " + token, "Content-Type": "image/jpeg"},
                signed,
                {"Authorization": "Bearer " + token[:-4] + "AAAA"}):
    request = events.HttpRequest("POST", "/predict", "neighbors=2", list(headers.items()),
                                 image, "127.0.0.1")
    request_id = str(uuid.uuid4())
    try:
        policy = authorizer.handler(events.authorizer_event(request, request_id),
                                    events.LambdaContext("artlens-authorizer"))
    except Exception as exc:
        statuses.append(str(exc))
        continue
    context = {**policy["context"], "principalId": policy["principalId"]}
    answer = predict.handler(events.proxy_event(request, request_id, authorizer=context),
                             events.LambdaContext("artlens-predict"))
    statuses.append(answer["statusCode"])
lake = LocalLake(os.environ["LOCAL_LAKE_DIR"], os.environ["LOCAL_URL_KEY"].encode())
lake.put("incoming/hygiene.jpg", image)
lake.put("incoming/broken.jpg", image[:200])
records = [events.sqs_message(f"m{i}", events.s3_object_created(k, 1, "e"), 1, 0, 0)
           for i, k in enumerate(["incoming/hygiene.jpg", "incoming/broken.jpg"])]
batch = embed.handler({"Records": records}, events.LambdaContext("artlens-embed"))
statuses.append(len(batch["batchItemFailures"]))
print(json.dumps({"statuses": statuses}), file=sys.stderr)
"""


def test_handler_logs_are_json_with_ids_and_carry_no_secrets(pg_dsn, tiny_model_card, tmp_path):
    picture = jpeg_bytes(901, (300, 200))
    (tmp_path / "picture.jpg").write_bytes(picture)
    key = issue_key(FileKeys(tmp_path / "api_keys.json"), "hygiene")
    env = stack_env({
        "MODEL_CARD_PATH": str(tiny_model_card), "DATABASE_URL": pg_dsn,
        "LOCAL_LAKE_DIR": str(tmp_path / "lake"), "LOCAL_URL_KEY": "hygiene-url-key",
        "ARTLENS_TOKEN_KEY": TOKEN_KEY, "API_KEYS_FILE": str(tmp_path / "api_keys.json"),
        "CORS_ORIGIN": "https://art.example", "LOG_LEVEL": "DEBUG",
        "PICTURE": str(tmp_path / "picture.jpg"), "KEY_ID": key.key_id,
        "KEY_SECRET": key.secret,
    })
    for name in ("IMAGES_BUCKET", "TOKEN_SECRET_ARN", "DB_SECRET_ARN", "ARTLENS_TOKEN_KEY_FILE",
                 "API_KEYS_SECRET_ARN", "POWERTOOLS_LOG_DEDUPLICATION_DISABLED"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", DRIVER], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    driver_lines = [json.loads(line) for line in done.stderr.splitlines()
                    if line.startswith("{")]
    credentials = driver_lines[0]
    assert driver_lines[-1]["statuses"] == [200, 200, "Unauthorized", 0]

    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) >= 4, done.stdout  # two requests served, one denial, one batch
    services = set()
    metric_lines = 0
    for line in lines:
        record = json.loads(line)  # every line is one JSON document
        if "_aws" in record:  # an embedded-metric-format line (artlens.metrics), not a log
            assert record["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ArtLens"
            metric_lines += 1
            continue
        assert record.get("correlation_id") or record.get("function_request_id"), record
        assert record.get("level") and record.get("message") is not None
        services.add(record["service"])
    assert services >= {"artlens-authorizer", "artlens-predict", "artlens-embed"}
    assert metric_lines >= 1  # predict and embed publish their metrics on stdout too
    assert any(json.loads(line).get("reason") for line in lines)  # the denial was logged

    # Neither the handlers' JSON nor the libraries' plain logging leaks anything.
    everything = done.stdout + "\n".join(
        line for line in done.stderr.splitlines() if not line.startswith("{")
    )
    token = credentials["token"]
    secrets = {
        "bearer token": token,
        "token signature": token.rsplit(".", 1)[1],
        "token key": TOKEN_KEY,
        "api key secret": key.secret,
        "request signature": credentials["signature"].split()[1],
    }
    for name, value in secrets.items():
        assert value not in everything, f"the {name} was logged"
    encoded = base64.b64encode(picture).decode()
    for start in range(0, len(encoded) - 64, len(encoded) // 8):
        assert encoded[start:start + 64] not in everything, "image bytes (base64) were logged"
    assert repr(picture[100:140])[2:-1] not in everything, "raw image bytes were logged"
    assert os.environ.get("ARTLENS_TOKEN_KEY") != TOKEN_KEY  # the child's env stayed its own
