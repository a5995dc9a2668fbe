// The bearer token lives in sessionStorage only: it is gone when the tab closes.
// The field says where a token comes from, reads its expiry from the JWT itself (the page never
// verifies the signature: it only reads `exp` to tell the person), and checks the token with a
// cheap authenticated call when it is pasted or typed.

const STORAGE_KEY = "artlens.token";
const CHECK_DELAY_MS = 400;

function readStored() {
  try {
    return sessionStorage.getItem(STORAGE_KEY) ?? "";
  } catch {
    return ""; // storage disabled: the field still works for this page view
  }
}

function writeStored(value) {
  try {
    if (value) sessionStorage.setItem(STORAGE_KEY, value);
    else sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    /* storage disabled: keep the in-memory value only */
  }
}

/** Strip whitespace and an accidentally pasted "Bearer " prefix. */
export function normalizeToken(raw) {
  return raw.trim().replace(/^bearer\s+/i, "").trim();
}

/** The JWT's `exp` (unix seconds); null when the token is a JWT without one; undefined if not a JWT. */
export function jwtExpiry(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const claims = JSON.parse(atob(padded));
    if (!claims || typeof claims !== "object") return undefined;
    return Number.isFinite(claims.exp) ? claims.exp : null;
  } catch {
    return undefined;
  }
}

function clock(seconds) {
  const when = new Date(seconds * 1000);
  return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function describeExpiry(exp, nowSeconds = Date.now() / 1000) {
  if (exp === null) return "It does not expire.";
  if (!Number.isFinite(exp)) return "";
  const left = exp - nowSeconds;
  if (left <= 0) return `It expired at ${clock(exp)}.`;
  if (left < 3600) return `It expires at ${clock(exp)} (in ${Math.max(1, Math.round(left / 60))} min).`;
  if (left < 48 * 3600) return `It expires at ${clock(exp)} (in ${Math.round(left / 3600)} h).`;
  return `It expires on ${new Date(exp * 1000).toLocaleDateString()}.`;
}

export class TokenField {
  /**
   * @param {object} parts  form, input, toggle, clear, state elements
   * @param {(token: string, signal: AbortSignal) => Promise<{verdict: "ok"|"refused"|"unknown",
   *          sub?: string, expiresAt?: number|null, detail?: string}>} check
   */
  constructor({ input, toggle, clear, state, form }, check) {
    this.input = input;
    this.state = state;
    this.check = check;
    this.listeners = [];
    this.checkTimer = 0;
    this.checking = null;
    this.verdict = null; // the last check's answer for the current value
    this.input.value = readStored();

    this.input.addEventListener("input", () => this.#changed());
    form.addEventListener("submit", (event) => event.preventDefault());
    toggle.addEventListener("click", () => {
      const show = this.input.type === "password";
      this.input.type = show ? "text" : "password";
      toggle.textContent = show ? "Hide" : "Show";
      toggle.setAttribute("aria-pressed", String(show));
    });
    clear.addEventListener("click", () => {
      this.input.value = "";
      this.#changed();
      this.input.focus();
    });
    // The relative expiry ("in 12 min") goes stale; refresh it now and then.
    setInterval(() => this.#renderState(), 30_000);
    this.#renderState();
    if (this.value) this.#scheduleCheck(0);
  }

  get value() {
    return normalizeToken(this.input.value);
  }

  /** True when a token is set and not known to be expired or refused. */
  get usable() {
    const exp = jwtExpiry(this.value);
    if (!this.value) return false;
    if (Number.isFinite(exp) && exp <= Date.now() / 1000) return false;
    return this.verdict?.verdict !== "refused";
  }

  onChange(listener) {
    this.listeners.push(listener);
  }

  /** Mark the field as the thing to fix and move focus there. */
  flagProblem() {
    this.input.setAttribute("aria-invalid", "true");
    this.input.focus();
  }

  #changed() {
    writeStored(this.value);
    this.input.removeAttribute("aria-invalid");
    this.verdict = null;
    this.#renderState();
    this.#scheduleCheck(CHECK_DELAY_MS);
    for (const listener of this.listeners) listener();
  }

  #scheduleCheck(delay) {
    clearTimeout(this.checkTimer);
    this.checking?.abort();
    this.checking = null;
    const token = this.value;
    const exp = jwtExpiry(token);
    if (!token || (Number.isFinite(exp) && exp <= Date.now() / 1000)) return;
    this.checkTimer = setTimeout(async () => {
      const controller = new AbortController();
      this.checking = controller;
      this.#renderState("Checking the token with the API…");
      let verdict;
      try {
        verdict = await this.check(token, controller.signal);
      } catch (error) {
        if (error?.name === "AbortError") return;
        verdict = { verdict: "unknown", detail: "The token could not be checked." };
      }
      if (this.checking !== controller || this.value !== token) return;
      this.checking = null;
      this.verdict = verdict;
      if (verdict.verdict === "refused") this.input.setAttribute("aria-invalid", "true");
      this.#renderState();
      for (const listener of this.listeners) listener();
    }, delay);
  }

  #renderState(progress = "") {
    const token = this.value;
    const exp = jwtExpiry(token);
    let check = "none";
    let text;
    if (!token) {
      text = "No token set: Analyze stays off until one is set.";
    } else if (Number.isFinite(exp) && exp <= Date.now() / 1000) {
      check = "expired";
      text = `This token has expired (at ${clock(exp)}). Get a new one.`;
    } else if (progress) {
      check = "checking";
      text = `${progress} ${describeExpiry(exp)}`;
    } else if (this.verdict?.verdict === "ok") {
      check = "ok";
      const expiry = describeExpiry(exp === undefined ? this.verdict.expiresAt : exp);
      const who = this.verdict.sub ? ` for ${this.verdict.sub}` : "";
      text = `Token accepted${who}. ${expiry}`;
    } else if (this.verdict?.verdict === "refused") {
      check = "refused";
      text = "The API refused this token: it is not valid here. Get a new one.";
    } else if (this.verdict?.verdict === "unknown") {
      check = "unknown";
      text = `Token set, not checked: ${this.verdict.detail ?? "the API could not check it."} ${describeExpiry(exp)}`;
    } else {
      check = "set";
      text = `Token set. ${describeExpiry(exp)}`;
    }
    this.state.textContent = text.trim();
    this.state.dataset.check = check;
  }
}
