"""Names shared by the runtime, the local stack, the client and infra/: ONE place for each.

Pure constants: this module imports nothing, so infra/ (CDK) and the authorizer can import it
without pulling in numpy, psycopg2 or boto3.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- object lake
# incoming/ (drops waiting to be indexed) -> gallery/<sha256>.<ext> | rejected/<name> with a
# rejected/<name>.reason.json beside it.
INCOMING_PREFIX = "incoming/"
GALLERY_PREFIX = "gallery/"
REJECTED_PREFIX = "rejected/"
# Pictures sent to POST /predict, kept as uploads/<sha256> so a shared link can show them again
# (the bucket expires them; see infra/constructs/data_lake.py).
UPLOADS_PREFIX = "uploads/"
# What the page shows of a work: smaller copies without metadata (EXIF GPS included), so
# originals stay private: renditions/<side>/<sha256>.jpg (artlens.renditions).
RENDITIONS_PREFIX = "renditions/"
# Intake triage: one report per ingest batch, reports/<batch>.csv and reports/<batch>.json.
REPORTS_PREFIX = "reports/"
LAKE_PREFIXES = (
    INCOMING_PREFIX, GALLERY_PREFIX, REJECTED_PREFIX, UPLOADS_PREFIX, RENDITIONS_PREFIX,
    REPORTS_PREFIX,
)
REASON_SUFFIX = ".reason.json"

# --------------------------------------------------------------------------- image formats
# Pillow format -> (gallery file extension, content type). The keys are the formats intake
# accepts; anything else is refused with 415.
IMAGE_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("jpg", "image/jpeg"),
    "MPO": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
    "GIF": ("gif", "image/gif"),
    "BMP": ("bmp", "image/bmp"),
    "TIFF": ("tif", "image/tiff"),
}
ACCEPTED_FORMATS = frozenset(IMAGE_FORMATS)
# File name suffixes the client and the local `make ingest` treat as pictures.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)

# --------------------------------------------------------------------------- model files
MODEL_CARD_FILE = "artlens.json"  # a registry version folder holds this card + its ONNX file
# The artifacts bucket's model registry: models/<version>/artlens.json + its ONNX file.
MODELS_PREFIX = "models/"

# --------------------------------------------------------------------------- auth scopes
# What a token or API key may do: `predict` (every read route and POST /predict) and `review`
# (curators: the review queue's decisions). A token or key that names none has `predict`.
SCOPE_PREDICT = "predict"
SCOPE_REVIEW = "review"
SCOPES = (SCOPE_PREDICT, SCOPE_REVIEW)

# --------------------------------------------------------------------------- HTTP
SIGNING_SCHEME = "ArtLens-HMAC-SHA256"  # the Authorization scheme word of signed requests
KEY_ID_HEADER = "X-ArtLens-Key-Id"
TIMESTAMP_HEADER = "X-ArtLens-Timestamp"
NONCE_HEADER = "X-ArtLens-Nonce"
CONTENT_SHA256_HEADER = "X-ArtLens-Content-SHA256"
# Which other request headers the signature covers (SigV4's SignedHeaders): `content-type;host`.
SIGNED_HEADERS_HEADER = "X-ArtLens-Signed-Headers"
SIGNING_HEADERS = (
    KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, CONTENT_SHA256_HEADER, SIGNED_HEADERS_HEADER,
)
# Browsers must be allowed to send these cross-origin (CORS preflight; API Gateway's too).
ALLOWED_HEADERS = ("Authorization", "Content-Type", *SIGNING_HEADERS)
ALLOWED_METHODS = ("GET", "POST", "OPTIONS")
API_KEYS_FILE_NAME = "api_keys.json"  # the local stack's key document, beside token.key

# --------------------------------------------------------------------------- environment
# Read by handlers only (artlens.settings.Settings.from_env); set by infra/ and local_stack.
ENV_MODEL_CARD_PATH = "MODEL_CARD_PATH"
ENV_MODEL_REGISTRY_DIR = "MODEL_REGISTRY_DIR"
ENV_DATABASE_URL = "DATABASE_URL"
ENV_DB_SECRET_ARN = "DB_SECRET_ARN"
ENV_DB_HOST = "DB_HOST"
ENV_DB_PORT = "DB_PORT"
ENV_DB_NAME = "DB_NAME"
ENV_IMAGES_BUCKET = "IMAGES_BUCKET"
ENV_LOCAL_LAKE_DIR = "LOCAL_LAKE_DIR"
ENV_LOCAL_URL_KEY = "LOCAL_URL_KEY"
ENV_LOCAL_URL_BASE = "LOCAL_URL_BASE"
ENV_TOKEN_SECRET_ARN = "TOKEN_SECRET_ARN"
ENV_TOKEN_KEY = "ARTLENS_TOKEN_KEY"
ENV_TOKEN_KEY_FILE = "ARTLENS_TOKEN_KEY_FILE"
ENV_API_KEYS_SECRET_ARN = "API_KEYS_SECRET_ARN"
ENV_API_KEYS_FILE = "API_KEYS_FILE"
ENV_API_KEYS_TTL_S = "API_KEYS_TTL_S"
ENV_TOKEN_MAX_LIFETIME_S = "TOKEN_MAX_LIFETIME_S"
ENV_CORS_ORIGIN = "CORS_ORIGIN"
ENV_ORT_THREADS = "ORT_THREADS"
ENV_INGEST_WORKERS = "INGEST_WORKERS"  # lake calls in flight per embed invocation
ENV_INGEST_DECODERS = "INGEST_DECODERS"  # decodes at once (each within the memory budget)
ENV_LOG_LEVEL = "LOG_LEVEL"
ENV_RENDITIONS_URL = "RENDITIONS_BASE_URL"  # AWS: CloudFront serves renditions/ from here
ENV_ARTIFACTS_BUCKET = "ARTIFACTS_BUCKET"  # AWS: the model registry's bucket (MODELS_PREFIX)
ENV_MODEL_CACHE_DIR = "MODEL_CACHE_DIR"  # where registry models are cached (/tmp on Lambda)
# What a deployed function may be given (infra/ checks its functions against this list).
HANDLER_ENV = (
    ENV_MODEL_CARD_PATH, ENV_MODEL_REGISTRY_DIR, ENV_DATABASE_URL, ENV_DB_SECRET_ARN, ENV_DB_HOST,
    ENV_DB_PORT, ENV_DB_NAME, ENV_IMAGES_BUCKET, ENV_LOCAL_LAKE_DIR, ENV_LOCAL_URL_KEY,
    ENV_LOCAL_URL_BASE, ENV_TOKEN_SECRET_ARN, ENV_TOKEN_KEY, ENV_TOKEN_KEY_FILE,
    ENV_API_KEYS_SECRET_ARN, ENV_API_KEYS_FILE, ENV_API_KEYS_TTL_S, ENV_CORS_ORIGIN,
    ENV_ORT_THREADS, ENV_LOG_LEVEL, ENV_TOKEN_MAX_LIFETIME_S, ENV_INGEST_WORKERS,
    ENV_INGEST_DECODERS, ENV_RENDITIONS_URL, ENV_ARTIFACTS_BUCKET, ENV_MODEL_CACHE_DIR,
)
