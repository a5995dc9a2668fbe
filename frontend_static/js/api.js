// The one place that talks to the ArtLens HTTP API (docs/architecture.md, "HTTP API").
// XMLHttpRequest rather than fetch: it is the only browser API that reports upload progress.

export class ApiError extends Error {
  /**
   * @param {"http"|"network"|"timeout"|"bad_response"} kind
   * @param {string} message
   * @param {{status?: number, code?: string, apiUrl?: string}} [details]
   */
  constructor(kind, message, { status = 0, code = "", apiUrl = "" } = {}) {
    super(message);
    this.name = "ApiError";
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.apiUrl = apiUrl;
  }

  /** The server does not know this route yet (an older API than this page). */
  get routeMissing() {
    return this.kind === "http" && (this.status === 404 || this.status === 405) &&
      (this.code === "not_found" || this.code === "method_not_allowed" || this.code === "");
  }
}

function abortError() {
  return new DOMException("The request was cancelled.", "AbortError");
}

export class ApiClient {
  /** @param {{apiBaseUrl: string, requestTimeoutMs: number}} config @param {() => string} getToken */
  constructor(config, getToken) {
    this.base = config.apiBaseUrl;
    this.timeoutMs = config.requestTimeoutMs;
    this.getToken = getToken;
  }

  /** Where the API lives, as a person would recognise it in an error message. */
  get apiUrl() {
    return this.base || window.location.origin;
  }

  /** Resolve a URL the API returned (absolute presigned URL, or a path on the API origin). */
  resolve(url) {
    const base = this.base ? new URL(`${this.base}/`, window.location.href).href : window.location.href;
    return new URL(url, base).href;
  }

  /** POST the image bytes to /predict; `onProgress(loaded, total)` follows the upload. */
  predict(blob, { neighbors = 5, scope = "class", signal, onProgress } = {}) {
    const query = new URLSearchParams({ neighbors: String(neighbors), scope });
    return this.#request(`/predict?${query}`, {
      method: "POST",
      body: blob,
      headers: { "Content-Type": blob.type || "application/octet-stream" },
      signal,
      onProgress,
    });
  }

  /** Predict for a stored work or a picture uploaded before: `{key}` or `{sha256}`. */
  predictByReference(reference, { neighbors = 5, scope = "class", signal } = {}) {
    const query = new URLSearchParams({ neighbors: String(neighbors), scope });
    return this.#request(`/predict?${query}`, {
      method: "POST",
      body: JSON.stringify(reference),
      headers: { "Content-Type": "application/json" },
      signal,
    });
  }

  /** A JPEG preview made by the server, for formats this browser cannot display (TIFF). */
  preview(blob, { signal } = {}) {
    return this.#request("/preview", {
      method: "POST",
      body: blob,
      headers: { "Content-Type": blob.type || "application/octet-stream" },
      signal,
    });
  }

  /** Who the token belongs to and when it expires: a cheap authenticated call. */
  whoami(token, { signal } = {}) {
    return this.#request("/whoami", { method: "GET", signal, token });
  }

  /** GET the 3D projection of the current model's gallery. */
  collectionMap({ limit = 1000, signal, token } = {}) {
    return this.#request(`/map?${new URLSearchParams({ limit: String(limit) })}`, {
      method: "GET",
      signal,
      token,
    });
  }

  /** One work's record, relations and review trail: `key` is a gallery key or a SHA-256. */
  work(key, { signal } = {}) {
    return this.#request(`/works/${encodeURIComponent(key)}`, { method: "GET", signal });
  }

  /** Groups of works that are the same picture (the curators' duplicate list). */
  duplicates({ signal } = {}) {
    return this.#request("/duplicates", { method: "GET", signal });
  }

  /** Works waiting for a curator, likeliest catalogue errors first. */
  reviewQueue({ limit = 50, signal } = {}) {
    return this.#request(`/review?${new URLSearchParams({ limit: String(limit) })}`, {
      method: "GET",
      signal,
    });
  }

  /** A curator's decision on one work: {decision: "confirm"} or {decision: "correct", type}.
   * Needs a token with the `review` scope (403 insufficient_scope otherwise). */
  review(key, decision, { signal } = {}) {
    return this.#request(`/review/${encodeURIComponent(key)}`, {
      method: "POST",
      body: JSON.stringify(decision),
      headers: { "Content-Type": "application/json" },
      signal,
    });
  }

  /** Intake batches, newest first. */
  reports({ limit = 20, signal } = {}) {
    return this.#request(`/reports?${new URLSearchParams({ limit: String(limit) })}`, {
      method: "GET",
      signal,
    });
  }

  /** One intake batch: counts, rows and the same rows as CSV text. */
  report(batch, { signal } = {}) {
    return this.#request(`/reports/${encodeURIComponent(batch)}`, { method: "GET", signal });
  }

  #request(path, { method, body = null, headers = {}, signal, onProgress, token }) {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(abortError());
        return;
      }
      const xhr = new XMLHttpRequest();
      xhr.open(method, `${this.base}${path}`);
      xhr.timeout = this.timeoutMs;
      xhr.setRequestHeader("Accept", "application/json");
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
      const bearer = token ?? this.getToken();
      if (bearer) xhr.setRequestHeader("Authorization", `Bearer ${bearer}`);
      if (onProgress) {
        xhr.upload.addEventListener("progress", (event) =>
          onProgress(event.loaded, event.lengthComputable ? event.total : 0),
        );
        xhr.upload.addEventListener("load", () => onProgress(1, 1));
      }
      const onOuterAbort = () => xhr.abort();
      signal?.addEventListener("abort", onOuterAbort, { once: true });
      const settle = (action) => {
        signal?.removeEventListener("abort", onOuterAbort);
        action();
      };
      const apiUrl = this.apiUrl;
      xhr.onabort = () => settle(() => reject(abortError()));
      xhr.ontimeout = () =>
        settle(() =>
          reject(
            new ApiError(
              "timeout",
              `The ArtLens API at ${apiUrl} did not answer within ${Math.round(this.timeoutMs / 1000)} seconds.`,
              { apiUrl },
            ),
          ),
        );
      xhr.onerror = () =>
        settle(() =>
          reject(new ApiError("network", `The ArtLens API at ${apiUrl} did not answer.`, { apiUrl })),
        );
      xhr.onload = () => settle(() => this.#finish(xhr, resolve, reject));
      xhr.send(body);
    });
  }

  #finish(xhr, resolve, reject) {
    let payload = null;
    try {
      payload = JSON.parse(xhr.responseText);
    } catch {
      payload = null;
    }
    const ok = xhr.status >= 200 && xhr.status < 300;
    if (!ok) {
      const message =
        payload && typeof payload.message === "string" && payload.message
          ? payload.message
          : `The service answered with HTTP ${xhr.status}.`;
      reject(
        new ApiError("http", message, {
          status: xhr.status,
          code: payload && typeof payload.error === "string" ? payload.error : "",
          apiUrl: this.apiUrl,
        }),
      );
      return;
    }
    if (payload === null || typeof payload !== "object") {
      reject(
        new ApiError("bad_response", "The service sent an answer this page cannot read.", {
          status: xhr.status,
          apiUrl: this.apiUrl,
        }),
      );
      return;
    }
    resolve(payload);
  }
}
