// The one place that talks to the ArtLens HTTP API (docs/architecture.md, "HTTP API").

export class ApiError extends Error {
  /**
   * @param {"http"|"network"|"timeout"|"bad_response"} kind
   * @param {string} message
   * @param {{status?: number, code?: string}} [details]
   */
  constructor(kind, message, { status = 0, code = "" } = {}) {
    super(message);
    this.name = "ApiError";
    this.kind = kind;
    this.status = status;
    this.code = code;
  }
}

export class ApiClient {
  /** @param {{apiBaseUrl: string, requestTimeoutMs: number}} config @param {() => string} getToken */
  constructor(config, getToken) {
    this.base = config.apiBaseUrl;
    this.timeoutMs = config.requestTimeoutMs;
    this.getToken = getToken;
  }

  /** Resolve a URL the API returned (absolute presigned URL, or a path on the API origin). */
  resolve(url) {
    const base = this.base ? new URL(`${this.base}/`, window.location.href).href : window.location.href;
    return new URL(url, base).href;
  }

  /** POST the raw image bytes to /predict. */
  predict(file, { neighbors = 5, scope = "class", signal } = {}) {
    const query = new URLSearchParams({ neighbors: String(neighbors), scope });
    return this.#request(`/predict?${query}`, {
      method: "POST",
      body: file,
      headers: { "Content-Type": file.type || "application/octet-stream" },
      signal,
    });
  }

  /** GET the 3D projection of the current model's gallery. */
  collectionMap({ limit = 1000, signal } = {}) {
    return this.#request(`/map?${new URLSearchParams({ limit: String(limit) })}`, {
      method: "GET",
      signal,
    });
  }

  async #request(path, { method, body, headers = {}, signal }) {
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.timeoutMs);
    const onOuterAbort = () => controller.abort();
    signal?.addEventListener("abort", onOuterAbort, { once: true });

    const token = this.getToken();
    const allHeaders = { Accept: "application/json", ...headers };
    if (token) allHeaders.Authorization = `Bearer ${token}`;

    let response;
    try {
      response = await fetch(`${this.base}${path}`, {
        method,
        body,
        headers: allHeaders,
        signal: controller.signal,
        credentials: "omit",
        cache: "no-store",
      });
    } catch (error) {
      if (timedOut) {
        throw new ApiError(
          "timeout",
          `The service did not answer within ${Math.round(this.timeoutMs / 1000)} seconds.`,
        );
      }
      if (error?.name === "AbortError") throw error; // cancelled by a newer request
      throw new ApiError("network", "The service could not be reached.");
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onOuterAbort);
    }

    let payload = null;
    try {
      payload = await response.json();
    } catch {
      payload = null;
    }
    if (!response.ok) {
      const message =
        payload && typeof payload.message === "string" && payload.message
          ? payload.message
          : `The service answered with HTTP ${response.status}.`;
      throw new ApiError("http", message, {
        status: response.status,
        code: payload && typeof payload.error === "string" ? payload.error : "",
      });
    }
    if (payload === null || typeof payload !== "object") {
      throw new ApiError("bad_response", "The service sent an answer this page cannot read.", {
        status: response.status,
      });
    }
    return payload;
  }
}
