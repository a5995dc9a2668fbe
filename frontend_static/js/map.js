// The "Collection map" view: GET /map and show the gallery's embeddings in 3D, coloured by
// predicted or catalogued type, with the last analysed image placed among them.

import { ApiError } from "./api.js";
import { clearProblem, describeApiError, missingTokenProblem, showProblem } from "./messages.js";
import { colorsFor, displayLabel } from "./palette.js";
import { Scatter3D } from "./scatter3d.js";
import { safeLink, workAlt, workCaption } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const LIST_LIMIT = 60; // keyboard list of the works in view: enough to browse, short enough to tab

export class MapView {
  constructor({ api, token, viewer, announce }) {
    this.api = api;
    this.token = token;
    this.viewer = viewer;
    this.announce = announce;
    this.loaded = false;
    this.inFlight = null;
    this.hidden = new Set();
    this.data = null;
    this.points = [];
    this.byKey = new Map();
    this.query = null;
    this.listTimer = 0;
    this.el = {
      canvas: $("map-canvas"),
      tooltip: $("map-tooltip"),
      tooltipImage: $("map-tooltip-image"),
      tooltipText: $("map-tooltip-text"),
      legend: $("map-legend"),
      count: $("map-count"),
      error: $("map-error"),
      retry: $("map-retry"),
      limit: $("map-limit"),
      color: $("map-color"),
      colorHelp: $("map-color-help"),
      reload: $("map-reload"),
      reset: $("map-reset"),
      zoomIn: $("map-zoom-in"),
      zoomOut: $("map-zoom-out"),
      queryNote: $("map-query"),
      list: $("map-list"),
      listCount: $("map-list-count"),
      listMore: $("map-list-more"),
    };
    this.plot = new Scatter3D(this.el.canvas, {
      onHover: (point, x, y) => this.#showTooltip(point, x, y),
      onPick: (point) => this.#openPoint(point, this.el.canvas),
      onViewChange: () => this.#scheduleList(),
    });
    this.el.reload.addEventListener("click", () => this.load());
    this.el.retry.addEventListener("click", () => this.load());
    this.el.limit.addEventListener("change", () => this.load());
    this.el.color.addEventListener("change", () => this.#applyColoring());
    this.el.reset.addEventListener("click", () => this.plot.resetView());
    this.el.zoomIn.addEventListener("click", () => this.plot.zoomBy(1.4));
    this.el.zoomOut.addEventListener("click", () => this.plot.zoomBy(1 / 1.4));
  }

  /** Called whenever the view becomes visible: the first time it fetches the map. */
  show() {
    if (!this.loaded && !this.inFlight) this.load();
    this.plot.requestRender();
  }

  /** The latest /predict answer (with its assessment): placed on the map when possible. */
  setQuery(answer) {
    this.query = answer;
    this.#placeQuery();
  }

  async load() {
    clearProblem(this.el.error);
    this.el.retry.hidden = true;
    if (!this.token.value) {
      this.#showError(missingTokenProblem());
      return;
    }
    this.inFlight?.abort();
    const controller = new AbortController();
    this.inFlight = controller;
    this.el.count.textContent = "Loading the collection…";
    this.el.reload.disabled = true;
    try {
      const data = await this.api.collectionMap({
        limit: Number(this.el.limit.value),
        signal: controller.signal,
      });
      if (this.inFlight !== controller) return;
      this.#render(data);
      this.loaded = true;
    } catch (error) {
      if (this.inFlight !== controller) return;
      if (!(error instanceof ApiError)) {
        if (error?.name === "AbortError") return;
        throw error;
      }
      this.el.count.textContent = "";
      this.#showError(describeApiError(error));
    } finally {
      if (this.inFlight === controller) {
        this.inFlight = null;
        this.el.reload.disabled = false;
      }
    }
  }

  #showError(problem) {
    showProblem(this.el.error, problem);
    this.el.retry.hidden = !problem.retry;
    if (problem.retry && this.loaded) {
      // The plot on screen may be out of date: say so rather than leave it looking current.
      this.el.canvas.closest(".map-stage").dataset.stale = "true";
    }
    if (problem.tokenProblem) this.token.flagProblem();
  }

