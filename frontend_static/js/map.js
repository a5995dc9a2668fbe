// The "Collection map" view: GET /map and show the gallery's embeddings in 3D, coloured by type.

import { ApiError } from "./api.js";
import { clearProblem, describeApiError, missingTokenProblem, showProblem } from "./messages.js";
import { colorsFor, displayLabel } from "./palette.js";
import { Scatter3D } from "./scatter3d.js";

const $ = (id) => document.getElementById(id);

export class MapView {
  constructor({ api, token, viewer, announce }) {
    this.api = api;
    this.token = token;
    this.viewer = viewer;
    this.announce = announce;
    this.loaded = false;
    this.inFlight = null;
    this.hidden = new Set();
    this.el = {
      canvas: $("map-canvas"),
      tooltip: $("map-tooltip"),
      legend: $("map-legend"),
      status: $("map-status"),
      error: $("map-error"),
      limit: $("map-limit"),
      reload: $("map-reload"),
      reset: $("map-reset"),
    };
    this.plot = new Scatter3D(this.el.canvas, {
      onHover: (point, x, y) => this.#showTooltip(point, x, y),
      onPick: (point) => this.#openPoint(point),
    });
    this.el.reload.addEventListener("click", () => this.load());
    this.el.limit.addEventListener("change", () => this.load());
    this.el.reset.addEventListener("click", () => this.plot.resetView());
  }

  /** Called whenever the view becomes visible: the first time it fetches the map. */
  show() {
    if (!this.loaded && !this.inFlight) this.load();
    this.plot.requestRender();
  }

  async load() {
    clearProblem(this.el.error);
    if (!this.token.value) {
      this.#showError(missingTokenProblem());
      return;
    }
    this.inFlight?.abort();
    const controller = new AbortController();
    this.inFlight = controller;
    this.el.status.textContent = "Loading the collection…";
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
      this.el.status.textContent = "";
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
    if (problem.tokenProblem) this.token.flagProblem();
  }

  #render(data) {
    const points = (Array.isArray(data.points) ? data.points : []).filter(
      (p) => [p.x, p.y, p.z].every(Number.isFinite),
    );
    const classes = Array.isArray(data.classes) && data.classes.length
      ? data.classes
      : [...new Set(points.map((p) => p.label))];
    const colors = colorsFor(classes);
    this.plot.setData(points, colors);
    this.plot.setHidden(this.hidden);

    const counts = new Map(classes.map((c) => [c, 0]));
    for (const p of points) counts.set(p.label, (counts.get(p.label) ?? 0) + 1);
    this.el.legend.replaceChildren(
      ...classes.map((name) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "legend-item";
        button.setAttribute("aria-pressed", String(!this.hidden.has(name)));
        const swatch = document.createElement("span");
        swatch.className = "dot";
        swatch.style.backgroundColor = colors.get(name);
        const text = document.createElement("span");
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

    const summary = classes.map((c) => `${displayLabel(c)} ${counts.get(c) ?? 0}`).join(", ");
    this.el.canvas.setAttribute(
      "aria-label",
      `3D scatter plot of ${points.length} works coloured by type: ${summary}.`,
    );
    this.el.status.textContent = points.length
      ? `${points.length} works${data.model_version ? ` · model ${data.model_version}` : ""}`
      : "The collection is empty: no works are indexed yet.";
    this.announce(`Collection map loaded: ${points.length} works.`);
  }

  #showTooltip(point, x, y) {
    const { tooltip } = this.el;
    if (!point) {
      tooltip.hidden = true;
      return;
    }
    tooltip.textContent = displayLabel(point.label);
    tooltip.hidden = false;
    tooltip.style.transform = `translate(${Math.round(x + 12)}px, ${Math.round(y + 12)}px)`;
  }

  #openPoint(point) {
    if (!point.url) return;
    this.viewer.open(
      {
        url: this.api.resolve(point.url),
        title: displayLabel(point.label),
        caption: point.key ?? "",
        alt: `${displayLabel(point.label)} from the collection`,
      },
      this.el.canvas,
    );
  }
}
