// A 3D scatter plot on a 2D canvas: orbit by drag or arrow keys, zoom by wheel, +/-, on-screen
// buttons or a two-finger pinch; hover and click to pick a point. Points are drawn back to front
// with a simple perspective. Coordinates live in typed arrays and large sets are drawn in a few
// batched paths (one per depth slab and colour), which is what keeps 20,000 points interactive.

const CAMERA_DISTANCE = 3.2;
const ROTATE_PER_PIXEL = 0.01;
const ROTATE_PER_KEY = 0.12;
const PICK_RADIUS_PX = 10;
const MIN_ZOOM = 0.4;
const MAX_ZOOM = 20;
const DEFAULT_VIEW = Object.freeze({ yaw: -0.6, pitch: 0.35, zoom: 1 });
// Up to this many visible points each gets its own outlined circle; above it, batched squares.
const DETAILED_LIMIT = 3000;
const DEPTH_SLABS = 6;
// Plain words for the three projection axes: they are directions of largest variation, with no
// fixed meaning, so they are named by rank rather than "PC1".
export const AXIS_NAMES = Object.freeze(["1st difference", "2nd difference", "3rd difference"]);

export class Scatter3D {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{onHover?: (point: object|null, x: number, y: number) => void,
   *          onPick?: (point: object) => void,
   *          onViewChange?: () => void}} [handlers]
   */
  constructor(canvas, { onHover = () => {}, onPick = () => {}, onViewChange = () => {} } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onHover = onHover;
    this.onPick = onPick;
    this.onViewChange = onViewChange;
    this.points = [];
    this.count = 0;
    this.positions = new Float32Array(0);
    this.colorIndex = new Uint16Array(0);
    this.palette = [];
    this.paletteKeys = [];
    this.hiddenColor = new Uint8Array(0);
    this.sx = new Float32Array(0);
    this.sy = new Float32Array(0);
    this.depth = new Float32Array(0);
    this.order = new Uint32Array(0);
    this.visibleCount = 0;
    this.normalize = { mean: [0, 0, 0], radius: 1 };
    this.query = null;
    this.highlight = null;
    this.view = { ...DEFAULT_VIEW };
    this.frame = 0;
    this.drag = null;
    this.pointers = new Map();
    this.pinch = null;
    this.size = { cx: 0, cy: 0, scale: 1, width: 0, height: 0 };
    this.#bindEvents();
    new ResizeObserver(() => this.requestRender()).observe(canvas);
  }

  /**
   * @param {Array<{x:number,y:number,z:number,label:string}>} points
   * @param {Map<string,string>} colors  colour per colour key
   * @param {(p: object) => string} [colorKey]  which field picks the colour (default: label)
   */
  setData(points, colors, colorKey = (p) => p.label) {
    // Centre on the mean and scale into the unit ball, whatever range the projection has.
    const n = points.length;
    const mean = [0, 0, 0];
    for (const p of points) {
      mean[0] += p.x / (n || 1);
      mean[1] += p.y / (n || 1);
      mean[2] += p.z / (n || 1);
    }
    let radius = 1e-9;
    for (const p of points) {
      radius = Math.max(radius, Math.hypot(p.x - mean[0], p.y - mean[1], p.z - mean[2]));
    }
    this.normalize = { mean, radius };
    this.points = points;
    this.count = n;
    this.positions = new Float32Array(n * 3);
    points.forEach((p, i) => {
      this.positions.set(this.#normalized(p), i * 3);
    });
    this.sx = new Float32Array(n);
    this.sy = new Float32Array(n);
    this.depth = new Float32Array(n);
    this.order = new Uint32Array(n);
    this.colorIndex = new Uint16Array(n);
    this.setColoring(colors, colorKey);
  }

  /** Recolour without touching positions (predicted type vs catalogued type). */
  setColoring(colors, colorKey = (p) => p.label) {
    this.paletteKeys = [...colors.keys()];
    this.palette = [...colors.values(), "#999999"];
    const indexOf = new Map(this.paletteKeys.map((k, i) => [k, i]));
    const other = this.paletteKeys.length;
    this.points.forEach((p, i) => {
      this.colorIndex[i] = indexOf.get(colorKey(p)) ?? other;
    });
    this.hiddenColor = new Uint8Array(this.palette.length);
    this.requestRender();
  }

  /** Hide the points whose colour key is in `keys`. */
  setHidden(keys) {
    const hidden = new Set(keys);
    this.hiddenColor = new Uint8Array(this.palette.length);
    this.paletteKeys.forEach((k, i) => {
      if (hidden.has(k)) this.hiddenColor[i] = 1;
    });
    this.requestRender();
  }

  /** The analysed image: raw projection coordinates plus the map points it is linked to. */
  setQuery(query) {
    this.query = query
      ? {
          position: this.#normalized(query),
          neighbors: (query.neighbors ?? []).map((p) => this.points.indexOf(p)).filter((i) => i >= 0),
        }
      : null;
    this.requestRender();
  }

  /** Ring one point (keyboard focus in the list of points). */
  setHighlight(point) {
    this.highlight = point ?? null;
    this.requestRender();
  }

  resetView() {
    this.view = { ...DEFAULT_VIEW };
    this.requestRender();
  }

  zoomBy(factor) {
    this.#setZoom(this.view.zoom * factor);
  }

  requestRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
      this.onViewChange();
    });
  }

  #normalized(p) {
    const { mean, radius } = this.normalize;
    return [(p.x - mean[0]) / radius, (p.y - mean[1]) / radius, (p.z - mean[2]) / radius];
  }

  #project([x, y, z]) {
    const { yaw, pitch, zoom } = this.view;
    const cy = Math.cos(yaw), sy = Math.sin(yaw);
    const cp = Math.cos(pitch), sp = Math.sin(pitch);
    const x1 = cy * x + sy * z;
    const z1 = -sy * x + cy * z;
    const y2 = cp * y - sp * z1;
    const z2 = sp * y + cp * z1;
    const perspective = CAMERA_DISTANCE / (CAMERA_DISTANCE - z2);
    const scale = this.size.scale * zoom * perspective;
    return { sx: this.size.cx + x1 * scale, sy: this.size.cy - y2 * scale, depth: z2, perspective };
  }

  /** Screen position of a map point (for tooltips next to a focused list item). */
  screenPosition(point) {
    const index = this.points.indexOf(point);
    if (index < 0) return null;
    return this.#project([...this.positions.subarray(index * 3, index * 3 + 3)]);
  }

  render() {
    const { canvas, ctx } = this;
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    this.size = { cx: width / 2, cy: height / 2, scale: Math.min(width, height) * 0.4, width, height };
    const styles = getComputedStyle(canvas);
    const axisColor = styles.getPropertyValue("--axis-color").trim() || "#6b7280";
    const outline = styles.getPropertyValue("--point-outline").trim() || "rgba(0,0,0,0.35)";
    const queryColor = styles.getPropertyValue("--query-color").trim() || "#111111";

    this.#drawAxes(axisColor);
    this.#projectAll();
    if (this.visibleCount <= DETAILED_LIMIT) this.#drawDetailed(outline);
    else this.#drawBatched();
    this.#drawQuery(queryColor);
    this.#drawHighlight(queryColor);
    ctx.globalAlpha = 1;
    canvas.dataset.zoom = this.view.zoom.toFixed(3);
    canvas.dataset.visible = String(this.visibleCount);
  }

  #projectAll() {
    const { yaw, pitch, zoom } = this.view;
    const cy = Math.cos(yaw), sy = Math.sin(yaw);
    const cp = Math.cos(pitch), sp = Math.sin(pitch);
    const { cx, cy: cyScreen, scale } = this.size;
    const pos = this.positions;
    let visible = 0;
    for (let i = 0; i < this.count; i += 1) {
      if (this.hiddenColor[this.colorIndex[i]]) continue;
      const x = pos[i * 3], y = pos[i * 3 + 1], z = pos[i * 3 + 2];
      const x1 = cy * x + sy * z;
      const z1 = -sy * x + cy * z;
      const y2 = cp * y - sp * z1;
      const z2 = sp * y + cp * z1;
      const s = (scale * zoom * CAMERA_DISTANCE) / (CAMERA_DISTANCE - z2);
      this.sx[i] = cx + x1 * s;
      this.sy[i] = cyScreen - y2 * s;
      this.depth[i] = z2;
      this.order[visible] = i;
      visible += 1;
    }
    this.visibleCount = visible;
    const depth = this.depth;
    this.order.subarray(0, visible).sort((a, b) => depth[a] - depth[b]);
  }

  #drawDetailed(outline) {
    const { ctx } = this;
    const radiusBase = 4 * Math.sqrt(this.view.zoom);
    ctx.lineWidth = 0.75;
    ctx.strokeStyle = outline;
    for (let k = 0; k < this.visibleCount; k += 1) {
      const i = this.order[k];
      const d = this.depth[i];
      // Far points are smaller and fainter: a cheap depth cue.
      ctx.globalAlpha = 0.55 + 0.45 * ((d + 1) / 2);
      ctx.beginPath();
      ctx.arc(this.sx[i], this.sy[i], radiusBase * (CAMERA_DISTANCE / (CAMERA_DISTANCE - d)), 0, Math.PI * 2);
      ctx.fillStyle = this.palette[this.colorIndex[i]];
      ctx.fill();
      ctx.stroke();
    }
  }

  #drawBatched() {
    const { ctx } = this;
    const side = Math.max(1.5, 2.6 * Math.sqrt(this.view.zoom));
    const half = side / 2;
    const total = this.visibleCount;
    for (let slab = 0; slab < DEPTH_SLABS; slab += 1) {
      const start = Math.floor((slab * total) / DEPTH_SLABS);
      const end = Math.floor(((slab + 1) * total) / DEPTH_SLABS);
      ctx.globalAlpha = 0.5 + (0.5 * (slab + 1)) / DEPTH_SLABS;
      for (let c = 0; c < this.palette.length; c += 1) {
        if (this.hiddenColor[c]) continue;
        ctx.beginPath();
        let any = false;
        for (let k = start; k < end; k += 1) {
          const i = this.order[k];
          if (this.colorIndex[i] !== c) continue;
          ctx.rect(this.sx[i] - half, this.sy[i] - half, side, side);
          any = true;
        }
        if (!any) continue;
        ctx.fillStyle = this.palette[c];
        ctx.fill();
      }
    }
  }

  #drawQuery(color) {
    if (!this.query) return;
    const { ctx } = this;
    const q = this.#project(this.query.position);
    ctx.globalAlpha = 0.9;
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    for (const index of this.query.neighbors) {
      if (this.hiddenColor[this.colorIndex[index]]) continue;
      ctx.beginPath();
      ctx.moveTo(q.sx, q.sy);
      ctx.lineTo(this.sx[index], this.sy[index]);
      ctx.stroke();
      ctx.beginPath();
      ctx.arc(this.sx[index], this.sy[index], 7, 0, Math.PI * 2);
      ctx.stroke();
    }
    // The query: a large ringed diamond, unlike every collection point.
    ctx.globalAlpha = 1;
    const r = 9;
    ctx.beginPath();
    ctx.moveTo(q.sx, q.sy - r);
    ctx.lineTo(q.sx + r, q.sy);
    ctx.lineTo(q.sx, q.sy + r);
    ctx.lineTo(q.sx - r, q.sy);
    ctx.closePath();
    ctx.fillStyle = color;
    ctx.fill();
    ctx.lineWidth = 2.5;
    ctx.strokeStyle = getComputedStyle(this.canvas).getPropertyValue("--query-halo").trim() || "#fff";
    ctx.stroke();
  }

  #drawHighlight(color) {
    if (!this.highlight) return;
    const p = this.screenPosition(this.highlight);
    if (!p) return;
    const { ctx } = this;
    ctx.globalAlpha = 1;
    ctx.strokeStyle = color;
    ctx.lineWidth = 2.5;
    ctx.beginPath();
    ctx.arc(p.sx, p.sy, 10, 0, Math.PI * 2);
    ctx.stroke();
  }

  #drawAxes(color) {
    const { ctx } = this;
    const origin = this.#project([0, 0, 0]);
    ctx.globalAlpha = 1;
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif";
    const ends = [[1, 0, 0], [0, 1, 0], [0, 0, 1]];
    const { width, height } = this.size;
    ends.forEach((end, axis) => {
      const tip = this.#project(end);
      const back = this.#project(end.map((v) => -v));
      ctx.setLineDash([3, 4]);
      ctx.beginPath();
      ctx.moveTo(back.sx, back.sy);
      ctx.lineTo(tip.sx, tip.sy);
      ctx.stroke();
      ctx.setLineDash([]);
      // Keep the axis names inside the canvas whatever the rotation.
      const name = AXIS_NAMES[axis];
      const labelWidth = ctx.measureText(name).width;
      const labelX = Math.min(Math.max(tip.sx + 4, 4), width - labelWidth - 4);
      const labelY = Math.min(Math.max(tip.sy - 4, 14), height - 6);
      ctx.fillText(name, labelX, labelY);
    });
    ctx.beginPath();
    ctx.arc(origin.sx, origin.sy, 2, 0, Math.PI * 2);
    ctx.fill();
  }

  /** The visible point nearest to (x, y) in CSS pixels, front-most first on ties. */
  pick(x, y) {
    let best = -1;
    let bestDistance = PICK_RADIUS_PX;
    for (let k = this.visibleCount - 1; k >= 0; k -= 1) {
      const i = this.order[k];
      const distance = Math.hypot(this.sx[i] - x, this.sy[i] - y);
      if (distance < bestDistance) {
        best = i;
        bestDistance = distance;
      }
    }
    return best < 0 ? null : { point: this.points[best], sx: this.sx[best], sy: this.sy[best] };
  }

  /** Visible points inside the canvas, nearest the centre first (the keyboard list). */
  pointsInView() {
    const { width, height, cx, cy } = this.size;
    const found = [];
    for (let k = 0; k < this.visibleCount; k += 1) {
      const i = this.order[k];
      const x = this.sx[i], y = this.sy[i];
      if (x < 0 || y < 0 || x > width || y > height) continue;
      found.push({ point: this.points[i], distance: Math.hypot(x - cx, y - cy) });
    }
    return found.sort((a, b) => a.distance - b.distance).map((f) => f.point);
  }

  #bindEvents() {
    const { canvas } = this;
    const local = (event) => {
      const box = canvas.getBoundingClientRect();
      return [event.clientX - box.left, event.clientY - box.top];
    };
    const pinchDistance = () => {
      const [a, b] = [...this.pointers.values()];
      return Math.hypot(a.x - b.x, a.y - b.y) || 1;
    };
    canvas.addEventListener("pointerdown", (event) => {
      canvas.setPointerCapture(event.pointerId);
      this.pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
      if (this.pointers.size === 2) {
        // Two fingers: pinch to zoom; the drag (rotation) stops until one finger lifts.
        this.drag = null;
        this.pinch = { distance: pinchDistance(), zoom: this.view.zoom };
        return;
      }
      this.drag = { x: event.clientX, y: event.clientY, moved: 0 };
      canvas.classList.add("is-dragging");
    });
    canvas.addEventListener("pointermove", (event) => {
      if (this.pointers.has(event.pointerId)) {
        this.pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
      }
      if (this.pinch && this.pointers.size === 2) {
        this.#setZoom(this.pinch.zoom * (pinchDistance() / this.pinch.distance));
        return;
      }
      if (this.drag) {
        const dx = event.clientX - this.drag.x;
        const dy = event.clientY - this.drag.y;
        this.drag = { x: event.clientX, y: event.clientY, moved: this.drag.moved + Math.abs(dx) + Math.abs(dy) };
        this.view.yaw += dx * ROTATE_PER_PIXEL;
        this.#setPitch(this.view.pitch + dy * ROTATE_PER_PIXEL);
        this.onHover(null, 0, 0);
        this.requestRender();
        return;
      }
      const [x, y] = local(event);
      const hit = this.pick(x, y);
      canvas.classList.toggle("is-pointing", Boolean(hit));
      this.onHover(hit ? hit.point : null, x, y);
    });
    const endDrag = (event) => {
      this.pointers.delete(event.pointerId);
      if (this.pinch) {
        if (this.pointers.size < 2) this.pinch = null;
        return;
      }
      if (!this.drag) return;
      const wasClick = this.drag.moved < 4;
      this.drag = null;
      canvas.classList.remove("is-dragging");
      if (wasClick && event.type === "pointerup") {
        const hit = this.pick(...local(event));
        if (hit) this.onPick(hit.point);
      }
    };
    canvas.addEventListener("pointerup", endDrag);
    canvas.addEventListener("pointercancel", endDrag);
    canvas.addEventListener("pointerleave", () => {
      if (!this.drag) this.onHover(null, 0, 0);
    });
    canvas.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        this.#setZoom(this.view.zoom * Math.exp(-event.deltaY * 0.0015));
      },
      { passive: false },
    );
    canvas.addEventListener("keydown", (event) => {
      const actions = {
        ArrowLeft: () => (this.view.yaw -= ROTATE_PER_KEY),
        ArrowRight: () => (this.view.yaw += ROTATE_PER_KEY),
        ArrowUp: () => this.#setPitch(this.view.pitch - ROTATE_PER_KEY),
        ArrowDown: () => this.#setPitch(this.view.pitch + ROTATE_PER_KEY),
        "+": () => this.zoomBy(1.15),
        "=": () => this.zoomBy(1.15),
        "-": () => this.zoomBy(1 / 1.15),
        Home: () => this.resetView(),
      };
      const action = actions[event.key];
      if (!action) return;
      event.preventDefault();
      action();
      this.requestRender();
    });
  }

  #setPitch(pitch) {
    this.view.pitch = Math.max(-Math.PI / 2, Math.min(Math.PI / 2, pitch));
  }

  #setZoom(zoom) {
    this.view.zoom = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, zoom));
    this.requestRender();
  }

  /** Current orientation, for tests and for an accessible description. */
  get orientation() {
    return { ...this.view };
  }
}
