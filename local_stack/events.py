"""AWS-shaped events, built the way API Gateway (REST, proxy) and S3 -> SQS would build them.

The handlers cannot tell these from the real thing; that is the point of the local stack.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote_plus

REGION = "local"
ACCOUNT = "000000000000"
API_ID = "artlens"
STAGE = "local"
LAKE_BUCKET = "artlens-lake-local"
QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:artlens-incoming"

# Bodies API Gateway passes as text; everything else (images, multipart) arrives base64-encoded
# because the API declares binary media types.
_TEXT_CONTENT_TYPES = ("application/json", "text/", "application/x-www-form-urlencoded")


@dataclass
class LambdaContext:
    """The attributes Powertools and handlers read from the Lambda context object."""

    function_name: str
    memory_limit_in_mb: int = 1024
    timeout_ms: int = 30_000
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        elapsed_ms = int((time.monotonic() - self._started) * 1000)
        return max(0, self.timeout_ms - elapsed_ms)


@dataclass(frozen=True)
class HttpRequest:
    """What the gateway read off the socket."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str


def method_arn(method: str, path: str) -> str:
    return f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{STAGE}/{method}{path}"


def _header_maps(headers: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value  # API Gateway keeps the last value in `headers`
        multi.setdefault(name, []).append(value)
    return single, multi


def _query_maps(query: str) -> tuple[dict[str, str] | None, dict[str, list[str]] | None]:
    if not query:
        return None, None
    multi = parse_qs(query, keep_blank_values=True)
    if not multi:
        return None, None
    return {name: values[-1] for name, values in multi.items()}, multi


def _content_type(headers: list[tuple[str, str]]) -> str:
    for name, value in headers:
        if name.lower() == "content-type":
            return value.lower()
    return ""


def _encode_body(request: HttpRequest) -> tuple[str | None, bool]:
    if not request.body:
        return None, False
    if _content_type(request.headers).startswith(_TEXT_CONTENT_TYPES):
        try:
            return request.body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(request.body).decode("ascii"), True


def _request_context(request: HttpRequest, request_id: str) -> dict:
    now = datetime.now(UTC)
    return {
        "accountId": ACCOUNT,
        "apiId": API_ID,
        "stage": STAGE,
        "requestId": request_id,
        "extendedRequestId": request_id,
        "httpMethod": request.method,
        "path": f"/{STAGE}{request.path}",
        "resourcePath": request.path,
        "resourceId": request.path.strip("/") or "root",
        "protocol": "HTTP/1.1",
        "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "requestTimeEpoch": int(now.timestamp() * 1000),
        "domainName": "localhost",
        "identity": {"sourceIp": request.source_ip, "userAgent": None},
    }


def proxy_event(request: HttpRequest, request_id: str, authorizer: dict | None = None) -> dict:
    """An API Gateway REST API (v1) Lambda proxy integration event."""
    headers, multi_headers = _header_maps(request.headers)
    query, multi_query = _query_maps(request.query)
    body, is_base64 = _encode_body(request)
    context = _request_context(request, request_id)
    if authorizer is not None:
        context["authorizer"] = authorizer
    for name, value in headers.items():
        if name.lower() == "user-agent":
            context["identity"]["userAgent"] = value
    return {
        "resource": request.path,
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": context,
        "body": body,
        "isBase64Encoded": is_base64,
    }


def authorizer_event(request: HttpRequest, request_id: str) -> dict:
    """A REQUEST authorizer event: the proxy event's headers and query, plus the method ARN."""
    headers, multi_headers = _header_maps(request.headers)
    query, multi_query = _query_maps(request.query)
    return {
        "type": "REQUEST",
        "methodArn": method_arn(request.method, request.path),
        "resource": request.path,
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query or {},
        "multiValueQueryStringParameters": multi_query or {},
        "pathParameters": {},
        "stageVariables": {},
        "requestContext": _request_context(request, request_id),
    }


def s3_object_created(key: str, size: int, etag: str) -> dict:
    """An S3 event notification for one new object (key URL-encoded, as S3 sends it)."""
    now = datetime.now(UTC)
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": REGION,
                "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "local"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {
                    "x-amz-request-id": uuid.uuid4().hex[:16].upper(),
                    "x-amz-id-2": uuid.uuid4().hex,
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "incoming",
                    "bucket": {
                        "name": LAKE_BUCKET,
                        "ownerIdentity": {"principalId": "local"},
                        "arn": f"arn:aws:s3:::{LAKE_BUCKET}",
                    },
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": size,
                        "eTag": etag,
                        "sequencer": f"{time.time_ns():016X}",
                    },
                },
            }
        ]
    }


def sqs_message(
    message_id: str, body: dict, receive_count: int, first_receive_ms: int, sent_ms: int
) -> dict:
    """One SQS record of an event-source-mapping batch, carrying `body` as JSON text.

    A redelivered message keeps its messageId and gets a new receipt handle, as in SQS.
    """
    text = json.dumps(body)
    return {
        "messageId": message_id,
        "receiptHandle": uuid.uuid4().hex,
        "body": text,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": str(sent_ms),
            "SenderId": "local",
            "ApproximateFirstReceiveTimestamp": str(first_receive_ms),
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(text.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": REGION,
    }
