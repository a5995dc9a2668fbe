// A larger view of one work, in a modal <dialog>: Esc closes it natively; focus goes back to
// whatever opened it.

export class Viewer {
  constructor({ dialog, image, title, caption, close }) {
    this.dialog = dialog;
    this.image = image;
    this.title = title;
    this.caption = caption;
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

  /** @param {{url: string, title: string, caption: string, alt: string}} work */
  open(work, opener) {
    this.opener = opener ?? document.activeElement;
    this.title.textContent = work.title;
    this.caption.textContent = work.caption;
    this.image.alt = work.alt;
    this.image.src = work.url;
    if (!this.dialog.open) this.dialog.showModal();
  }
}
