// The "Analyze" view: choose an image (or a work of the collection), preview + histogram,
// POST /predict, and show the result: the verdict said plainly (confident, uncertain between two
// types, or probably not an artwork), the similar works, and ways to share it.

import { ApiError } from "./api.js";
import { assess, explainAssessment } from "./assessment.js";
import { computeHistogram, describeHistogram, drawHistogram } from "./histogram.js";
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
import { MAX_NEIGHBORS, download, resultCsv, writeShared } from "./share.js";
import { prepareUpload, sha256Hex } from "./upload.js";
import { safeLink, workAlt, workCaption } from "./viewer.js";

const $ = (id) => document.getElementById(id);

/** What a neighbour's `relation` is called on its tile (null: a similar work, no badge). */
export const RELATION_WORDS = Object.freeze({
  near_duplicate: "near duplicate",
  related: "related",
});

/** The notice's words for a picture the collection already holds (already_in_collection). */
export function alreadyText(already) {
  const name = already.title || already.original_name || "a work without a title";
  const how = already.kind === "exact"
    ? "the same file"
    : `a near duplicate (similarity ${Number(already.similarity).toFixed(2)})`;
  return { lead: `Already in the collection: ${name}`, key: `(${already.key})`, how };
}

/** Nearest work of each candidate type among `neighbors` (ranked), when the API gave none. */
function nearestByType(neighbors, candidates) {
  const found = {};
  for (const type of candidates) {
    const hit = neighbors.find((n) => n.label === type);
    if (hit) found[type] = hit;
  }
  return found;
}

function verdictText(assessment, answer) {
  if (assessment.status === "not_artwork") return "Probably not an artwork";
  if (assessment.status === "uncertain") {
    const [a, b] = assessment.candidates;
    return b ? `Uncertain: ${a} or ${b}` : `Uncertain: ${a}`;
  }
  return displayLabel(answer.label);
}

