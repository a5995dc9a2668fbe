"""The predict function's API, answered over its dependencies:
  POST /predict, GET /map, POST /preview, POST /uploads, GET /whoami     (artlens.api.answers)
  GET /works/{key}, GET /duplicates, GET /review, POST /review/{key} (`review` scope),
  GET /reports, GET /reports/{batch}                                    (artlens.api.curation)

Routing is one small table rather than Powertools' APIGatewayRestResolver: every answer,
including 404/405 and errors, goes through artlens.api.responses so it carries our JSON error
shape and the CORS headers.

Pictures sent to POST /predict are kept in the lake under `uploads/<sha256>`, so that a shared
link ({"sha256": ...}) can ask for the same answer later; gallery works are found by their key
or their SHA-256. Predict by reference re-runs the model on the stored picture: the answer is
exactly the one its upload got (every probability, the assessment), at the cost of one lake
read and one inference.

A picture too large for API Gateway's body (events.MAX_BODY_BYTES) goes around it: POST /uploads
answers a presigned PUT to `uploads/<sha256>` (the lake checks the bytes against that digest),
then POST /predict {"key": "uploads/<sha256>"} (or {"sha256": ...}) classifies it under the
picture limit (artlens.image.MAX_BYTES), not the body limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from artlens.api.answers import (
    MapAnswer,
    PredictAnswer,
    PreviewAnswer,
    Uncertainty,
    UploadAnswer,
    WhoAmI,
    collection_map,
    predict_image,
    preview_image,
    upload_ticket,
    who_am_i,
)
from artlens.api.curation import (
    DuplicatesAnswer,
    QueueAnswer,
    ReportAnswer,
    ReportsAnswer,
    ReviewAnswer,
    WorkDetail,
    duplicates,
    report,
    reports,
    review_answer,
    review_queue,
    work_detail,
)
from artlens.api.events import (
    Reference,
    extract_picture,
    parse_batch,
    parse_limit,
    parse_map_query,
    parse_predict_query,
    parse_review,
    parse_upload_request,
    parse_work_key,
    query_parameters,
)
from artlens.api.responses import cors_headers, json_response, response_for_exception
from artlens.auth.policy import require_scope
from artlens.auth.replay import NonceLedger
from artlens.auth.signing import verified_event
from artlens.errors import ArtLensError, NotFound
from artlens.image import MAX_BYTES
from artlens.index.embeddings import EmbeddingStore
from artlens.index.reviews import ReviewStore
from artlens.lake import ObjectLake
from artlens.models.classifier import Classifier
from artlens.names import SCOPE_REVIEW, UPLOADS_PREFIX

# Uploads being kept at once per API object (one per request in flight; the local gateway runs
# several requests at once, Lambda one).
KEEPERS = 4

Event = Mapping[str, Any]
Route = Callable[[Event], Mapping[str, Any]]


class ServingModel(Protocol):
    """artlens.models.versions.CurrentModel: the classifier of the current model version."""

    def classifier(self) -> Classifier: ...


def method_and_paths(event: Event) -> tuple[str, list[Any]]:
    return str(event.get("httpMethod", "")).upper(), [event.get("resource"), event.get("path")]


def find_route(event: Event, routes: Mapping[tuple[str, str], Route]) -> Route:
    """The route for the event's method and resource (or path); 404 / 405 otherwise."""
    method, paths = method_and_paths(event)
    for path in paths:
        if (method, path) in routes:
            return routes[(method, path)]
    if any((other, path) in routes for (other, _) in routes for path in paths):
        raise ArtLensError(
            f"{method} is not allowed here.", code="method_not_allowed", status=405
        )
    raise NotFound("No such route.")


