// The "Analyze" view: choose an image, preview + histogram, POST /predict, show the result.

import { ApiError } from "./api.js";
import { computeHistogram, decodeImage, describeHistogram, drawHistogram } from "./histogram.js";
import {
  MAX_UPLOAD_BYTES,
  clearProblem,
  describeApiError,
  formatBytes,
  formatPercent,
  missingTokenProblem,
  showProblem,
} from "./messages.js";
import { colorsFor, displayLabel } from "./palette.js";

const NEIGHBOR_COUNT = 5;

const $ = (id) => document.getElementById(id);

export class AnalyzeView {
  constructor({ api, token, viewer, announce }) {
    this.api = api;
    this.token = token;
    this.viewer = viewer;
    this.announce = announce;
    this.file = null;
    this.previewUrl = null;
    this.inFlight = null;
    this.hasResult = false;

    this.el = {
      fileInput: $("file-input"),
      chooseButton: $("choose-button"),
      dropZone: $("drop-zone"),
      filePanel: $("file-panel"),
      preview: $("preview-image"),
      fileInfo: $("file-info"),
      histogram: $("histogram-canvas"),
      histogramNote: $("histogram-note"),
      fileError: $("file-error"),
      analyzeButton: $("analyze-button"),
      analyzeLabel: $("analyze-button").querySelector(".btn-label"),
      scopeSwitch: $("scope-switch"),
      resultCard: $("result-card"),
      resultError: $("result-error"),
      placeholder: $("result-placeholder"),
      result: $("result"),
      label: $("predicted-label"),
      probability: $("predicted-probability"),
      bars: $("class-bars"),
      neighbors: $("neighbors"),
      neighborsEmpty: $("neighbors-empty"),
      neighborsScope: $("neighbors-scope"),
      meta: $("result-meta"),
    };
    this.#bindInput();
    this.el.analyzeButton.addEventListener("click", () => this.analyze());
    this.el.scopeSwitch.addEventListener("change", () => {
      // Re-query so the neighbours match the switch; nothing to do before a first result.
      if (this.hasResult && this.file) this.analyze();
    });
  }

  #bindInput() {
    const { fileInput, chooseButton, dropZone } = this.el;
    chooseButton.addEventListener("click", () => fileInput.click());
    fileInput.addEventListener("change", () => {
      if (fileInput.files?.length) this.setFile(fileInput.files[0]);
      fileInput.value = ""; // choosing the same file again must fire "change" again
    });

