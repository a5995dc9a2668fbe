// Entry point: read config.json, wire the token field, the two views and the hash router.

import { AnalyzeView } from "./analyze.js";
import { ApiClient } from "./api.js";
import { loadConfig } from "./config.js";
import { MapView } from "./map.js";
import { TokenField } from "./token.js";
import { Viewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);

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
  const route = () => {
    const name = window.location.hash === "#map" ? "map" : "analyze";
    for (const section of sections) section.hidden = section.dataset.view !== name;
    for (const link of links) {
      if (link.dataset.view === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = name === "map" ? "Collection map — ArtLens" : "ArtLens — what kind of artwork is this?";
    views[name]?.show?.();
  };
  window.addEventListener("hashchange", route);
  route();
}

async function main() {
  const config = await loadConfig();
  const token = new TokenField({
    form: $("token-form"),
    input: $("token-input"),
    toggle: $("token-toggle"),
    clear: $("token-clear"),
    state: $("token-state"),
  });
  const api = new ApiClient(config, () => token.value);
  const viewer = new Viewer({
    dialog: $("viewer"),
    image: $("viewer-image"),
    title: $("viewer-title"),
    caption: $("viewer-caption"),
    close: $("viewer-close"),
  });
  const announce = makeAnnouncer($("announcer"));
  const shared = { api, token, viewer, announce };
  const views = { analyze: new AnalyzeView(shared), map: new MapView(shared) };
  startRouter(views);
  document.documentElement.dataset.ready = "true"; // lets tests wait for the wiring
}

main();