class PredictApi:
    def __init__(
        self,
        model: ServingModel,
        store: EmbeddingStore,
        lake: ObjectLake,
        nonces: NonceLedger,
        cors_origin: str,
        logger: logging.Logger | Any = None,
        renditions_base_url: str | None = None,
    ):
        self.model = model
        self.store = store
        self.lake = lake
        self.nonces = nonces
        self.cors_origin = cors_origin
        self.logger = logger
        # Where renditions are served from (CloudFront on AWS); None: the lake's own URLs.
        self.base_url = renditions_base_url
        # Keeping an upload is an S3 call (tens of ms): it runs beside the model and the
        # search instead of after them. Threads start on first use; boto3 clients are
        # thread-safe.
        self._keeper = ThreadPoolExecutor(max_workers=KEEPERS, thread_name_prefix="keep-upload")
        self.routes: dict[tuple[str, str], Route] = {
            ("POST", "/predict"): self.predict,
            ("GET", "/map"): self.collection_map,
            ("POST", "/preview"): self.preview,
            ("GET", "/whoami"): self.whoami,
            ("POST", "/uploads"): self.upload,
            # API Gateway names the resource by its template, the key in pathParameters.
            ("GET", "/works/{key}"): self.work,
            ("GET", "/duplicates"): self.duplicates,
            ("GET", "/review"): self.review_queue,
            ("POST", "/review/{key}"): self.review,
            ("GET", "/reports"): self.reports,
            ("GET", "/reports/{batch}"): self.report,
        }

    def predict(self, event: Event) -> PredictAnswer:
        query = parse_predict_query(event)
        picture = extract_picture(event)
        classifier = self.model.classifier()
        if isinstance(picture, Reference):
            # A stored picture was admitted by ingest's limit, not the request body's.
            return predict_image(
                self._stored(picture, classifier.version), classifier, self.store, self.lake,
                query.neighbors, query.scope, max_bytes=MAX_BYTES, base_url=self.base_url,
            )
        keeping: list[Future[None]] = []
        try:
            return predict_image(
                picture, classifier, self.store, self.lake, query.neighbors, query.scope,
                base_url=self.base_url,
                on_accepted=lambda digest: keeping.append(
                    self._keeper.submit(self._keep_upload, digest, picture)),
            )
        finally:
            # Joined before answering: Lambda freezes the instance once the handler returns,
            # so nothing may still be writing then. _keep_upload logs its failures, never raises.
            for kept in keeping:
                kept.result()

    def _stored(self, reference: Reference, version: str) -> bytes:
        """The bytes of a gallery work (by key or SHA-256) or of a picture sent before."""
        if reference.key is not None:
            key, what = reference.key, f"key {reference.key}"
        else:
            assert reference.sha256 is not None
            key = self.store.key_of(reference.sha256, version) or UPLOADS_PREFIX + reference.sha256
            what = f"SHA-256 {reference.sha256}"
        try:
            # Bounded before reading: an oversized upload is a 413, never a download.
            return self.lake.get(key, max_bytes=MAX_BYTES)
        except NotFound:
            raise NotFound(f"The service holds no picture with {what}.") from None

    def _keep_upload(self, sha256: str, data: bytes) -> None:
        # Sharing by SHA-256 needs the picture later; losing it only breaks that link, so a
        # lake failure is logged, never the request's failure.
        key = UPLOADS_PREFIX + sha256
        try:
            self.lake.put_if_absent(key, data)
        except Exception as exc:
            (self.logger or logging.getLogger(__name__)).warning(
                "could not keep the upload %s: %s", key, type(exc).__name__
            )

    def upload(self, event: Event) -> UploadAnswer:
        return upload_ticket(parse_upload_request(event, MAX_BYTES), self.lake, max_bytes=MAX_BYTES)

    def preview(self, event: Event) -> PreviewAnswer:
        query_parameters(event, ())
        picture = extract_picture(event)
        if isinstance(picture, Reference):
            stored = self._stored(picture, self.model.classifier().version)
            return preview_image(stored, max_bytes=MAX_BYTES)
        return preview_image(picture)

    def whoami(self, event: Event) -> WhoAmI:
        query_parameters(event, ())
        return who_am_i((event.get("requestContext") or {}).get("authorizer"))

    def work(self, event: Event) -> WorkDetail:
        sha256 = parse_work_key(event)
        return work_detail(sha256, self.store, self.lake, self.model.classifier().version,
                           base_url=self.base_url)

    def collection_map(self, event: Event) -> MapAnswer:
        limit = parse_map_query(event)
        model = self.model.classifier()
        return collection_map(self.store, self.lake, model.version, limit, classes=model.classes,
                              base_url=self.base_url)

    def duplicates(self, event: Event) -> DuplicatesAnswer:
        query_parameters(event, ())
        return duplicates(self.store, self.lake, self.model.classifier().version,
                          base_url=self.base_url)

    def review_queue(self, event: Event) -> QueueAnswer:
        limit = parse_limit(event, default=50, maximum=500)
        model = self.model.classifier()
        return review_queue(
            self.store, self.lake, model.version, model.classes,
            min_probability=Uncertainty.of(model).min_probability, limit=limit,
            base_url=self.base_url,
        )

    def review(self, event: Event) -> ReviewAnswer:
        """A curator's decision: needs the `review` scope (403 otherwise), recorded with the
        verified principal's subject and the serving model's view."""
        reviewer = require_scope(event, SCOPE_REVIEW)
        request = parse_review(event)
        model = self.model.classifier()
        decided = ReviewStore(self.store.database).decide(
            request.sha256, request.decision, request.label, reviewer=reviewer,
            model_version=model.version, classes=model.classes, note=request.note,
        )
        return review_answer(decided)

    def reports(self, event: Event) -> ReportsAnswer:
        return reports(self.lake, parse_limit(event, default=20, maximum=200))

    def report(self, event: Event) -> ReportAnswer:
        return report(self.lake, parse_batch(event))

    def handle(self, event: Event) -> dict[str, Any]:
        """One proxy event -> one proxy response; never raises."""
        method, _ = method_and_paths(event)
        if method == "OPTIONS":
            return {"statusCode": 204, "headers": cors_headers(self.cors_origin), "body": ""}
        try:
            route = find_route(event, self.routes)
            # Signed: verified in full, every call; the routes see the verified principal.
            event = verified_event(event, self.nonces)
            return json_response(200, route(event), self.cors_origin)
        except Exception as exc:  # the one place errors become responses
            return response_for_exception(exc, self.cors_origin, self.logger)
