// Colours per artwork type: the Okabe–Ito palette, distinguishable with colour-vision deficiency.

const PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00", "#F0E442"];

/** Map class names (in the model's output order) to colours. */
export function colorsFor(classes) {
  return new Map(classes.map((name, i) => [name, PALETTE[i % PALETTE.length]]));
}

/** "iconography" -> "Iconography" */
export function displayLabel(label) {
  return label ? label.charAt(0).toUpperCase() + label.slice(1) : "";
}
