"""API Gateway event parsing and response shaping (artlens.api.events, artlens.api.responses)."""

from __future__ import annotations

import base64
import json
import logging
import os
import re

import pytest

from artlens.api.events import (
    MAX_BODY_BYTES,
    Reference,
    body_bytes,
    extract_image,
    extract_picture,
    header,
    parse_map_query,
    parse_multipart,
    parse_predict_query,
)
from artlens.api.responses import (
    cors_headers,
    error_response,
    json_response,
    response_for_exception,
)
from artlens.errors import ArtLensError, BadRequest, ImageRejected, Unavailable

IMAGE = bytes(range(256)) * 4 + b"\r\n--notaboundary\r\n\r\n\n\r"  # binary, CR/LF-laden


def event(body=None, *, b64=False, headers=None, query=None, multi_query=None):
    return {
        "httpMethod": "POST",
        "resource": "/predict",
        "path": "/predict",
        "headers": headers or {},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "body": body,
        "isBase64Encoded": b64,
        "requestContext": {"requestId": "req-1"},
    }


def multipart(fields: dict[str, bytes], boundary: str = "----artlensBoundary7MA4YWxk") -> bytes:
    parts = []
    for name, value in fields.items():
        parts.append(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
            f"filename=\"{name}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
            + value + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def bad_request(fn, *args) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        fn(*args)
    assert info.value.status == 400
    return info.value


# --------------------------------------------------------------------------- bodies


def test_header_lookup_is_case_insensitive():
    ev = event(headers={"CONTENT-type": "image/png"})
    assert header(ev, "Content-Type") == "image/png"
    assert header({"multiValueHeaders": {"x-A": ["1", "2"]}}, "X-a") == "1"
    assert header(ev, "authorization") is None


def test_raw_body_base64_encoded_by_api_gateway():
    ev = event(base64.b64encode(IMAGE).decode(), b64=True, headers={"Content-Type": "image/jpeg"})
    assert extract_image(ev) == IMAGE


def test_raw_body_without_content_type():
    assert extract_image(event(base64.b64encode(IMAGE).decode(), b64=True)) == IMAGE


def test_missing_body_is_empty_bytes():
    assert body_bytes(event(None)) == b""


def test_invalid_base64_body_is_400():
    err = bad_request(extract_image, event("***not base64***", b64=True))
    assert err.code == "invalid_base64"


def test_raw_base64_body_with_line_breaks_and_spaces_is_decoded():
    wrapped = base64.encodebytes(IMAGE).decode().replace("\n", " \r\n\t")
    assert extract_image(event(wrapped, b64=True, headers={"Content-Type": "image/jpeg"})) == IMAGE
    err = bad_request(extract_image, event(wrapped + "*", b64=True))
    assert err.code == "invalid_base64"


@pytest.mark.parametrize("content_type", ["multipart/form-data", "Multipart/Form-Data"])
def test_multipart_field_file_is_extracted_binary_safe(content_type):
    boundary = "XyZ123"
    body = multipart({"note": b"hello", "file": IMAGE}, boundary)
    ev = event(
        base64.b64encode(body).decode(),
        b64=True,
        headers={"content-TYPE": f'{content_type}; boundary="{boundary}"'},
    )
    assert extract_image(ev) == IMAGE


def test_multipart_without_file_field_is_missing_file():
    boundary = "b1"
    body = multipart({"picture": IMAGE}, boundary)
    ev = event(base64.b64encode(body).decode(), b64=True,
               headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    err = bad_request(extract_image, ev)
    assert err.code == "missing_file"
    assert "file" in err.message


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", multipart({"file": IMAGE}, "b1")),  # no boundary parameter
        ("multipart/form-data; boundary=other", multipart({"file": IMAGE}, "b1")),  # wrong one
        ("multipart/form-data; boundary=b1", multipart({"file": IMAGE}, "b1")[:-10]),  # unclosed
        ("multipart/form-data; boundary=b1", b"--b1\r\nno blank line after headers\r\n--b1--"),
        ("multipart/form-data; boundary=" + "x" * 71, b"--x--"),  # RFC 2046: at most 70
    ],
    ids=["no-boundary", "wrong-boundary", "unclosed", "malformed-part", "boundary-too-long"],
)
def test_multipart_boundary_errors_are_bad_multipart(content_type, body):
    ev = event(base64.b64encode(body).decode(), b64=True, headers={"Content-Type": content_type})
    err = bad_request(extract_image, ev)
    assert err.code == "bad_multipart"


