// The bearer token lives in sessionStorage only: it is gone when the tab closes.

const STORAGE_KEY = "artlens.token";

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

export class TokenField {
  constructor({ input, toggle, clear, state, form }) {
    this.input = input;
    this.state = state;
    this.input.value = readStored();
    this.#renderState();

    this.input.addEventListener("input", () => {
      writeStored(normalizeToken(this.input.value));
      this.input.removeAttribute("aria-invalid");
      this.#renderState();
    });
    form.addEventListener("submit", (event) => event.preventDefault());
    toggle.addEventListener("click", () => {
      const show = this.input.type === "password";
      this.input.type = show ? "text" : "password";
      toggle.textContent = show ? "Hide" : "Show";
      toggle.setAttribute("aria-pressed", String(show));
    });
    clear.addEventListener("click", () => {
      this.input.value = "";
      writeStored("");
      this.#renderState();
      this.input.focus();
    });
  }

  get value() {
    return normalizeToken(this.input.value);
  }

  /** Mark the field as the thing to fix and move focus there. */
  flagProblem() {
    this.input.setAttribute("aria-invalid", "true");
    this.input.focus();
  }

  #renderState() {
    this.state.textContent = this.value ? "Token set." : "No token set.";
  }
}