    const hasFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes("Files");
    dropZone.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      dropZone.classList.add("is-dragging");
    });
    dropZone.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    dropZone.addEventListener("dragleave", (event) => {
      if (!dropZone.contains(event.relatedTarget)) dropZone.classList.remove("is-dragging");
    });
    dropZone.addEventListener("drop", (event) => {
      event.preventDefault();
      dropZone.classList.remove("is-dragging");
      const file = event.dataTransfer?.files?.[0];
      if (file) this.setFile(file);
    });
    // A file dropped next to the zone must not make the browser navigate away from the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());

    document.addEventListener("paste", (event) => {
      if (this.el.dropZone.closest("[hidden]")) return; // another view is showing
      const file = [...(event.clipboardData?.files ?? [])][0];
      if (!file) return; // plain text (e.g. a token pasted into its field) is left alone
      event.preventDefault();
      this.setFile(file);
    });
  }

  /** Take a newly chosen file: check it, preview it, draw its histogram. */
  async setFile(file) {
    this.inFlight?.abort();
    this.inFlight = null;
    this.#setBusy(false);
    this.file = file;
    this.#resetResult();
    clearProblem(this.el.fileError);
    this.el.filePanel.hidden = false;
    const typeText = file.type || "unknown type";
    this.el.fileInfo.textContent = `${file.name || "Pasted image"} · ${typeText} · ${formatBytes(file.size)}`;

    if (file.size === 0) {
      this.#rejectFile({ title: "The file is empty.", detail: "Choose another image." });
    } else if (file.size > MAX_UPLOAD_BYTES) {
      this.#rejectFile({
        title: "The image is too large.",
        detail: `It is ${formatBytes(file.size)}; the limit is ${formatBytes(MAX_UPLOAD_BYTES)}. Choose a smaller image or save it at a lower size or quality.`,
      });
    } else {
      this.el.analyzeButton.disabled = false;
    }

    if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
    this.previewUrl = null;
    let bitmap = null;
    try {
      bitmap = await decodeImage(file);
    } catch {
      bitmap = null;
    }
    if (this.file !== file) return; // another file was chosen meanwhile

    const canvas = this.el.histogram;
    if (!bitmap) {
      this.el.preview.removeAttribute("src");
      this.el.preview.alt = "";
      this.el.preview.hidden = true;
      canvas.hidden = true;
      this.el.histogramNote.textContent =
        "This browser cannot display this file, so there is no preview or histogram. " +
        "You can still send it: the service checks the file and says what is wrong with it.";
      this.announce(`Chosen ${file.name || "file"}; no preview available.`);
      return;
    }
    this.previewUrl = URL.createObjectURL(file);
    this.el.preview.hidden = false;
    this.el.preview.src = this.previewUrl;
    this.el.preview.alt = `Preview of ${file.name || "the pasted image"}`;
    this.el.fileInfo.textContent += ` · ${bitmap.width} × ${bitmap.height} px`;
    canvas.hidden = false;
    const histogram = computeHistogram(bitmap);
    bitmap.close();
    drawHistogram(canvas, histogram);
    const description = describeHistogram(histogram);
    canvas.setAttribute("aria-label", description);
    this.el.histogramNote.textContent = "";
    this.announce(`Chosen ${file.name || "pasted image"}. Ready to analyze.`);
  }

  #rejectFile(problem) {
    this.el.analyzeButton.disabled = true;
    showProblem(this.el.fileError, problem);
  }

  #resetResult() {
    this.hasResult = false;
    this.el.result.hidden = true;
    this.el.placeholder.hidden = false;
    clearProblem(this.el.resultError);
    this.el.analyzeButton.disabled = true;
  }

  #setBusy(busy) {
    this.el.analyzeButton.disabled = busy;
    this.el.analyzeButton.classList.toggle("is-busy", busy);
    this.el.analyzeButton.setAttribute("aria-busy", String(busy));
    this.el.analyzeLabel.textContent = busy ? "Analyzing…" : "Analyze";
    this.el.resultCard.setAttribute("aria-busy", String(busy));
  }

  async analyze() {
    if (!this.file) return;
    clearProblem(this.el.resultError);
    if (!this.token.value) {
      this.#showError(missingTokenProblem());
      return;
    }
    this.inFlight?.abort();
    const controller = new AbortController();
    this.inFlight = controller;
    const scope = this.el.scopeSwitch.checked ? "all" : "class";
    this.#setBusy(true);
    this.announce("Analyzing the image…");
    try {
      const result = await this.api.predict(this.file, {
        neighbors: NEIGHBOR_COUNT,
        scope,
        signal: controller.signal,
      });
      if (this.inFlight !== controller) return;
      this.#render(result, scope);
    } catch (error) {
      if (this.inFlight !== controller) return;
      if (!(error instanceof ApiError)) {
        if (error?.name === "AbortError") return;
        throw error;
      }
      this.#showError(describeApiError(error));
    } finally {
      if (this.inFlight === controller) {
        this.inFlight = null;
        this.#setBusy(false);
      }
    }
  }

  #showError(problem) {
    showProblem(this.el.resultError, problem);
    if (problem.tokenProblem) this.token.flagProblem();
  }

  #render(result, scope) {
    const probabilities = result.probabilities ?? {};
    const classes = Object.keys(probabilities);
    const colors = colorsFor(classes);

    this.el.label.textContent = displayLabel(result.label);
    this.el.probability.textContent = formatPercent(result.probability);

    const bars = Object.entries(probabilities)
      .sort((a, b) => b[1] - a[1])
      .map(([name, p]) => {
        const item = document.createElement("li");
        item.className = "class-bar";
        if (name === result.label) item.classList.add("is-predicted");
        const label = document.createElement("span");
        label.className = "class-name";
        label.textContent = displayLabel(name);
        const track = document.createElement("span");
        track.className = "bar-track";
        track.setAttribute("aria-hidden", "true");
        const fill = document.createElement("span");
        fill.className = "bar-fill";
        fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
        fill.style.backgroundColor = colors.get(name);
        track.append(fill);
        const value = document.createElement("span");
        value.className = "class-value";
        value.textContent = formatPercent(p);
        item.append(label, track, value);
        return item;
      });
    this.el.bars.replaceChildren(...bars);

    const neighbors = Array.isArray(result.neighbors) ? result.neighbors : [];
    this.el.neighbors.replaceChildren(...neighbors.map((n) => this.#neighborItem(n, colors)));
    this.el.neighborsEmpty.hidden = neighbors.length > 0;
    this.el.neighborsScope.textContent =
      scope === "all" ? "(all types)" : `(${displayLabel(result.label).toLowerCase()} only)`;

    const total = result.timings_ms?.total;
    this.el.meta.textContent = [
      result.model_version ? `Model ${result.model_version}` : "",
      Number.isFinite(total) ? `answered in ${Math.round(total)} ms` : "",
    ]
      .filter(Boolean)
      .join(" · ");

    this.el.placeholder.hidden = true;
    this.el.result.hidden = false;
    this.hasResult = true;
    this.announce(
      `Predicted type: ${displayLabel(result.label)}, ${formatPercent(result.probability)} probability. ` +
        `${neighbors.length} similar works shown.`,
    );
  }

  #neighborItem(neighbor, colors) {
    const similarity = formatPercent(neighbor.similarity, 0);
    const label = displayLabel(neighbor.label);
    const url = this.api.resolve(neighbor.url);
    const item = document.createElement("li");
    item.className = "neighbor";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "neighbor-button";
    button.setAttribute("aria-label", `${label}, ${similarity} similar. Show larger.`);
    const image = document.createElement("img");
    image.className = "neighbor-image";
    image.src = url;
    image.alt = "";
    image.loading = "lazy";
    image.decoding = "async";
    image.addEventListener("error", () => button.classList.add("image-missing"), { once: true });
    const caption = document.createElement("span");
    caption.className = "neighbor-caption";
    // The type's colour as a stripe keeps the whole caption width for the type's name.
    caption.style.borderTopColor = colors.get(neighbor.label) ?? "currentColor";
    const type = document.createElement("span");
    type.className = "neighbor-label";
    type.textContent = label;
    const score = document.createElement("span");
    score.className = "neighbor-similarity";
    score.textContent = similarity;
    caption.append(type, score);
    button.append(image, caption);
    button.addEventListener("click", () =>
      this.viewer.open(
        {
          url,
          title: label,
          caption: `${similarity} similar to your image · ${neighbor.key}`,
          alt: `${label} from the collection`,
        },
        button,
      ),
    );
    item.append(button);
    return item;
  }
}
