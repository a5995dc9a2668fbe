// A larger view of one work, in a modal <dialog>: Esc closes it natively; focus goes back to
// whatever opened it.

export class Viewer {
  constructor({ dialog, image, title, caption, close, permalink }) {
    this.dialog = dialog;
    this.image = image;
    this.title = title;
    this.caption = caption;
    this.permalink = permalink;
    this.opener = null;
    close.addEventListener("click", () => this.dialog.close());
    // A click on the backdrop lands on the <dialog> itself, outside its content box.
    dialog.addEventListener("click", (event) => {
      if (event.target !== dialog) return;
      const box = dialog.getBoundingClientRect();
      const inside =
        event.clientX >= box.left && event.clientX <= box.right &&
        event.clientY >= box.top && event.clientY <= box.bottom;
      if (!inside) dialog.close();
    });
    dialog.addEventListener("close", () => {
      this.image.removeAttribute("src");
      if (this.opener && this.opener.isConnected) this.opener.focus();
      this.opener = null;
    });
  }

  /** @param {{url: string, title: string, caption: string, alt: string, permalink?: string,
   *            licence?: string}} work */
  open(work, opener) {
    this.opener = opener ?? document.activeElement;
    this.title.textContent = work.title;
    this.caption.textContent = work.caption;
    // The museum's own page of the work, when its record gives one (http(s) only).
    const link = safeLink(work.permalink);
    if (this.permalink) {
      this.permalink.hidden = !link && !work.licence;
      const anchor = this.permalink.querySelector("a");
      anchor.hidden = !link;
      if (link) anchor.href = work.permalink;
      else anchor.removeAttribute("href");
      this.permalink.querySelector("[data-licence]").textContent = work.licence
        ? `${link ? " · " : ""}Licence: ${work.licence}`
        : "";
    }
    this.image.alt = work.alt;
    this.image.src = work.url;
    if (!this.dialog.open) this.dialog.showModal();
  }
}

/** Only http(s) links from a record become links (never javascript: or data:). */
export function safeLink(url) {
  return typeof url === "string" && /^https?:\/\//i.test(url);
}

/** "Title by Maker, date" (or the type) for an image's alt text. */
export function workAlt(work, label) {
  const by = [work.maker, work.date].filter(Boolean).join(", ");
  return `${work.title || label}${by ? ` by ${by}` : ""}, from the collection`;
}

/** The larger view's caption: what the work's record says, its file name when it has no
 * title, and its key (what the collection calls it). */
export function workCaption(work, label, lead = "") {
  const catalogued = work.catalogued_type && work.catalogued_type !== work.label
    ? `catalogued as ${work.catalogued_type}`
    : "";
  return [lead, label, work.maker, work.date, work.inventory_number, catalogued,
    work.title ? "" : work.original_name, work.key].filter(Boolean).join(" · ");
}
