// Sharing a result: its state in the page URL, and downloads as CSV or JSON.

export const MIN_NEIGHBORS = 5;
export const MAX_NEIGHBORS = 20;

/** Read {key|sha256, scope, n} from the page URL's query string. */
export function readShared(search = window.location.search) {
  const params = new URLSearchParams(search);
  const key = params.get("key") ?? "";
  const sha256 = (params.get("sha256") ?? "").toLowerCase();
  const scope = params.get("scope") === "all" ? "all" : params.get("scope") === "class" ? "class" : null;
  const n = Number.parseInt(params.get("n") ?? "", 10);
  return {
    reference: key ? { key } : /^[0-9a-f]{64}$/.test(sha256) ? { sha256 } : null,
    scope,
    count: Number.isFinite(n) ? Math.min(MAX_NEIGHBORS, Math.max(MIN_NEIGHBORS, n)) : null,
  };
}

/** Put the result's state in the URL (replacing, so Back still leaves the page). */
export function writeShared({ reference, scope, count }) {
  const params = new URLSearchParams();
  if (reference?.key) params.set("key", reference.key);
  else if (reference?.sha256) params.set("sha256", reference.sha256);
  params.set("scope", scope);
  params.set("n", String(count));
  const url = new URL(window.location.href);
  url.search = params.toString();
  history.replaceState(history.state, "", url);
  return url.href;
}

function csvCell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** One table: the probability of each type, then each similar work, ranked. */
export function resultCsv(answer, verdict) {
  const rows = [["section", "rank", "key", "label", "score", "title", "maker", "date"]];
  rows.push(["verdict", "", "", verdict, "", "", "", ""]);
  Object.entries(answer.probabilities ?? {})
    .sort((a, b) => b[1] - a[1])
    .forEach(([label, p], i) => rows.push(["type", i + 1, "", label, p, "", "", ""]));
  (answer.neighbors ?? []).forEach((n, i) =>
    rows.push(["neighbor", i + 1, n.key, n.label, n.similarity, n.title ?? "", n.maker ?? "", n.date ?? ""]),
  );
  return `${rows.map((row) => row.map(csvCell).join(",")).join("\r\n")}\r\n`;
}

/** Offer `text` as a file download (a blob: URL, revoked once the click is handled). */
export function download(text, filename, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