export class AnalyzeView {
  constructor({ api, token, viewer, announce, onResult = () => {} }) {
    this.api = api;
    this.token = token;
    this.viewer = viewer;
    this.announce = announce;
    this.onResult = onResult;
    this.source = null; // {kind: "file", file, upload, sha256} | {kind: "ref", reference, ...}
    this.rejected = false;
    this.preparing = false;
    this.previewUrl = null;
    this.inFlight = null;
    this.busy = false;
    this.hasResult = false;
    this.scopeByUser = false; // the person chose the scope: never switch it for them
    this.pendingShared = false;
    this.current = null; // {answer, shown, assessment, scope, count, reference, url}

    this.el = {
      fileInput: $("file-input"),
      chooseButton: $("choose-button"),
      dropZone: $("drop-zone"),
      filePanel: $("file-panel"),
      preview: $("preview-image"),
      fileInfo: $("file-info"),
      histogram: $("histogram-canvas"),
      histogramFigure: $("histogram-canvas").closest("figure"),
      histogramNote: $("histogram-note"),
      fileError: $("file-error"),
      analyzeButton: $("analyze-button"),
      analyzeLabel: $("analyze-button").querySelector(".btn-label"),
      analyzeHint: $("analyze-hint"),
      scopeSwitch: $("scope-switch"),
      count: $("neighbor-count"),
      uploadRow: $("upload-row"),
      uploadLabel: $("upload-label"),
      uploadProgress: $("upload-progress"),
      resultCard: $("result-card"),
      resultHeading: $("result-heading"),
      resultError: $("result-error"),
      retry: $("retry-button"),
      placeholder: $("result-placeholder"),
      result: $("result"),
      verdict: $("verdict"),
      kicker: $("verdict-kicker"),
      label: $("predicted-label"),
      probability: $("predicted-probability"),
      verdictNote: $("verdict-note"),
      byType: $("by-type"),
      byTypeList: $("by-type-list"),
      bars: $("class-bars"),
      neighbors: $("neighbors"),
      neighborsEmpty: $("neighbors-empty"),
      neighborsScope: $("neighbors-scope"),
      copyLink: $("copy-link"),
      downloadCsv: $("download-csv"),
      downloadJson: $("download-json"),
      shareStatus: $("share-status"),
      meta: $("result-meta"),
      already: $("already-region"),
    };
    this.#bindInput();
    this.el.analyzeButton.addEventListener("click", () => this.analyze({ moveFocus: true }));
    this.el.retry.addEventListener("click", () => this.analyze({ moveFocus: true }));
    this.el.scopeSwitch.addEventListener("change", () => {
      this.scopeByUser = true;
      // Re-query so the neighbours match the switch; nothing to do before a first result.
      if (this.hasResult && this.source) this.analyze();
    });
    this.el.count.addEventListener("change", () => {
      if (this.hasResult && this.source) this.analyze();
    });
    this.el.copyLink.addEventListener("click", () => this.#copyLink());
    this.el.downloadCsv.addEventListener("click", () => this.#download("csv"));
    this.el.downloadJson.addEventListener("click", () => this.#download("json"));
    this.token.onChange(() => {
      this.#updateButton();
      if (this.pendingShared && this.token.usable && !this.busy) this.analyze();
    });
    this.#updateButton();
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

  #updateButton() {
    const ready = Boolean(this.source) && !this.rejected;
    this.el.analyzeButton.disabled = this.busy || !ready || !this.token.usable;
    let hint = "";
    if (!this.token.value) hint = "Set an access token above to analyze.";
    else if (!this.token.usable) hint = "The access token cannot be used: set a valid one above.";
    else if (!this.source) hint = "Choose an image first.";
    else if (this.preparing) hint = "Preparing the image…";
    else if (this.rejected) hint = "Choose another image.";
    this.el.analyzeHint.textContent = hint;
  }

  #startSource(source) {
    this.inFlight?.abort();
    this.inFlight = null;
    this.#setBusy(false);
    this.source = source;
    this.rejected = false;
    this.preparing = false;
    this.pendingShared = false;
    this.scopeByUser = false;
    this.#resetResult();
    clearProblem(this.el.fileError);
    this.el.filePanel.hidden = false;
    if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
    this.previewUrl = null;
  }

  /** Take a newly chosen file: check it, preview it, draw its histogram, reduce it if large. */
  async setFile(file) {
    const source = { kind: "file", file, upload: null, sha256: null };
    this.#startSource(source);
    const typeText = file.type || "unknown type";
    this.el.fileInfo.textContent = `${file.name || "Pasted image"} · ${typeText} · ${formatBytes(file.size)}`;
    this.el.histogramFigure.hidden = false;
    // Analyze waits until the upload is prepared (reduced if needed): a few ms for most files.
    this.rejected = true;
    this.preparing = true;
    this.#updateButton();

    if (file.size === 0) {
      this.preparing = false;
      this.#rejectFile({ title: "The file is empty.", detail: "Choose another image." });
      return;
    }
    let upload;
    try {
      upload = await prepareUpload(file, MAX_UPLOAD_BYTES);
    } catch {
      upload = { blob: file, decoded: false, reduced: false };
    }
    if (this.source !== source) return; // another file was chosen meanwhile
    this.preparing = false;
    source.upload = upload;
    if (upload.blob.size > MAX_UPLOAD_BYTES) {
      this.#rejectFile({
        title: "The image is too large.",
        detail: `It is ${formatBytes(file.size)}; the limit is ${formatBytes(MAX_UPLOAD_BYTES)}, and this browser cannot reduce this format. Choose a smaller image or save it at a lower size or quality.`,
      });
    } else {
      this.rejected = false;
      this.#updateButton();
    }
    if (upload.decoded) {
      this.el.fileInfo.textContent += ` · ${upload.originalWidth} × ${upload.originalHeight} px`;
      if (upload.reduced) {
        this.el.fileInfo.textContent +=
          ` · will be sent reduced to ${upload.width} × ${upload.height} px (JPEG, ${formatBytes(upload.blob.size)})`;
      }
      this.previewUrl = URL.createObjectURL(file);
      this.#showPreview(this.previewUrl, `Preview of ${file.name || "the pasted image"}`);
      await this.#drawHistogramOf(file, source);
      this.announce(`Chosen ${file.name || "pasted image"}. ${this.rejected ? "" : "Ready to analyze."}`);
      return;
    }
    await this.#serverPreview(file, source);
  }

