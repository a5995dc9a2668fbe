// A small 3D scatter plot on a 2D canvas: orbit by drag or arrow keys, zoom by wheel or +/-,
// hover and click to pick a point. Points are drawn back to front with a simple perspective.

const CAMERA_DISTANCE = 3.2;
const ROTATE_PER_PIXEL = 0.01;
const ROTATE_PER_KEY = 0.12;
const PICK_RADIUS_PX = 10;
const DEFAULT_VIEW = Object.freeze({ yaw: -0.6, pitch: 0.35, zoom: 1 });

export class Scatter3D {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{onHover?: (point: object|null, x: number, y: number) => void,
   *          onPick?: (point: object) => void}} [handlers]
   */
  constructor(canvas, { onHover = () => {}, onPick = () => {} } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onHover = onHover;
    this.onPick = onPick;
    this.points = [];
    this.colors = new Map();
    this.hidden = new Set();
    this.projected = [];
    this.view = { ...DEFAULT_VIEW };
    this.frame = 0;
    this.drag = null;
    this.#bindEvents();
    new ResizeObserver(() => this.requestRender()).observe(canvas);
  }

  /** @param {Array<{x:number,y:number,z:number,label:string}>} points @param {Map<string,string>} colors */
  setData(points, colors) {
    // Centre on the mean and scale into the unit ball, whatever range the projection has.
    const n = points.length || 1;
    const mean = ["x", "y", "z"].map((k) => points.reduce((s, p) => s + p[k], 0) / n);
    let radius = 1e-9;
    for (const p of points) {
      radius = Math.max(radius, Math.hypot(p.x - mean[0], p.y - mean[1], p.z - mean[2]));
    }
    this.points = points.map((p) => ({
      ...p,
      position: [(p.x - mean[0]) / radius, (p.y - mean[1]) / radius, (p.z - mean[2]) / radius],
    }));
    this.colors = colors;
    this.requestRender();
  }

  setHidden(labels) {
    this.hidden = new Set(labels);
    this.requestRender();
  }

  resetView() {
    this.view = { ...DEFAULT_VIEW };
    this.requestRender();
  }

  requestRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  #rotate([x, y, z]) {
    const { yaw, pitch } = this.view;
    const cy = Math.cos(yaw), sy = Math.sin(yaw);
    const cp = Math.cos(pitch), sp = Math.sin(pitch);
    const x1 = cy * x + sy * z;
    const z1 = -sy * x + cy * z;
    const y2 = cp * y - sp * z1;
    const z2 = sp * y + cp * z1;
    return [x1, y2, z2];
  }

  #project(vector, size) {
    const [x, y, z] = this.#rotate(vector);
    const perspective = CAMERA_DISTANCE / (CAMERA_DISTANCE - z);
    const scale = size.scale * this.view.zoom * perspective;
    return { sx: size.cx + x * scale, sy: size.cy - y * scale, depth: z, perspective };
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
    const size = { cx: width / 2, cy: height / 2, scale: Math.min(width, height) * 0.4 };
    const styles = getComputedStyle(canvas);
    const axisColor = styles.getPropertyValue("--axis-color").trim() || "#8892a0";

    this.#drawAxes(size, axisColor);

    this.projected = this.points
      .filter((p) => !this.hidden.has(p.label))
      .map((p) => ({ point: p, ...this.#project(p.position, size) }))
      .sort((a, b) => a.depth - b.depth);

    const outline = styles.getPropertyValue("--point-outline").trim() || "rgba(0,0,0,0.35)";
    for (const item of this.projected) {
      // Far points are smaller and fainter: a cheap depth cue.
      const radius = 4 * item.perspective * Math.sqrt(this.view.zoom);
      ctx.globalAlpha = 0.55 + 0.45 * ((item.depth + 1) / 2);
      ctx.beginPath();
      ctx.arc(item.sx, item.sy, radius, 0, Math.PI * 2);
      ctx.fillStyle = this.colors.get(item.point.label) ?? "#999";
      ctx.fill();
      ctx.lineWidth = 0.75;
      ctx.strokeStyle = outline;
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
  }

  #drawAxes(size, color) {
    const { ctx } = this;
    const origin = this.#project([0, 0, 0], size);
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif";
    const axes = [[[1, 0, 0], "PC1"], [[0, 1, 0], "PC2"], [[0, 0, 1], "PC3"]];
    const width = size.cx * 2;
    const height = size.cy * 2;
    for (const [end, name] of axes) {
      const tip = this.#project(end, size);
      const back = this.#project(end.map((v) => -v), size);
      ctx.setLineDash([3, 4]);
      ctx.beginPath();
      ctx.moveTo(back.sx, back.sy);
      ctx.lineTo(tip.sx, tip.sy);
      ctx.stroke();
      ctx.setLineDash([]);
      // Keep the axis names inside the canvas whatever the rotation.
      const labelX = Math.min(Math.max(tip.sx + 4, 4), width - 30);
      const labelY = Math.min(Math.max(tip.sy - 4, 14), height - 6);
      ctx.fillText(name, labelX, labelY);
    }
    ctx.beginPath();
    ctx.arc(origin.sx, origin.sy, 2, 0, Math.PI * 2);
    ctx.fill();
  }

  /** The visible point nearest to (x, y) in CSS pixels, front-most first on ties. */
  pick(x, y) {
    let best = null;
    let bestDistance = PICK_RADIUS_PX;
    for (let i = this.projected.length - 1; i >= 0; i -= 1) {
      const item = this.projected[i];
      const distance = Math.hypot(item.sx - x, item.sy - y);
      if (distance < bestDistance) {
        best = item;
        bestDistance = distance;
      }
    }
    return best;
  }

  #bindEvents() {
    const { canvas } = this;
    const local = (event) => {
      const box = canvas.getBoundingClientRect();
      return [event.clientX - box.left, event.clientY - box.top];
    };
    canvas.addEventListener("pointerdown", (event) => {
      canvas.setPointerCapture(event.pointerId);
      this.drag = { x: event.clientX, y: event.clientY, moved: 0 };
      canvas.classList.add("is-dragging");
    });
    canvas.addEventListener("pointermove", (event) => {
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
    canvas.addEventListener("pointerleave", () => this.onHover(null, 0, 0));
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
        "+": () => this.#setZoom(this.view.zoom * 1.15),
        "=": () => this.#setZoom(this.view.zoom * 1.15),
        "-": () => this.#setZoom(this.view.zoom / 1.15),
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
    this.view.zoom = Math.max(0.4, Math.min(6, zoom));
    this.requestRender();
  }

  /** Current orientation, for tests and for an accessible description. */
  get orientation() {
    return { ...this.view };
  }
}
