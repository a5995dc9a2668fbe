// How sure the answer is, in words. The server's `assessment` (calibrated thresholds, and the
// "probably not an artwork" checks it alone can make) wins; an older API without it gets the
// same rule applied here with the documented default thresholds.

/** Defaults when the answer carries no thresholds (docs/architecture.md, "HTTP API"). */
export const DEFAULT_THRESHOLDS = Object.freeze({ min_probability: 0.6, min_margin: 0.2 });

/**
 * @param {object} answer  a POST /predict answer
 * @returns {{status: "confident"|"uncertain"|"not_artwork", candidates: string[],
 *            reason: string|null, thresholds: {min_probability: number, min_margin: number},
 *            source: "server"|"page"}}
 */
export function assess(answer) {
  const ranked = Object.entries(answer?.probabilities ?? {}).sort((a, b) => b[1] - a[1]);
  const given = answer?.assessment;
  const thresholds = { ...DEFAULT_THRESHOLDS };
  for (const name of Object.keys(DEFAULT_THRESHOLDS)) {
    const value = given?.thresholds?.[name];
    if (Number.isFinite(value)) thresholds[name] = value;
  }
  const topTwo = ranked.slice(0, 2).map(([name]) => name);
  if (given && ["confident", "uncertain", "not_artwork"].includes(given.status)) {
    const candidates = Array.isArray(given.candidates) && given.candidates.length
      ? given.candidates.map(String)
      : topTwo;
    return { status: given.status, candidates, reason: given.reason ?? null, thresholds, source: "server" };
  }
  const top = ranked[0]?.[1] ?? Number(answer?.probability) ?? 0;
  const second = ranked[1]?.[1] ?? 0;
  let reason = null;
  if (top < thresholds.min_probability) reason = "low_probability";
  else if (top - second < thresholds.min_margin) reason = "small_margin";
  return {
    status: reason ? "uncertain" : "confident",
    candidates: reason ? topTwo : topTwo.slice(0, 1),
    reason,
    thresholds,
    source: "page",
  };
}

/** One sentence on why, for the line under the verdict. */
export function explainAssessment(assessment, answer) {
  const ranked = Object.entries(answer?.probabilities ?? {}).sort((a, b) => b[1] - a[1]);
  const pct = (p) => `${Math.round(p * 100)}%`;
  const [top, second] = ranked;
  const { min_probability: minP, min_margin: minM } = assessment.thresholds;
  switch (assessment.reason) {
    case "low_probability":
      return `The most likely type has only ${pct(top?.[1] ?? 0)} probability (below ${pct(minP)}); treat either type as possible.`;
    case "small_margin":
      return `The two most likely types are ${pct((top?.[1] ?? 0) - (second?.[1] ?? 0))} apart (less than ${pct(minM)}); treat either as possible.`;
    case "uniform_image":
      return "The picture is almost a single colour, so there is nothing to classify.";
    case "far_from_collection":
      return "The picture is far from every work in the collection: it is probably not an artwork, or of a kind the model has not seen.";
    default:
      return assessment.status === "not_artwork"
        ? "The picture does not look like any work the model knows."
        : "";
  }
}
