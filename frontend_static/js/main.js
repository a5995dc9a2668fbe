// Entry point: read config.json, wire the token field, the two views and the hash router.

import { AnalyzeView } from "./analyze.js";
import { ApiClient, ApiError } from "./api.js";
import { loadConfig } from "./config.js";
import { MapView } from "./map.js";
import { readShared } from "./share.js";
import { TokenField } from "./token.js";
import { Viewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);

const VIEW_TITLES = {
  analyze: "ArtLens — what kind of artwork is this?",
  map: "Collection map — ArtLens",
  collection: "Collection care — ArtLens",
};

function makeAnnouncer(region) {
  let timer = 0;
  return (text) => {
    // Clearing first makes screen readers repeat an identical message.
    region.textContent = "";
    clearTimeout(timer);
    timer = setTimeout(() => {
      region.textContent = text;
    }, 50);
  };
}

function startRouter(views) {
  const links = [...document.querySelectorAll(".view-link")];
  const sections = [...document.querySelectorAll("section.view")];
  let current = null;
  const route = () => {
    const hash = window.location.hash.slice(1);
    // In-page links (the skip link, #main) are not views: the view on screen stays.
    const known = Object.hasOwn(VIEW_TITLES, hash);
    if (current && hash && !known) return;
    const name = known ? hash : "analyze";
    current = name;
    for (const section of sections) section.hidden = section.dataset.view !== name;
    for (const link of links) {
      if (link.dataset.view === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = VIEW_TITLES[name];
    for (const [other, view] of Object.entries(views)) if (other !== name) view.hide?.();
    views[name]?.show?.();
  };
  window.addEventListener("hashchange", route);
  route();
}

/** A view whose module is fetched the first time it is shown: the curators' view is not
 * needed to analyze a picture, so the page does not download it up front. */
function lazyView(load) {
  let view = null;
  let loading = null;
  let visible = false;
  return {
    show() {
      visible = true;
      if (view) view.show();
      else {
        loading ??= load().then(
          (made) => {
            view = made;
            if (visible) made.show();
          },
          (error) => {
            loading = null; // showing the view again tries again
            throw error;
          },
        );
      }
    },
    hide() {
      visible = false;
      view?.hide?.();
    },
    get view() {
      return view;
    },
  };
}

/** Check a token with the cheapest authenticated call the API has. */
async function checkToken(api, token, signal) {
  const refused = (error) => error instanceof ApiError && (error.status === 401 || error.status === 403);
  try {
    const me = await api.whoami(token, { signal });
    return {
      verdict: "ok",
      sub: typeof me.sub === "string" ? me.sub : "",
      expiresAt: Number.isFinite(me.expires_at) ? me.expires_at : null,
    };
  } catch (error) {
    if (refused(error)) return { verdict: "refused" };
    if (!(error instanceof ApiError) || !error.routeMissing) throw error;
  }
  // An API without /whoami: a one-work map is the next cheapest authenticated answer.
  try {
    await api.collectionMap({ limit: 1, signal, token });
    return { verdict: "ok" };
  } catch (error) {
    if (refused(error)) return { verdict: "refused" };
    if (error instanceof ApiError) {
      return { verdict: "unknown", detail: error.message };
    }
    throw error;
  }
}

async function main() {
  const config = await loadConfig();
  let api = null;
  const token = new TokenField(
    {
      form: $("token-form"),
      input: $("token-input"),
      toggle: $("token-toggle"),
      clear: $("token-clear"),
      state: $("token-state"),
    },
    (value, signal) => checkToken(api, value, signal),
  );
  api = new ApiClient(config, () => token.value);
  const viewer = new Viewer({
    dialog: $("viewer"),
    image: $("viewer-image"),
    title: $("viewer-title"),
    caption: $("viewer-caption"),
    close: $("viewer-close"),
    permalink: $("viewer-permalink"),
  });
  const announce = makeAnnouncer($("announcer"));
  const shared = { api, token, viewer, announce };
  const map = new MapView(shared);
  const analyze = new AnalyzeView({ ...shared, onResult: (answer) => map.setQuery(answer) });
  const collection = lazyView(() =>
    import("./curation.js").then(({ CurationView }) => new CurationView(shared)),
  );
  startRouter({ analyze, map, collection });
  analyze.restoreShared(readShared());
  // The components, for the browser console and the page tests (no other use).
  window.artlens = Object.freeze({ analyze, map, collection, token });
  document.documentElement.dataset.ready = "true"; // lets tests wait for the wiring
}

main();
