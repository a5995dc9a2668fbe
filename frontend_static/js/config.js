// Runtime configuration: config.json sits beside the page (written by CDK on deploy and by the
// local stack here). A missing or broken file falls back to same-origin so the page still works.

const DEFAULTS = Object.freeze({
  apiBaseUrl: "",
  requestTimeoutMs: 30000,
});

export async function loadConfig() {
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (!response.ok) return { ...DEFAULTS };
    const data = await response.json();
    return {
      apiBaseUrl: typeof data.apiBaseUrl === "string" ? data.apiBaseUrl.replace(/\/+$/, "") : "",
      requestTimeoutMs:
        Number.isFinite(data.requestTimeoutMs) && data.requestTimeoutMs > 0
          ? data.requestTimeoutMs
          : DEFAULTS.requestTimeoutMs,
    };
  } catch {
    return { ...DEFAULTS };
  }
}
