// RGB histogram (three channels, 256 bins) computed from the decoded image in the browser.

const MAX_SAMPLE_SIDE = 1024; // enough pixels for a stable histogram, fast on a phone

/** Count pixel values per channel. Fully transparent pixels are skipped (they have no colour). */
export function computeHistogram(bitmap) {
  const scale = Math.min(1, MAX_SAMPLE_SIDE / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0, width, height);
  const { data } = ctx.getImageData(0, 0, width, height);

  const red = new Uint32Array(256);
  const green = new Uint32Array(256);
  const blue = new Uint32Array(256);
  let pixels = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] === 0) continue;
    red[data[i]] += 1;
    green[data[i + 1]] += 1;
    blue[data[i + 2]] += 1;
    pixels += 1;
  }
  return { red, green, blue, pixels };
}

const CHANNELS = [
  ["red", "rgba(230, 57, 70, 0.28)", "rgb(200, 30, 45)"],
  ["green", "rgba(42, 157, 80, 0.28)", "rgb(25, 125, 60)"],
  ["blue", "rgba(40, 100, 230, 0.28)", "rgb(30, 80, 200)"],
];

/** Draw the three channels as overlapping filled curves, sized for the device pixel ratio. */
export function drawHistogram(canvas, histogram) {
  const dpr = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || 512;
  const cssHeight = canvas.clientHeight || 160;
  canvas.width = Math.round(cssWidth * dpr);
  canvas.height = Math.round(cssHeight * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssWidth, cssHeight);

  // Scale to the 99.5th-percentile bin so one huge spike (a flat background) does not flatten
  // everything else; the spike is simply clipped at the top.
  const all = [...histogram.red, ...histogram.green, ...histogram.blue].sort((a, b) => a - b);
  const peak = Math.max(1, all[Math.floor(all.length * 0.995)] || all[all.length - 1]);
  const pad = 2;
  const plotHeight = cssHeight - pad;
  const step = cssWidth / 255;

  for (const [name, fill, stroke] of CHANNELS) {
    const bins = histogram[name];
    ctx.beginPath();
    ctx.moveTo(0, cssHeight);
    for (let v = 0; v < 256; v += 1) {
      const h = Math.min(1, bins[v] / peak) * plotHeight;
      ctx.lineTo(v * step, cssHeight - h);
    }
    ctx.lineTo(cssWidth, cssHeight);
    ctx.closePath();
    ctx.fillStyle = fill;
    ctx.fill();
    ctx.strokeStyle = stroke;
    ctx.lineWidth = 1.25;
    ctx.stroke();
  }
}

/** A one-line text equivalent of the histogram for screen readers. */
export function describeHistogram(histogram) {
  const mean = (bins) => {
    let sum = 0;
    for (let v = 0; v < 256; v += 1) sum += v * bins[v];
    return histogram.pixels ? Math.round(sum / histogram.pixels) : 0;
  };
  return `RGB histogram. Mean red ${mean(histogram.red)}, green ${mean(histogram.green)}, blue ${mean(histogram.blue)} (0–255).`;
}