  /** Formats the browser cannot display (TIFF): ask the API for a JPEG preview. */
  async #serverPreview(file, source) {
    const noPreview = () => {
      this.el.preview.removeAttribute("src");
      this.el.preview.alt = "";
      this.el.preview.hidden = true;
      this.el.histogram.hidden = true;
      this.el.histogramNote.textContent =
        "This browser cannot display this file, so there is no preview or histogram. " +
        "You can still send it: the service checks the file and says what is wrong with it.";
      this.announce(`Chosen ${file.name || "file"}; no preview available.`);
    };
    noPreview();
    if (this.rejected || !this.token.usable) return;
    this.el.histogramNote.textContent = "This browser cannot display this file; asking the service for a preview…";
    let answer;
    try {
      answer = await this.api.preview(file);
    } catch (error) {
      if (this.source !== source) return;
      noPreview();
      if (error instanceof ApiError && !error.routeMissing && error.kind === "http" && error.status !== 401) {
        this.el.histogramNote.textContent += ` (The service said: ${error.message})`;
      }
      return;
    }
    if (this.source !== source) return;
    const preview = typeof answer.preview === "string" && answer.preview.startsWith("data:image/")
      ? answer.preview
      : null;
    if (!preview) {
      noPreview();
      return;
    }
    this.#showPreview(preview, `Preview of ${file.name || "the file"}, made by the service`);
    const blob = await (await fetch(preview)).blob();
    await this.#drawHistogramOf(blob, source);
    this.el.histogramNote.textContent = "This browser cannot display this format; the preview was made by the service.";
    this.announce(`Chosen ${file.name || "file"}; preview made by the service.`);
  }

  #showPreview(url, alt) {
    this.el.preview.hidden = false;
    this.el.preview.src = url;
    this.el.preview.alt = alt;
  }

  async #drawHistogramOf(blob, source) {
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
    } catch {
      bitmap = null;
    }
    if (this.source !== source || !bitmap) return;
    const canvas = this.el.histogram;
    canvas.hidden = false;
    const histogram = computeHistogram(bitmap);
    bitmap.close();
    drawHistogram(canvas, histogram);
    canvas.setAttribute("aria-label", describeHistogram(histogram));
    this.el.histogramNote.textContent = "";
  }

  /** Search from a work of the collection ("More like this") or a shared link's picture. */
  useReference(reference, { url = null, label = "", shared = false } = {}) {
    this.#startSource({ kind: "ref", reference });
    const what = reference.key
      ? `Work ${reference.key} from the collection`
      : `Picture with SHA-256 ${reference.sha256.slice(0, 12)}…`;
    this.el.fileInfo.textContent = shared ? `Shared result · ${what}` : what;
    this.el.histogramFigure.hidden = true;
    if (url) {
      this.#showPreview(url, `${displayLabel(label) || "Work"} from the collection`);
    } else {
      this.el.preview.removeAttribute("src");
      this.el.preview.hidden = true;
    }
    this.pendingShared = shared;
    this.#updateButton();
  }

  /** A link opened with ?key= or ?sha256=: show that result once a token is set. */
  restoreShared({ reference, scope, count }) {
    if (!reference) return;
    this.useReference(reference, { shared: true });
    if (scope) {
      this.el.scopeSwitch.checked = scope === "all";
      this.scopeByUser = true; // the sharer's choice
    }
    if (count) this.el.count.value = String(count);
    if (this.token.usable) this.analyze();
    else {
      showProblem(this.el.resultError, {
        title: "This link shows a shared result.",
        detail: "Set your access token above to see it.",
      });
    }
  }

  #rejectFile(problem) {
    this.rejected = true;
    this.#updateButton();
    showProblem(this.el.fileError, problem);
  }

  #resetResult() {
    this.hasResult = false;
    this.current = null;
    this.el.result.hidden = true;
    this.el.placeholder.hidden = false;
    this.el.retry.hidden = true;
    delete this.el.resultCard.dataset.stale;
    clearProblem(this.el.resultError);
    this.el.already.replaceChildren();
  }

  #setBusy(busy) {
    this.busy = busy;
    this.#updateButton();
    this.el.analyzeButton.classList.toggle("is-busy", busy);
    this.el.analyzeButton.setAttribute("aria-busy", String(busy));
    this.el.analyzeLabel.textContent = busy ? "Analyzing…" : "Analyze";
    this.el.resultCard.setAttribute("aria-busy", String(busy));
    if (!busy) this.el.uploadRow.hidden = true;
  }

  #showProgress(loaded, total) {
    const { uploadRow, uploadProgress, uploadLabel } = this.el;
    uploadRow.hidden = false;
    const percent = total ? Math.round((100 * loaded) / total) : 0;
    uploadProgress.value = percent;
    uploadProgress.dataset.maxSeen = String(Math.max(percent, Number(uploadProgress.dataset.maxSeen ?? 0)));
    uploadLabel.textContent = percent >= 100 ? "Uploaded; waiting for the answer" : "Uploading";
  }

  #ask(scope, neighbors, signal, withProgress = false) {
    const { source } = this;
    if (source.kind === "ref") {
      return this.api.predictByReference(source.reference, { neighbors, scope, signal });
    }
    return this.api.predict(source.upload?.blob ?? source.file, {
      neighbors,
      scope,
      signal,
      onProgress: withProgress ? (loaded, total) => this.#showProgress(loaded, total) : undefined,
    });
  }

  async analyze({ moveFocus = false } = {}) {
    if (!this.source || this.rejected) return;
    clearProblem(this.el.resultError);
    this.el.retry.hidden = true;
    if (!this.token.usable) {
      this.#showError(missingTokenProblem());
      return;
    }
    this.pendingShared = false;
    this.inFlight?.abort();
    const controller = new AbortController();
    this.inFlight = controller;
    const { signal } = controller;
    const count = Number(this.el.count.value) || 5;
    let scope = this.el.scopeSwitch.checked ? "all" : "class";
    this.el.uploadProgress.value = 0;
    delete this.el.uploadProgress.dataset.maxSeen;
    this.#setBusy(true);
    this.announce("Analyzing the image…");
    const started = performance.now();
    try {
      const first = await this.#ask(scope, count, signal, true);
      let assessment = assess(first);
      let shown = first;
      let byType = first.nearest_by_type && typeof first.nearest_by_type === "object"
        ? first.nearest_by_type
        : null;
      if (assessment.status === "uncertain") {
        if (scope === "class" && !this.scopeByUser) {
          // Uncertain: works of the other candidate type matter as much as the predicted one's.
          scope = "all";
          this.el.scopeSwitch.checked = true;
          shown = await this.#ask("all", byType ? count : MAX_NEIGHBORS, signal);
          assessment = assess(shown);
        }
        if (!byType) {
          // An API without nearest_by_type: find them among the 20 nearest works of any type.
          const pool = scope === "all" && shown.neighbors?.length >= Math.min(MAX_NEIGHBORS, count + 1)
            ? shown
            : await this.#ask("all", MAX_NEIGHBORS, signal);
          byType = nearestByType(pool.neighbors ?? [], assessment.candidates);
        }
      }
      if (this.inFlight !== controller) return;
      const reference = this.source.kind === "ref"
        ? this.source.reference
        : { sha256: this.source.sha256 ?? (this.source.sha256 = await sha256Hex(this.source.upload.blob)) };
      if (this.inFlight !== controller) return;
      const trimmed = { ...shown, neighbors: (shown.neighbors ?? []).slice(0, count) };
      this.#render({ answer: shown, shown: trimmed, assessment, byType, scope, count, reference });
      const elapsed = Math.round(performance.now() - started);
      document.documentElement.dataset.analyzeMs = String(elapsed);
      if (moveFocus) this.el.resultHeading.focus();
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
    // A result on screen would now look current while it is not: hide it until a retry works.
    if (this.hasResult) {
      this.el.result.hidden = true;
      this.el.resultCard.dataset.stale = "true";
    }
    this.el.already.replaceChildren();
    this.el.placeholder.hidden = true;
    this.el.retry.hidden = !problem.retry;
    if (problem.tokenProblem) this.token.flagProblem();
    else if (problem.retry) this.el.retry.focus();
  }

  #render({ answer, shown, assessment, byType, scope, count, reference }) {
    const probabilities = answer.probabilities ?? {};
    const classes = Object.keys(probabilities);
    const colors = colorsFor(classes);
    const ranked = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);

    const verdict = verdictText(assessment, answer);
    this.el.verdict.dataset.status = assessment.status;
    this.el.verdict.dataset.source = assessment.source;
    if (assessment.status === "confident") {
      this.el.kicker.textContent = "Predicted type";
      this.el.label.textContent = verdict;
      this.el.probability.textContent = formatPercent(answer.probability);
    } else if (assessment.status === "uncertain") {
      this.el.kicker.textContent = "Not sure";
      this.el.label.textContent = verdict;
      this.el.probability.textContent = assessment.candidates
        .map((c) => formatPercent(probabilities[c] ?? 0))
        .join(" · ");
    } else {
      this.el.kicker.textContent = "Check the picture";
      this.el.label.textContent = verdict;
      this.el.probability.textContent = "";
    }
    const note = explainAssessment(assessment, answer);
    this.el.verdictNote.textContent = note;
    this.el.verdictNote.hidden = !note;

    const showByType = assessment.status === "uncertain" && byType;
    this.el.byType.hidden = !showByType;
    if (showByType) {
      this.el.byTypeList.replaceChildren(
        ...assessment.candidates.map((type) => {
          const hit = byType[type];
          if (hit) return this.#neighborItem(hit, colors, `Nearest ${type}`);
          const item = document.createElement("li");
          item.className = "neighbor neighbor-none";
          item.textContent = `No ${type} among the ${MAX_NEIGHBORS} most similar works.`;
          return item;
        }),
      );
    }

    const bars = ranked.map(([name, p]) => {
      const item = document.createElement("li");
      item.className = "class-bar";
      if (name === answer.label) item.classList.add("is-predicted");
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

    // A work chosen from the collection ("More like this") is in it by definition: no notice.
    const already = answer.already_in_collection;
    this.#renderAlready(already && reference.key && already.key === reference.key ? null : already);

    const neighbors = shown.neighbors;
    this.el.neighbors.replaceChildren(...neighbors.map((n) => this.#neighborItem(n, colors)));
    this.el.neighborsEmpty.hidden = neighbors.length > 0;
    this.el.neighborsScope.textContent =
      scope === "all" ? "(all types)" : `(${displayLabel(answer.label).toLowerCase()} only)`;

    const total = answer.timings_ms?.total;
    this.el.meta.textContent = [
      answer.model_version ? `Model ${answer.model_version}` : "",
      Number.isFinite(total) ? `answered in ${Math.round(total)} ms` : "",
    ]
      .filter(Boolean)
      .join(" · ");

    const url = writeShared({ reference, scope, count });
    this.current = { answer, shown, assessment, byType, scope, count, reference, url, verdict };
    this.el.shareStatus.textContent = "";
    this.el.placeholder.hidden = true;
    this.el.result.hidden = false;
    delete this.el.resultCard.dataset.stale;
    this.hasResult = true;
    this.onResult({ ...shown, assessment });
    this.announce(`${verdict}. ${neighbors.length} similar works shown.`);
  }

  /** The collection already holds this picture (or a near duplicate): said plainly above the
   * result, in a status region so screen readers hear it, with a way to see that work. */
  #renderAlready(already) {
    const region = this.el.already;
    if (!already || typeof already !== "object" || !already.key) {
      region.replaceChildren();
      return;
    }
    const label = displayLabel(already.label);
    const { lead, key, how } = alreadyText(already);
    const notice = document.createElement("div");
    notice.className = "already-notice";
    notice.dataset.kind = already.kind;
    notice.dataset.key = already.key;
    const thumbSource = already.thumbnail_url || already.url;
    if (thumbSource) {
      const image = document.createElement("img");
      image.className = "already-image";
      image.src = this.api.resolve(thumbSource);
      image.alt = "";
      image.decoding = "async";
      notice.append(image);
    }
    const body = document.createElement("div");
    body.className = "already-body";
    const text = document.createElement("p");
    text.className = "already-text";
    const strong = document.createElement("strong");
    strong.textContent = lead;
    // The key is long and only a reference: set smaller, after the name a person reads.
    const keyText = document.createElement("span");
    keyText.className = "already-key";
    keyText.textContent = key;
    text.append(strong, " ", keyText, ` — ${how}.`);
    body.append(text);
    if (already.url) {
      const open = document.createElement("button");
      open.type = "button";
      open.className = "btn btn-ghost already-open";
      open.append("Open it in the viewer");
      open.addEventListener("click", () =>
        this.viewer.open(
          {
            url: this.api.resolve(already.url),
            title: already.title || label,
            caption: workCaption(already, label, `Already in the collection: ${how}`),
            alt: workAlt(already, label),
            permalink: already.permalink,
            licence: already.licence,
          },
          open,
        ),
      );
      body.append(open);
    }
    notice.append(body);
    region.replaceChildren(notice);
  }

  #neighborItem(neighbor, colors, heading = "") {
    const similarity = formatPercent(neighbor.similarity, 0);
    const label = displayLabel(neighbor.label);
    // Tiles show the 256 px rendition; the larger view the 1,024 px one.
    const url = this.api.resolve(neighbor.url);
    const thumbnail = neighbor.thumbnail_url ? this.api.resolve(neighbor.thumbnail_url) : url;
    const item = document.createElement("li");
    item.className = "neighbor";
    item.dataset.key = neighbor.key;
    if (heading) {
      const title = document.createElement("p");
      title.className = "neighbor-heading";
      title.textContent = displayLabel(heading);
      item.append(title);
    }
    // The accessible name is the visible caption plus words only a screen reader needs; no
    // aria-label, so the name always contains what is on screen (WCAG 2.5.3).
    const button = document.createElement("button");
    button.type = "button";
    button.className = "neighbor-button";
    const image = document.createElement("img");
    image.className = "neighbor-image";
    image.src = thumbnail;
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
    score.append(similarity, hiddenText(" similar"));
    caption.append(type, hiddenText(" "), score);
    // A near duplicate or relative of the picture says so on the tile (and in its name).
    const relation = RELATION_WORDS[neighbor.relation];
    if (relation) {
      const badge = document.createElement("span");
      badge.className = "neighbor-badge";
      badge.dataset.relation = neighbor.relation;
      badge.textContent = relation;
      caption.append(hiddenText(", "), badge);
    }
    // The collection's record (title, maker, date) is on screen and so in the button's name.
    if (neighbor.title) {
      const title = document.createElement("span");
      title.className = "neighbor-title";
      title.textContent = neighbor.title;
      caption.append(hiddenText(", "), title);
    }
    const byline = [neighbor.maker, neighbor.date].filter(Boolean).join(", ");
    if (byline) {
      const maker = document.createElement("span");
      maker.className = "neighbor-maker";
      maker.textContent = byline;
      caption.append(hiddenText(", "), maker);
    }
    button.append(image, caption, hiddenText(", show larger"));
    button.addEventListener("click", () =>
      this.viewer.open(
        {
          url,
          title: neighbor.title || label,
          caption: workCaption(neighbor, label, `${similarity} similar to your image`),
          alt: workAlt(neighbor, label),
          permalink: neighbor.permalink,
          licence: neighbor.licence,
        },
        button,
      ),
    );
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more-like";
    more.append("More like this", hiddenText(`: ${label.toLowerCase()}, ${similarity} similar`));
    more.addEventListener("click", () => {
      this.useReference({ key: neighbor.key }, { url, label: neighbor.label });
      this.analyze({ moveFocus: true });
    });
    item.append(button, more);
    if (safeLink(neighbor.permalink)) {
      const link = document.createElement("a");
      link.className = "neighbor-permalink";
      link.href = neighbor.permalink;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.append("Catalogue record", hiddenText(`: ${neighbor.title || label} (opens in a new tab)`));
      item.append(link);
    }
    return item;
  }

  async #copyLink() {
    if (!this.current) return;
    const { url } = this.current;
    try {
      await navigator.clipboard.writeText(url);
      this.el.shareStatus.textContent = "Link copied. Whoever opens it needs their own access token.";
    } catch {
      this.el.shareStatus.textContent = `Copy this link: ${url}`;
    }
  }

  #download(kind) {
    if (!this.current) return;
    const { answer, shown, assessment, byType, scope, count, reference, verdict } = this.current;
    const id = reference.key
      ? reference.key.replace(/^.*\//, "").replace(/\.[^.]*$/, "").slice(0, 12)
      : reference.sha256.slice(0, 12);
    if (kind === "csv") {
      download(resultCsv(shown, verdict), `artlens-${id}.csv`, "text/csv;charset=utf-8");
    } else {
      const record = {
        query: { ...reference, scope, neighbors: count },
        verdict,
        assessment,
        nearest_by_type: byType,
        answer: { ...answer, neighbors: shown.neighbors },
      };
      download(`${JSON.stringify(record, null, 2)}\n`, `artlens-${id}.json`, "application/json");
    }
    this.el.shareStatus.textContent = `Downloaded as ${kind.toUpperCase()}.`;
  }
}

function hiddenText(text) {
  const span = document.createElement("span");
  span.className = "visually-hidden";
  span.textContent = text;
  return span;
}