  #render(data) {
    delete this.el.canvas.closest(".map-stage").dataset.stale;
    const points = (Array.isArray(data.points) ? data.points : []).filter(
      (p) => [p.x, p.y, p.z].every(Number.isFinite),
    );
    this.data = data;
    this.points = points;
    this.byKey = new Map(points.map((p) => [p.key, p]));
    const catalogued = points.some((p) => typeof p.catalogued_type === "string" && p.catalogued_type);
    const catalogOption = this.el.color.querySelector("option[value=catalogued]");
    catalogOption.disabled = !catalogued;
    if (!catalogued) this.el.color.value = "predicted";
    this.el.colorHelp.textContent = catalogued
      ? "Predicted: the type the model sees. Catalogued: the type in the collection's records. Switch between them to see where they disagree."
      : "The collection's records carry no catalogued type, so points are coloured by the type the model predicts.";
    this.plot.setData(points, new Map());
    this.#applyColoring();

    this.el.count.textContent = points.length
      ? `${points.length.toLocaleString("en")} works shown${data.model_version ? ` · model ${data.model_version}` : ""}`
      : "The collection is empty: no works are indexed yet.";
    this.el.canvas.dataset.count = String(points.length);
    this.#placeQuery();
    this.announce(
      points.length ? `Collection map loaded: ${points.length} works.` : "The collection is empty.",
    );
  }

  #colorKey() {
    return this.el.color.value === "catalogued"
      ? (p) => p.catalogued_type || "not catalogued"
      : (p) => p.label;
  }

  #applyColoring() {
    const points = this.points;
    const key = this.#colorKey();
    const classes = Array.isArray(this.data?.classes) && this.data.classes.length
      ? [...this.data.classes]
      : [...new Set(points.map((p) => p.label))];
    for (const p of points) if (!classes.includes(key(p))) classes.push(key(p));
    const colors = colorsFor(classes);
    this.hidden = new Set([...this.hidden].filter((c) => classes.includes(c)));
    this.plot.setColoring(colors, key);
    this.plot.setHidden(this.hidden);

    const counts = new Map(classes.map((c) => [c, 0]));
    for (const p of points) counts.set(key(p), (counts.get(key(p)) ?? 0) + 1);
    this.el.legend.replaceChildren(
      ...classes.map((name) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "legend-item";
        button.setAttribute("aria-pressed", String(!this.hidden.has(name)));
        const swatch = document.createElement("span");
        swatch.className = "dot";
        swatch.style.setProperty("--dot", colors.get(name));
        const text = document.createElement("span");
        text.className = "legend-name";
        text.textContent = displayLabel(name);
        const count = document.createElement("span");
        count.className = "legend-count";
        count.textContent = String(counts.get(name) ?? 0);
        button.append(swatch, text, count);
        button.addEventListener("click", () => {
          if (this.hidden.has(name)) this.hidden.delete(name);
          else this.hidden.add(name);
          button.setAttribute("aria-pressed", String(!this.hidden.has(name)));
          this.plot.setHidden(this.hidden);
        });
        item.append(button);
        return item;
      }),
    );
    const disagree = this.el.color.value === "catalogued"
      ? points.filter((p) => p.catalogued_type && p.catalogued_type !== p.label).length
      : 0;
    const summary = classes.map((c) => `${displayLabel(c)} ${counts.get(c) ?? 0}`).join(", ");
    this.el.canvas.setAttribute(
      "aria-label",
      `3D map of ${points.length} works coloured by ${this.el.color.value} type: ${summary}.` +
        (disagree ? ` ${disagree} works have a catalogued type other than the predicted one.` : ""),
    );
  }

  /** Where the analysed image goes: the API's projection if it sent one, else its neighbours. */
  #placeQuery() {
    const answer = this.query;
    const note = this.el.queryNote;
    if (!answer || !this.data) {
      this.plot.setQuery(null);
      this.el.canvas.dataset.query = "none";
      note.hidden = true;
      return;
    }
    const neighbors = (answer.neighbors ?? []).map((n) => this.byKey.get(n.key)).filter(Boolean);
    const projection = this.data.projection;
    const embedding = answer.embedding;
    let xyz = null;
    let how = "none";
    if (
      projection && Array.isArray(embedding) && Array.isArray(projection.mean) &&
      Array.isArray(projection.components) && projection.components.length === 3 &&
      projection.mean.length === embedding.length
    ) {
      const centred = embedding.map((v, i) => v - projection.mean[i]);
      xyz = projection.components.map((row) => row.reduce((s, v, i) => s + v * centred[i], 0));
      how = "projection";
    } else if (neighbors.length) {
      // An API without the projection: the mean of the neighbours is a fair stand-in.
      xyz = [0, 1, 2].map((k) => neighbors.reduce((s, p) => s + [p.x, p.y, p.z][k], 0) / neighbors.length);
      how = "neighbours";
    }
    this.el.canvas.dataset.query = how;
    if (!xyz) {
      this.plot.setQuery(null);
      note.hidden = false;
      note.textContent = "Your last image cannot be placed on this map: none of its similar works are among the works shown.";
      return;
    }
    this.plot.setQuery({ x: xyz[0], y: xyz[1], z: xyz[2], neighbors });
    note.hidden = false;
    note.textContent =
      `Your last image is the diamond (◆), with lines to its ${neighbors.length} most similar works shown here` +
      (how === "neighbours" ? " (placed at their centre: this API does not send its projection)." : ".");
  }

  #scheduleList() {
    clearTimeout(this.listTimer);
    // Rebuilding the list on every animation frame of a drag would be wasted work.
    this.listTimer = setTimeout(() => this.#renderList(), 150);
  }

  #renderList() {
    const inView = this.plot.pointsInView();
    const shown = inView.slice(0, LIST_LIMIT);
    const signature = shown.map((p) => p.key).join("|");
    this.el.listCount.textContent = `(${inView.length.toLocaleString("en")})`;
    this.el.listMore.hidden = inView.length <= LIST_LIMIT;
    this.el.listMore.textContent =
      `The ${LIST_LIMIT} nearest the centre are listed; zoom in to narrow down the other ${inView.length - LIST_LIMIT}.`;
    if (signature === this.listSignature) return;
    this.listSignature = signature;
    const hadFocus = this.el.list.contains(document.activeElement)
      ? document.activeElement.dataset.key
      : null;
    this.el.list.replaceChildren(
      ...shown.map((point) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "map-list-item";
        button.dataset.key = point.key;
        // The record's title and maker, when known, name the work (visible, so its name too).
        const name = [point.title || point.original_name || point.key.replace(/^gallery\//, ""),
          point.maker].filter(Boolean).join(", ");
        button.textContent = `${displayLabel(point.label)} · ${name}`;
        if (point.catalogued_type && point.catalogued_type !== point.label) {
          button.textContent += ` (catalogued: ${point.catalogued_type})`;
        }
        const focusIn = () => {
          this.plot.setHighlight(point);
          const at = this.plot.screenPosition(point);
          if (at) this.#showTooltip(point, at.sx, at.sy);
        };
        button.addEventListener("focus", focusIn);
        button.addEventListener("mouseenter", focusIn);
        button.addEventListener("blur", () => {
          this.plot.setHighlight(null);
          this.#showTooltip(null);
        });
        button.addEventListener("click", () => this.#openPoint(point, button));
        item.append(button);
        return item;
      }),
    );
    if (hadFocus) this.el.list.querySelector(`[data-key="${CSS.escape(hadFocus)}"]`)?.focus();
  }

  /** Preview one work by its key as hovering its point does (the console and page tests). */
  preview(key) {
    const point = this.points?.find((p) => p.key === key);
    const at = point && this.plot.screenPosition(point);
    if (!at) return false;
    this.plot.setHighlight(point);
    this.#showTooltip(point, at.sx, at.sy);
    return true;
  }

  #showTooltip(point, x = 0, y = 0) {
    const { tooltip, tooltipImage, tooltipText } = this.el;
    if (!point) {
      tooltip.hidden = true;
      return;
    }
    tooltipText.textContent = [
      displayLabel(point.label),
      point.title || point.original_name,
      [point.maker, point.date].filter(Boolean).join(", "),
      // The tooltip cannot be clicked: it names where the record lives; the larger view links.
      safeLink(point.permalink) ? `Record: ${new URL(point.permalink).host}` : "",
    ]
      .filter(Boolean)
      .join(" · ");
    const thumb = point.thumbnail_url || point.url;
    if (thumb) {
      const src = this.api.resolve(thumb);
      if (tooltipImage.getAttribute("src") !== src) tooltipImage.src = src;
      tooltipImage.hidden = false;
    } else {
      tooltipImage.hidden = true;
    }
    tooltip.hidden = false;
    // Keep the preview inside the stage: flip to the left/top near the far edges.
    const stage = tooltip.parentElement.getBoundingClientRect();
    const left = x + 150 > stage.width ? x - 142 : x + 12;
    const top = y + 170 > stage.height ? y - 160 : y + 12;
    tooltip.style.transform = `translate(${Math.round(Math.max(0, left))}px, ${Math.round(Math.max(0, top))}px)`;
  }

  #openPoint(point, opener) {
    if (!point.url) return;
    this.viewer.open(
      {
        url: this.api.resolve(point.url),
        title: point.title || displayLabel(point.label),
        caption: workCaption(point, displayLabel(point.label)),
        alt: workAlt(point, displayLabel(point.label)),
        permalink: point.permalink,
        licence: point.licence,
      },
      opener,
    );
  }
}