def test_parse_multipart_first_value_wins_and_empty_part():
    part = b'--q\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
    body = part + b"\r\n" + part + b"2\r\n--q--"
    assert parse_multipart(body, "multipart/form-data; boundary=q") == {"file": b""}


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8"])
def test_json_image_base64(content_type):
    body = json.dumps({"image_base64": base64.b64encode(IMAGE).decode()})
    assert extract_image(event(body, headers={"Content-Type": content_type})) == IMAGE


def test_json_data_url_prefix_and_line_breaks_are_accepted():
    encoded = base64.encodebytes(IMAGE).decode()  # wrapped at 76 columns
    body = json.dumps({"image_base64": "data:image/png;base64," + encoded})
    assert extract_image(event(body, headers={"Content-Type": "application/json"})) == IMAGE


def test_json_body_itself_base64_encoded_by_api_gateway():
    body = json.dumps({"image_base64": base64.b64encode(IMAGE).decode()}).encode()
    ev = event(base64.b64encode(body).decode(), b64=True,
               headers={"Content-Type": "application/json"})
    assert extract_image(ev) == IMAGE


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"image_base64": "abc$"}', "invalid_base64"),
        ('{"image_base64": "abcde"}', "invalid_base64"),  # bad padding
        ('{"image_base64": "QQ==QQ=="}', "invalid_base64"),  # data after the padding
        ('{"image_base64": "=QUJD"}', "invalid_base64"),  # leading padding
        ('{"image_base64": "QU\\nJ$D"}', "invalid_base64"),  # bad even without whitespace
        ('{"image_base64": "QUJ\\u00e9"}', "invalid_base64"),  # not ASCII
        ('{"image": "abcd"}', "missing_file"),
        ('["image_base64"]', "missing_file"),
        ('{"image_base64": 12}', "missing_file"),
        ("{not json", "bad_json"),
        ("[" * 100_000 + "]" * 100_000, "bad_json"),  # RecursionError in the parser, not 500
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "bad_json"),
        ('{"key": "gallery/' + "a" * 64 + '.jpg"}', "missing_file"),  # a reference: not here
    ],
    ids=["chars", "padding", "after-padding", "leading-padding", "bad-char", "not-ascii",
         "no-field", "array", "number", "not-json", "deep-array", "deep-object", "reference"],
)
def test_json_errors(body, code):
    err = bad_request(extract_image, event(body, headers={"Content-Type": "application/json"}))
    assert err.code == code


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"key": "gallery/" + "0f" * 32 + ".tif"}, Reference(key="gallery/" + "0f" * 32 + ".tif")),
        ({"sha256": "AB" * 32}, Reference(sha256="ab" * 32)),
        ({"image_base64": base64.b64encode(IMAGE).decode()}, IMAGE),
    ],
)
def test_predict_body_by_reference(document, expected):
    ev = event(json.dumps(document), headers={"Content-Type": "application/json"})
    assert extract_picture(ev) == expected


@pytest.mark.parametrize(
    ("document", "code"),
    [
        ({"key": "gallery/" + "a" * 64}, "bad_key"),
        ({"key": "gallery/" + "a" * 64 + ".jpg/../x.jpg"}, "bad_key"),
        ({"key": "uploads/" + "a" * 64 + ".jpg"}, "bad_key"),
        ({"sha256": "g" * 64}, "bad_sha256"),
        ({"sha256": ["a" * 64]}, "bad_sha256"),
        ({"sha256": "a" * 64, "image_base64": "QUJD"}, "missing_file"),
    ],
)
def test_bad_references_are_400(document, code):
    ev = event(json.dumps(document), headers={"Content-Type": "application/json"})
    assert bad_request(extract_picture, ev).code == code


def test_body_limit_fits_one_lambda_event():
    """API Gateway base64-encodes the body into an event of at most 6,291,456 bytes."""
    assert MAX_BODY_BYTES == (6_291_456 - 64 * 1024) * 3 // 4 == 4_669_440
    assert body_bytes(event(b"\0" * MAX_BODY_BYTES)) == b"\0" * MAX_BODY_BYTES
    for too_big in (event("a" * (MAX_BODY_BYTES + 1)),
                    event(base64.b64encode(b"\0" * (MAX_BODY_BYTES + 1)).decode(), b64=True),
                    event(base64.b64encode(b"\0" * (2 * MAX_BODY_BYTES)).decode(), b64=True)):
        with pytest.raises(ImageRejected) as raised:
            body_bytes(too_big)
        assert (raised.value.status, raised.value.code) == (413, "too_large")
        assert f"{MAX_BODY_BYTES:,} bytes" in raised.value.message


# --------------------------------------------------------------------------- queries


def test_predict_query_defaults():
    q = parse_predict_query(event())
    assert (q.neighbors, q.scope) == (5, "class")


