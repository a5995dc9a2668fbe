// The "Collection" view, for curators: the review queue (GET /review; decisions with
// POST /review/{sha256}, which needs a token with the `review` scope), the duplicate groups
// (GET /duplicates) and the intake reports (GET /reports, GET /reports/{batch}).

import { ApiError } from "./api.js";
import {
  clearProblem,
  describeApiError,
  formatPercent,
  missingTokenProblem,
  showProblem,
} from "./messages.js";
import { displayLabel } from "./palette.js";
import { workAlt, workCaption } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const QUEUE_LIMIT = 50;
const REPORTS_LIMIT = 20;
export const REVIEW_SCOPE = "review";

/** The words for a work: its title, else the name it was dropped as, else its key. */
export function workName(work) {
  return work.title || work.original_name || (work.key ?? "").replace(/^gallery\//, "") ||
    (work.sha256 ?? "").slice(0, 12);
}

/** A report part's name starts with its UTC time: "2026-11-30T02-10-00Z-…" -> readable. */
export function reportTime(updated) {
  const match = /^(\d{4}-\d{2}-\d{2})T(\d{2})-(\d{2})-(\d{2})Z/.exec(updated ?? "");
  return match ? `${match[1]} ${match[2]}:${match[3]}:${match[4]} UTC` : String(updated ?? "");
}

/** "2026-11-30T01:43:02+00:00" -> "2026-11-30 01:43:02 UTC" (other forms as they are). */
export function isoTime(text) {
  const match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?(?:\+00:00|Z)$/.exec(text ?? "");
  return match ? `${match[1]} ${match[2]} UTC` : String(text ?? "");
}

const COUNT_WORDS = {
  indexed: "Indexed",
  duplicate: "Exact duplicates",
  near_duplicates: "Near duplicates",
  related: "Related works",
  disagreements: "Type disagreements",
  rejected: "Rejected",
  failed: "Failed",
  skipped: "Skipped",
};

/** Rows a curator should look at: rejected or failed files, duplicates, disagreements, and
 * records (sidecar rows) that could not be read as given. */
export function notableRows(rows) {
  return (rows ?? []).filter(
    (row) => ["rejected", "failed", "duplicate"].includes(row.status) ||
      Boolean(row.near_duplicate_of) || row.disagrees === true || Boolean(row.problems),
  );
}

/** [outcome, details] of one notable report row, in words. */
export function describeRow(row) {
  const outcomes = [];
  const details = [];
  if (row.status === "rejected" || row.status === "failed") {
    outcomes.push(row.status === "rejected" ? "Rejected" : "Failed");
    details.push([row.reason, row.message].filter(Boolean).join(": "));
  }
  if (row.status === "duplicate") {
    outcomes.push("Exact duplicate");
    details.push(`the same file as ${row.duplicate_of_name || row.duplicate_of || "a work already held"}`);
  }
  if (row.near_duplicate_of) {
    outcomes.push("Near duplicate");
    const similarity = Number.isFinite(row.near_duplicate_similarity)
      ? ` (similarity ${row.near_duplicate_similarity.toFixed(2)})`
      : "";
    details.push(`of ${row.near_duplicate_of}${similarity}`);
  }
  if (row.disagrees === true) {
    outcomes.push("Type disagreement");
    const probability = Number.isFinite(row.probability) ? ` (${formatPercent(row.probability)})` : "";
    details.push(`catalogued as ${row.catalogued_type}; the model says ${row.predicted_type}${probability}`);
  }
  if (row.problems) {
    if (!outcomes.length) outcomes.push("Record problems");
    details.push(`record: ${row.problems}`);
  }
  return [outcomes.join(", ") || displayLabel(row.status), details.filter(Boolean).join("; ")];
}

/** A review POST's failure in words a curator can act on. */
export function describeReviewError(error) {
  if (error.kind === "http" && error.status === 403) {
    return {
      title: "Your token may not record decisions.",
      detail: "It needs the review scope: ask for a curator's token (make token ARGS=\"--scope predict --scope review\").",
    };
  }
  if (error.kind === "http" && error.status === 400) {
    return { title: "The service refused this decision.", detail: error.message };
  }
  if (error.kind === "http" && error.status === 404) {
    return { title: "This work is no longer in the collection.", detail: error.message };
  }
  return describeApiError(error);
}

function hiddenText(text) {
  const span = document.createElement("span");
  span.className = "visually-hidden";
  span.textContent = text;
  return span;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A work's 256 px rendition (its larger one when it has none), loaded when scrolled to; the
// caption beside it names the work, so the image itself is decorative (empty alt).
function thumbnail(api, work, className) {
  const image = element("img", className);
  image.src = api.resolve(work.thumbnail_url || work.url);
  image.alt = "";
  image.loading = "lazy";
  image.decoding = "async";
  return image;
}

export class CurationView {
  constructor({ api, token, viewer, announce }) {
    this.api = api;
    this.token = token;
    this.viewer = viewer;
    this.announce = announce;
    this.visible = false;
    this.loadedFor = null; // the token the view was last loaded with
    this.inFlight = null;
    this.scopes = [];
    this.classes = [];
    this.queue = [];
    this.selectedBatch = null;
    this.csvUrl = null;
    this.el = {
      reload: $("collection-reload"),
      who: $("collection-who"),
      error: $("collection-error"),
      reviewHeading: $("review-heading"),
      reviewCount: $("review-count"),
      reviewNote: $("review-scope-note"),
      reviewError: $("review-error"),
      reviewStatus: $("review-status"),
      reviewEmpty: $("review-empty"),
      reviewList: $("review-list"),
      duplicatesCount: $("duplicates-count"),
      duplicatesError: $("duplicates-error"),
      duplicatesEmpty: $("duplicates-empty"),
      duplicatesList: $("duplicates-list"),
      reportsError: $("reports-error"),
      reportsEmpty: $("reports-empty"),
      reportsList: $("reports-list"),
      reportDetail: $("report-detail"),
      reportHeading: $("report-heading"),
      reportMeta: $("report-meta"),
      reportCounts: $("report-counts"),
      reportCsv: $("report-csv"),
      notableEmpty: $("report-notable-empty"),
      notableWrap: $("report-notable-wrap"),
      notableBody: $("report-notable").querySelector("tbody"),
    };
    this.el.reload.addEventListener("click", () => this.load());
    this.token.onChange(() => {
      // Reload once the new token has been checked (not on every keystroke).
      if (this.visible && this.token.verdict && this.loadedFor !== this.token.value) this.load();
    });
  }

  get canReview() {
    return this.scopes.includes(REVIEW_SCOPE);
  }

  show() {
    this.visible = true;
    if (this.loadedFor !== this.token.value && !this.inFlight) this.load();
  }

  hide() {
    this.visible = false;
  }

  async load() {
    clearProblem(this.el.error);
    if (!this.token.value) {
      showProblem(this.el.error, missingTokenProblem());
      this.el.who.textContent = "";
      return;
    }
    this.inFlight?.abort();
    const controller = new AbortController();
    this.inFlight = controller;
    const { signal } = controller;
    this.loadedFor = this.token.value;
    this.el.reload.disabled = true;
    this.el.who.textContent = "Loading…";
    try {
      // A token the API refuses is said once, not once per list.
      if (!(await this.#loadWho(signal))) return;
      await Promise.all([
        this.#loadQueue(signal),
        this.#loadDuplicates(signal),
        this.#loadReports(signal),
      ]);
      if (this.inFlight !== controller) return;
      this.announce(
        `Collection care loaded: ${this.queue.length} works to review, ` +
          `${this.el.duplicatesList.children.length} duplicate groups, ` +
          `${this.el.reportsList.children.length} intake reports.`,
      );
    } catch (error) {
      if (error?.name !== "AbortError") throw error;
    } finally {
      if (this.inFlight === controller) {
        this.inFlight = null;
        this.el.reload.disabled = false;
      }
    }
  }

  /** Who the token is and whether it may decide (GET /whoami's scopes); false when the
   * token cannot be used at all. */
  async #loadWho(signal) {
    try {
      const me = await this.api.whoami(undefined, { signal });
      this.scopes = Array.isArray(me.scopes) ? me.scopes.filter((s) => typeof s === "string") : [];
      const who = typeof me.sub === "string" && me.sub ? me.sub : "this token";
      this.el.who.textContent = this.canReview
        ? `Signed in as ${who}, who may review.`
        : `Signed in as ${who} (read-only).`;
      return true;
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      this.scopes = [];
      this.el.who.textContent = "";
      const problem = describeApiError(error);
      showProblem(this.el.error, problem);
      if (problem.tokenProblem) {
        this.token.flagProblem();
        return false;
      }
      return true; // the lists may still answer (read-only)
    }
  }

  #sectionError(box, error) {
    if (!(error instanceof ApiError)) throw error;
    const problem = error.routeMissing
      ? { title: "This API does not offer this list yet.", detail: error.message }
      : describeApiError(error);
    showProblem(box, problem);
  }

  // -- review queue ---------------------------------------------------------------------------

  async #loadQueue(signal) {
    clearProblem(this.el.reviewError);
    this.el.reviewStatus.textContent = "";
    this.el.reviewNote.hidden = this.canReview;
    this.el.reviewNote.textContent = this.canReview
      ? ""
      : "Read-only: recording a decision needs a token with the review scope (a curator's token).";
    let answer;
    try {
      answer = await this.api.reviewQueue({ limit: QUEUE_LIMIT, signal });
    } catch (error) {
      if (error?.name === "AbortError") throw error;
      this.queue = [];
      this.el.reviewList.replaceChildren();
      this.el.reviewCount.textContent = "";
      this.el.reviewEmpty.hidden = true;
      this.#sectionError(this.el.reviewError, error);
      return;
    }
    this.classes = Array.isArray(answer.classes) ? answer.classes : [];
    this.queue = Array.isArray(answer.items) ? answer.items : [];
    this.minProbability = answer.min_probability;
    this.el.reviewList.replaceChildren(...this.queue.map((item) => this.#reviewItem(item)));
    this.#updateQueueCount();
  }

  #updateQueueCount() {
    const n = this.el.reviewList.children.length;
    this.el.reviewCount.textContent = `(${n}${n >= QUEUE_LIMIT ? "+" : ""})`;
    this.el.reviewEmpty.hidden = n > 0;
  }

  #reviewItem(item) {
    const name = workName(item);
    const id = `review-${item.sha256.slice(0, 16)}`;
    const label = displayLabel(item.label);
    const li = element("li", "review-item");
    li.dataset.sha256 = item.sha256;
    li.dataset.key = item.key;
    li.dataset.reason = item.reason;

    const thumb = element("button", "review-thumb");
    thumb.type = "button";
    const image = thumbnail(this.api, item, "review-image");
    thumb.append(image, hiddenText(`Show ${name} larger`));
    thumb.addEventListener("click", () => this.#open(item, thumb, "Waiting for review"));

    const body = element("div", "review-body");
    const title = element("h3", "review-title", name);
    title.id = `${id}-title`;
    title.tabIndex = -1;
    body.append(title);
    const byline = [item.maker, item.date, item.inventory_number].filter(Boolean).join(", ");
    body.append(element("p", "review-byline", [byline, item.key].filter(Boolean).join(" · ")));

    const types = element("p", "review-types");
    types.append("Catalogued: ");
    types.append(element("strong", "", item.catalogued_type || "not catalogued"));
    types.append(" · Model: ");
    types.append(element("strong", "", item.label));
    types.append(` ${formatPercent(item.probability)}`);
    body.append(types);
    const reason = item.reason === "disagrees"
      ? `The model disagrees with the catalogue${Number.isFinite(item.catalogued_probability)
        ? `: it gives ${item.catalogued_type} ${formatPercent(item.catalogued_probability)}` : ""}.`
      : `The model is unsure of this work (its top probability is ${formatPercent(item.probability)}).`;
    body.append(element("p", "review-reason", reason));

    const error = element("div", "message message-error review-item-error");
    error.setAttribute("role", "alert");
    error.hidden = true;

    if (this.canReview) {
      const actions = element("div", "review-actions");
      actions.setAttribute("role", "group");
      actions.setAttribute("aria-labelledby", title.id);
      const buttons = [];
      if (item.catalogued_type && this.classes.includes(item.catalogued_type)) {
        const confirm = element("button", "btn btn-ghost review-confirm");
        confirm.type = "button";
        confirm.append("Confirm catalogue", hiddenText(`: ${item.catalogued_type}`));
        confirm.addEventListener("click", () =>
          this.#decide(item, li, { decision: "confirm" }, buttons, error));
        buttons.push(confirm);
        actions.append(confirm);
      }
      const select = element("select", "review-type");
      select.id = `${id}-type`;
      for (const name of this.classes) {
        const option = element("option", "", name);
        option.value = name;
        select.append(option);
      }
      // The likeliest correction: the model's type, unless that is what the catalogue says.
      select.value = item.label !== item.catalogued_type
        ? item.label
        : this.classes.find((c) => c !== item.catalogued_type) ?? item.label;
      const selectLabel = element("label", "review-type-label", "Correct type to");
      selectLabel.htmlFor = select.id;
      const correct = element("button", "btn btn-ghost review-correct");
      correct.type = "button";
      correct.append("Correct type");
      correct.addEventListener("click", () =>
        this.#decide(item, li, { decision: "correct", type: select.value }, buttons, error));
      buttons.push(select, correct);
      actions.append(element("span", "review-correct-group"));
      actions.lastChild.append(selectLabel, select, correct);
      body.append(actions);
    }
    body.append(error);
    li.append(thumb, body);
    return li;
  }

  async #decide(item, li, decision, controls, errorBox) {
    clearProblem(errorBox);
    for (const control of controls) control.disabled = true;
    li.setAttribute("aria-busy", "true");
    let stored;
    try {
      stored = await this.api.review(item.sha256, decision);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      for (const control of controls) control.disabled = false;
      li.removeAttribute("aria-busy");
      const problem = describeReviewError(error);
      showProblem(errorBox, problem);
      if (problem.tokenProblem) this.token.flagProblem();
      return;
    }
    // A reviewed work leaves the queue; focus goes to the next one (or the list's heading).
    const next = li.nextElementSibling ?? li.previousElementSibling;
    li.remove();
    this.queue = this.queue.filter((q) => q.sha256 !== item.sha256);
    this.#updateQueueCount();
    const name = workName(item);
    const said = stored.decision === "confirm"
      ? `Confirmed: ${name} stays catalogued as ${stored.label}.`
      : `Corrected: ${name} is reviewed as ${stored.label}.`;
    const left = this.el.reviewList.children.length;
    this.el.reviewStatus.textContent = `${said} ${left} ${left === 1 ? "work" : "works"} left to review.`;
    (next?.querySelector(".review-title") ?? this.el.reviewHeading).focus();
  }

  #open(work, opener, lead = "") {
    const label = displayLabel(work.label);
    this.viewer.open(
      {
        url: this.api.resolve(work.url || work.thumbnail_url),
        title: work.title || label || workName(work),
        caption: workCaption(work, label, lead),
        alt: workAlt(work, label || "Work"),
        permalink: work.permalink,
        licence: work.licence,
      },
      opener,
    );
  }

  // -- duplicates -----------------------------------------------------------------------------

  async #loadDuplicates(signal) {
    clearProblem(this.el.duplicatesError);
    let answer;
    try {
      answer = await this.api.duplicates({ signal });
    } catch (error) {
      if (error?.name === "AbortError") throw error;
      this.el.duplicatesList.replaceChildren();
      this.el.duplicatesCount.textContent = "";
      this.el.duplicatesEmpty.hidden = true;
      this.#sectionError(this.el.duplicatesError, error);
      return;
    }
    const groups = Array.isArray(answer.groups) ? answer.groups : [];
    this.el.duplicatesList.replaceChildren(...groups.map((g, i) => this.#duplicateGroup(g, i)));
    this.el.duplicatesCount.textContent = `(${groups.length})`;
    this.el.duplicatesEmpty.hidden = groups.length > 0;
  }

  #duplicateGroup(group, index) {
    const members = Array.isArray(group.members) ? group.members : [];
    const similarities = (group.pairs ?? []).map((p) => p.similarity).filter(Number.isFinite);
    const li = element("li", "duplicate-group");
    const headingId = `duplicates-group-${index + 1}`;
    const range = similarities.length
      ? ` · similarity ${Math.min(...similarities).toFixed(2)}${similarities.length > 1 &&
        Math.max(...similarities) !== Math.min(...similarities)
        ? `–${Math.max(...similarities).toFixed(2)}` : ""}`
      : "";
    const heading = element("p", "duplicate-group-title", `Group ${index + 1}: ${members.length} works${range}`);
    heading.id = headingId;
    const row = element("ul", "duplicate-members");
    row.setAttribute("aria-labelledby", headingId);
    for (const member of members) {
      const item = element("li", "duplicate-member");
      item.dataset.sha256 = member.sha256;
      if (member.key) item.dataset.key = member.key;
      const button = element("button", "duplicate-button");
      button.type = "button";
      const image = thumbnail(this.api, member, "duplicate-image");
      const caption = element("span", "duplicate-caption");
      caption.append(element("span", "duplicate-title", workName(member)));
      if (member.key) caption.append(hiddenText(", "), element("span", "duplicate-key", member.key));
      button.append(image, caption, hiddenText(", show larger"));
      button.addEventListener("click", () => this.#open(member, button, `Duplicate group ${index + 1}`));
      item.append(button);
      row.append(item);
    }
    li.append(heading, row);
    return li;
  }

  // -- intake reports -------------------------------------------------------------------------

  async #loadReports(signal) {
    clearProblem(this.el.reportsError);
    let answer;
    try {
      answer = await this.api.reports({ limit: REPORTS_LIMIT, signal });
    } catch (error) {
      if (error?.name === "AbortError") throw error;
      this.el.reportsList.replaceChildren();
      this.el.reportsEmpty.hidden = true;
      this.#sectionError(this.el.reportsError, error);
      return;
    }
    const listed = Array.isArray(answer.reports) ? answer.reports : [];
    this.el.reportsList.replaceChildren(...listed.map((r) => this.#reportButton(r)));
    this.el.reportsEmpty.hidden = listed.length > 0;
    if (this.selectedBatch && listed.some((r) => r.batch === this.selectedBatch)) {
      await this.#showReport(this.selectedBatch, { signal, moveFocus: false });
    } else {
      this.selectedBatch = null;
      this.el.reportDetail.hidden = true;
    }
  }

  #reportButton(listing) {
    const item = element("li", "report-listing");
    const button = element("button", "report-button");
    button.type = "button";
    button.dataset.batch = listing.batch;
    const parts = Number.isFinite(listing.parts) ? listing.parts : 0;
    button.append(
      element("span", "report-batch", listing.batch),
      hiddenText(", "),
      element("span", "report-when hint",
        `${parts} ${parts === 1 ? "part" : "parts"} · updated ${reportTime(listing.updated)}`),
    );
    button.addEventListener("click", () => this.#showReport(listing.batch, { moveFocus: true }));
    item.append(button);
    return item;
  }

  async #showReport(batch, { signal, moveFocus }) {
    clearProblem(this.el.reportsError);
    this.selectedBatch = batch;
    for (const button of this.el.reportsList.querySelectorAll(".report-button")) {
      if (button.dataset.batch === batch) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
    let report;
    try {
      report = await this.api.report(batch, { signal });
    } catch (error) {
      if (error?.name === "AbortError") throw error;
      this.el.reportDetail.hidden = true;
      this.#sectionError(this.el.reportsError, error);
      return;
    }
    if (this.selectedBatch !== batch) return;
    this.#renderReport(report);
    if (moveFocus) this.el.reportHeading.focus();
  }

  #renderReport(report) {
    const el = this.el;
    el.reportHeading.textContent = `Batch ${report.batch}`;
    el.reportMeta.textContent = [
      report.model_version ? `Model ${report.model_version}` : "",
      report.created_at ? `created ${isoTime(report.created_at)}` : "",
      `${(report.rows ?? []).length} files`,
    ].filter(Boolean).join(" · ");
    const counts = report.counts ?? {};
    el.reportCounts.replaceChildren(
      ...Object.entries(counts).flatMap(([name, value]) => {
        const wrap = element("div", "report-count");
        wrap.dataset.count = name;
        wrap.append(element("dt", "", COUNT_WORDS[name] ?? displayLabel(name.replace(/_/g, " "))),
          element("dd", "", String(value)));
        return [wrap];
      }),
    );
    if (this.csvUrl) URL.revokeObjectURL(this.csvUrl);
    this.csvUrl = URL.createObjectURL(
      new Blob([typeof report.csv === "string" ? report.csv : ""], { type: "text/csv;charset=utf-8" }),
    );
    el.reportCsv.href = this.csvUrl;
    el.reportCsv.download = `${report.batch}.csv`;
    el.reportCsv.replaceChildren("Download CSV", hiddenText(` of batch ${report.batch}`));

    const notable = notableRows(report.rows);
    el.notableEmpty.hidden = notable.length > 0;
    el.notableWrap.hidden = notable.length === 0;
    el.notableBody.replaceChildren(
      ...notable.map((row) => {
        const tr = element("tr");
        tr.dataset.status = row.status;
        if (row.sha256) tr.dataset.sha256 = row.sha256;
        const [outcome, details] = describeRow(row);
        tr.append(element("td", "report-file", row.original_name || row.file),
          element("td", "", outcome), element("td", "", details));
        return tr;
      }),
    );
    el.reportDetail.hidden = false;
  }
}