@pytest.mark.parametrize(
    ("params", "expected"),
    [({"neighbors": "0"}, (0, "class")), ({"neighbors": "20", "scope": "all"}, (20, "all")),
     ({"scope": "CLASS"}, (5, "class")), ({"neighbors": " 7 "}, (7, "class"))],
)
def test_predict_query_valid(params, expected):
    q = parse_predict_query(event(query=params))
    assert (q.neighbors, q.scope) == expected


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"neighbors": "21"}, "neighbors"),
        ({"neighbors": "-1"}, "neighbors"),
        ({"neighbors": "five"}, "neighbors"),
        ({"neighbors": "2.5"}, "neighbors"),
        ({"neighbors": ""}, "neighbors"),
        ({"neighbors": "\u0665"}, "neighbors"),  # Arabic-Indic five: isdigit() but not ASCII
        ({"scope": "everything"}, "scope"),
        ({"k": "5"}, "k"),
    ],
)
def test_predict_query_invalid_names_the_parameter(params, named):
    err = bad_request(parse_predict_query, event(query=params))
    assert err.code == "bad_query"
    assert f"'{named}'" in err.message


def test_repeated_query_parameter_is_refused():
    ev = event(query={"neighbors": "3"}, multi_query={"neighbors": ["3", "4"]})
    err = bad_request(parse_predict_query, ev)
    assert err.code == "bad_query" and "neighbors" in err.message


def test_map_query():
    assert parse_map_query({"queryStringParameters": None}) == 500
    assert parse_map_query({"queryStringParameters": {"limit": "30"}}) == 30
    zero = {"queryStringParameters": {"limit": "0"}}
    assert bad_request(parse_map_query, zero).code == "bad_query"
    assert bad_request(parse_map_query, {"queryStringParameters": {"neighbors": "1"}}).code == (
        "bad_query"
    )


# --------------------------------------------------------------------------- responses

CORS_KEYS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Headers",
             "Access-Control-Allow-Methods")


def assert_cors(response, origin):
    headers = response["headers"]
    for key in CORS_KEYS:
        assert key in headers
    assert headers["Access-Control-Allow-Origin"] == origin
    allowed = headers["Access-Control-Allow-Headers"].lower()
    for name in ("authorization", "content-type", "x-artlens-nonce", "x-artlens-content-sha256"):
        assert name in allowed
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Cache-Control"] == "no-store"


def test_json_response_shape():
    response = json_response(200, {"a": 1}, "https://art.example")
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"a": 1}
    assert response["headers"]["Content-Type"] == "application/json"
    assert response["headers"]["Vary"] == "Origin"
    assert_cors(response, "https://art.example")


def test_wildcard_origin_has_no_vary():
    assert "Vary" not in cors_headers("*")


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (BadRequest("x", code="bad_query"), 400, "bad_query"),
        (ImageRejected("too_large", "big"), 413, "too_large"),
        (ImageRejected("unsupported_format", "html"), 415, "unsupported_format"),
        (Unavailable("db down"), 503, "unavailable"),
    ],
)
def test_error_response_maps_status_and_body(error, status, code):
    response = error_response(error, "*")
    assert response["statusCode"] == status
    assert json.loads(response["body"]) == {"error": code, "message": error.message}
    assert_cors(response, "*")


def test_unexpected_exception_is_generic_500_and_logged(caplog):
    secret_detail = "password=hunter2 in a connection string"
    with caplog.at_level(logging.ERROR, logger="artlens.api.responses"):
        response = response_for_exception(RuntimeError(secret_detail), "*")
    assert response["statusCode"] == 500
    body = json.loads(response["body"])
    assert body["error"] == "internal_error"
    assert secret_detail not in response["body"]
    assert_cors(response, "*")
    assert any("RuntimeError" in r.getMessage() for r in caplog.records)


def test_typed_error_passes_through_response_for_exception():
    response = response_for_exception(ArtLensError("nope", code="teapot", status=418), "*")
    assert response["statusCode"] == 418
    assert json.loads(response["body"])["error"] == "teapot"


def test_http_module_never_reads_the_environment(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("library code read os.environ")

    monkeypatch.setattr(os, "getenv", refuse)
    assert parse_predict_query(event(query={"neighbors": "1"})).neighbors == 1


def test_the_page_refuses_uploads_at_the_apis_own_body_limit():
    """The page checks size before sending; its limit must be the API's, or people either wait
    for a refusal the page could have given, or are refused pictures the API would take."""
    from pathlib import Path

    messages = (Path(__file__).parents[2] / "frontend_static/js/messages.js").read_text()
    match = re.search(r"export const MAX_UPLOAD_BYTES = ([\d_]+);", messages)
    assert match is not None
    assert int(match.group(1).replace("_", "")) == MAX_BODY_BYTES
