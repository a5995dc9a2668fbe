"""python -m training.duplicates: the near-duplicate thresholds a card's `serving.duplicates`
holds, calibrated on user-style copies of held-out pictures.

Serving (artlens.duplicates) calls a neighbour a near duplicate when the embeddings' cosine
similarity is at least `min_similarity` AND the perceptual hashes (64-bit dHash of the model's
input array) differ in at most `max_hamming` bits; "related" when the similarity is at least
`related_min_similarity` otherwise. This module measures, with the model itself:

- copies: each held-out (grouped test split) picture re-made by evaluate.user_copy, the copy the
  card's copy recall@1 is measured on (crop 3-10 % per side, rescale, brighter, JPEG): its
  similarity and hash distance to its original;
- distinct works: for each original, the most similar OTHER rows among test + training pictures
  (one row per near-duplicate group, so every other row is another work): their similarity and
  hash distance, and whether the nearest one shares the type.

min_similarity and max_hamming: among the bound pairs that flag a distinct work for at most
MAX_FALSE_FLAG_RATE of the originals, the one flagging TARGET_COPY_FLAG_RATE of the copies with
the fewest false flags, or, where no pair reaches that target, the one flagging the most copies
(choose_thresholds; the card's basis says which, and the trade-off table shows the rest).
related_min_similarity comes from the nearest-distinct distribution (see choose_related). A
re-encoded copy (rescaled + JPEG, no crop) of each picture is measured too, as a check.
Pictures are decoded and resized exactly as serving does (artlens.image at the card's input size),
so the hashes are the ones serving computes.

The threshold choice is plain numpy (tested on synthetic numbers); measuring needs the ONNX file,
onnxruntime and the data, no TensorFlow. The training job (training/v2.py) calls
`calibrate_arrays` with the embeddings its evaluation already has, so `make train` writes the
same block.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

TARGET_COPY_FLAG_RATE = 0.99
# "already in the collection" is a statement the page makes plainly: at most this share of works
# that are NOT in the collection may be told they are (see choose_thresholds)
MAX_FALSE_FLAG_RATE = 0.01
NEIGHBOURS = 10  # distinct works checked per original, most similar first
CLOSEST_LISTED = 8  # closest distinct pairs the card lists by name
PERCENTILES = (0.5, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5)
# "related" must mean "a neighbour of the same kind": the lowest similarity above which the
# nearest distinct works share the query's type at least this often ...
RELATED_TYPE_AGREEMENT = 0.9
# ... and no lower than this percentile of the nearest-distinct similarity, so that "related" is
# the exception a curator looks at, not a label on most neighbours
RELATED_PERCENTILE = 95.0


# --- measurement --------------------------------------------------------------------------


def hashes_of(pixels_u8: np.ndarray) -> np.ndarray:
    """artlens.duplicates.perceptual_hash of each uint8 picture [N,S,S,3] in the float [0, 1] form
    serving feeds the model (artlens.image.scale), as signed 64-bit integers."""
    from artlens.duplicates import perceptual_hash
    from artlens.image import scale

    return np.array([perceptual_hash(scale(p)) for p in pixels_u8], dtype=np.int64)


def hamming_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between int64 hashes, elementwise with numpy broadcasting
    (the same count as artlens.duplicates.hamming)."""
    x = np.asarray(a, dtype=np.int64).view(np.uint64) ^ np.asarray(b, dtype=np.int64).view(
        np.uint64
    )
    return np.bitwise_count(x).astype(np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _top_others(sims: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar columns per row, most similar first, never `exclude[i]`."""
    sims = sims.copy()
    sims[np.arange(len(sims)), exclude] = -np.inf
    k = min(k, sims.shape[1] - 1)
    top = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def measure(
    gallery_emb: np.ndarray,
    gallery_hash: np.ndarray,
    gallery_y: np.ndarray,
    originals: np.ndarray,
    copy_emb: np.ndarray,
    copy_hash: np.ndarray,
    copy_of: np.ndarray,
    k: int = NEIGHBOURS,
) -> dict:
    """Similarities and hash distances of copies and of distinct works.

    gallery_*: every picture (test + training), one row per distinct work; `originals`: the gallery
    rows of the held-out pictures that were copied; copy_of[j]: the gallery row copy j was made
    from. Returns arrays: copy_sim/copy_ham [M]; distinct_sim/distinct_ham [n, k] (each original's
    k most similar other works, most similar first) and distinct_same_type [n] (nearest one);
    copy_other_sim/copy_other_ham [M, k] (each copy's most similar works other than its original:
    what a user's copy could be mistaken for).
    """
    g = _unit(gallery_emb)
    c = _unit(copy_emb)
    gallery_hash = np.asarray(gallery_hash, np.int64)
    originals = np.asarray(originals, int)
    copy_of = np.asarray(copy_of, int)
    copy_sim = np.einsum("ij,ij->i", c, g[copy_of])
    copy_ham = hamming_between(np.asarray(copy_hash, np.int64), gallery_hash[copy_of])

    o_sims = g[originals] @ g.T
    o_top = _top_others(o_sims, originals, k)
    distinct_sim = np.take_along_axis(o_sims, o_top, axis=1)
    distinct_ham = hamming_between(gallery_hash[originals][:, None], gallery_hash[o_top])
    same_type = np.asarray(gallery_y)[o_top[:, 0]] == np.asarray(gallery_y)[originals]

    c_sims = c @ g.T
    c_top = _top_others(c_sims, copy_of, k)
    copy_other_sim = np.take_along_axis(c_sims, c_top, axis=1)
    copy_other_ham = hamming_between(np.asarray(copy_hash, np.int64)[:, None], gallery_hash[c_top])
    return {
        "copy_sim": copy_sim,
        "copy_ham": copy_ham,
        "distinct_sim": distinct_sim,
        "distinct_ham": distinct_ham,
        "distinct_same_type": same_type,
        "distinct_index": o_top,
        "copy_other_sim": copy_other_sim,
        "copy_other_ham": copy_other_ham,
    }


# --- the choice ---------------------------------------------------------------------------


def flag_rate(sim: np.ndarray, ham: np.ndarray, min_similarity: float, max_hamming: int) -> float:
    """Fraction of rows flagged as near duplicates. 2-D arrays ([n, k] neighbours per query)
    count a row once when ANY of its neighbours is flagged."""
    flagged = (np.asarray(sim) >= min_similarity) & (np.asarray(ham) <= max_hamming)
    if flagged.ndim == 2:
        flagged = flagged.any(axis=1)
    return float(flagged.mean()) if flagged.size else 0.0


def _operating_points(copy_sim, copy_ham, d_sim, d_ham):
    """Every useful (max_hamming, min_similarity) pair: for each hash bound h, each similarity
    of a copy within h bits. Returns arrays h, s, copy flag rate, distinct false-flag rate."""
    n, rows = len(copy_sim), len(d_sim)
    hs, ss, crs, frs = [], [], [], []
    for h in range(65):
        within = np.sort(copy_sim[copy_ham <= h])[::-1]
        if not len(within):
            continue
        # a row is falsely flagged at (s, h) when its most similar neighbour within h bits
        # reaches s
        row_max = np.sort(np.where(d_ham <= h, d_sim, -np.inf).max(axis=1))
        cand = np.unique(within)[::-1]
        flagged = len(within) - np.searchsorted(within[::-1], cand, side="left")
        false = rows - np.searchsorted(row_max, cand, side="left")
        hs.append(np.full(len(cand), h))
        ss.append(cand)
        crs.append(flagged / n)
        frs.append(false / rows)
    return tuple(np.concatenate(x) for x in (hs, ss, crs, frs))


def _margin(d_sim, d_ham, s: float, h: int) -> float:
    """How close the distinct works come to the flagged region: per unflagged pair what it misses
    by in similarity plus in hash bits (per 64); the smallest over all pairs."""
    outside = ~((d_sim >= s) & (d_ham <= h))
    gap = np.maximum(s - d_sim, 0) + np.maximum(d_ham - h, 0) / 64.0
    return float(gap[outside].min()) if outside.any() else 0.0


def choose_thresholds(
    copy_sim: np.ndarray,
    copy_ham: np.ndarray,
    distinct_sim: np.ndarray,
    distinct_ham: np.ndarray,
    target: float = TARGET_COPY_FLAG_RATE,
    max_false: float = MAX_FALSE_FLAG_RATE,
) -> dict:
    """(min_similarity, max_hamming) for serving's near-duplicate test.

    Every (h, s) pair is measured: the share of copies flagged (similarity >= s and hash distance
    <= h) and the share of originals with a distinct work flagged (the false-flag rate). Among
    the pairs whose false-flag rate is at most `max_false`:
    - when some flag at least `target` of the copies, the one flagging fewest distinct works wins
      (then the widest margin between the distinct works and the flagged region);
    - otherwise the one flagging the most copies wins, and `target_met` is False: a copy that
      looks no closer to its original than other works do cannot be called a duplicate without
      calling those works duplicates too.
    min_similarity is then rounded to 0.01: down when that keeps the false-flag rate within
    `max_false`, else up; both rates are measured again at the rounded value. `tradeoff` lists
    the best copy flag rate reachable at several false-flag rates.
    """
    copy_sim = np.asarray(copy_sim, float)
    copy_ham = np.asarray(copy_ham, int)
    d_sim = np.asarray(distinct_sim, float).reshape(len(distinct_sim), -1)  # 1-D -> [n, 1]
    d_ham = np.asarray(distinct_ham, int).reshape(len(distinct_ham), -1)
    if len(copy_sim) == 0 or len(d_sim) == 0:
        raise ValueError("no copies or no distinct works to calibrate on")
    h, s, copy_rate, false = _operating_points(copy_sim, copy_ham, d_sim, d_ham)
    ok = false <= max_false
    reach = ok & (copy_rate >= target)
    if reach.any():
        idx = np.nonzero(reach)[0]
        idx = idx[false[idx] == false[idx].min()]
        # per hash bound, the highest similarity bound still reaching the target
        best_per_h = {}
        for i in idx:
            if h[i] not in best_per_h or s[i] > s[best_per_h[h[i]]]:
                best_per_h[h[i]] = i
        best = max(best_per_h.values(), key=lambda i: _margin(d_sim, d_ham, s[i], h[i]))
    elif ok.any():
        idx = np.nonzero(ok)[0]
        best = min(idx, key=lambda i: (-copy_rate[i], false[i], -s[i]))
    else:  # unreachable: s above every similarity always flags nothing
        best = int(np.argmin(false))
    hb, sb = int(h[best]), float(s[best])
    down = math.floor(sb * 100 + 1e-9) / 100
    rounded = down if flag_rate(d_sim, d_ham, down, hb) <= max_false else math.ceil(sb * 100) / 100
    tradeoff = []
    for f in (0.0, 0.005, 0.01, 0.02, 0.05, 0.1):
        sel = np.nonzero(false <= f)[0]
        if len(sel):
            i = min(sel, key=lambda i: (-copy_rate[i], false[i], -s[i]))
            tradeoff.append(
                {
                    "max_false_flag_rate": f,
                    "copy_flag_rate": round(float(copy_rate[i]), 4),
                    "min_similarity": round(float(s[i]), 4),
                    "max_hamming": int(h[i]),
                }
            )
    final_copy = flag_rate(copy_sim, copy_ham, rounded, hb)
    return {
        "min_similarity": rounded,
        "max_hamming": hb,
        "copy_flag_rate": final_copy,
        "distinct_false_flag_rate": flag_rate(d_sim, d_ham, rounded, hb),
        "target_copy_flag_rate": target,
        "max_false_flag_rate": max_false,
        "target_met": bool(final_copy >= target),
        "unrounded_min_similarity": sb,
        "margin": _margin(d_sim, d_ham, rounded, hb),
        "tradeoff": tradeoff,
    }


def choose_related(
    nearest_sim: np.ndarray,
    nearest_same_type: np.ndarray,
    agreement: float = RELATED_TYPE_AGREEMENT,
    percentile: float = RELATED_PERCENTILE,
) -> dict:
    """related_min_similarity from each original's nearest distinct work: the higher of
    (a) the `percentile` of its similarity (related stays the exception) and (b) the lowest
    similarity above which those nearest works share the type at least `agreement` of the time
    (related means kin, not a coincidence), rounded up to 0.01."""
    sim = np.asarray(nearest_sim, float)
    same = np.asarray(nearest_same_type, bool)
    p = float(np.percentile(sim, percentile))
    order = np.argsort(-sim)
    # type agreement of the j most similar nearest pairs, for every j
    running = np.cumsum(same[order]) / np.arange(1, len(sim) + 1)
    ok = np.nonzero(running >= agreement)[0]
    # the largest such set whose agreement holds: its least similar pair is the bound
    agree_at = float(sim[order][ok.max()]) if len(ok) else float(sim.max())
    # rounded up: both properties still hold at the card's value
    value = math.ceil(max(p, agree_at) * 100 - 1e-9) / 100
    above = sim >= value
    return {
        "related_min_similarity": value,
        "percentile": percentile,
        "percentile_value": p,
        "type_agreement_bound": agree_at,
        "type_agreement_above": float(same[above].mean()) if above.any() else None,
        "share_of_originals_with_related": float(above.mean()),
        "overall_type_agreement": float(same.mean()),
    }


def related_text(r: dict) -> str:
    """Why related_min_similarity is what it is, in a sentence with the numbers."""
    by_percentile = r["percentile_value"] >= r["type_agreement_bound"]
    why = (
        f"the {r['percentile']:g}th percentile of the nearest-other-work similarity "
        f"({r['percentile_value']:.3f}), rounded up; the nearest other work shares the type "
        f"{r['overall_type_agreement']:.1%} of the time overall, so the >= "
        f"{RELATED_TYPE_AGREEMENT:.0%} type-agreement bound ({r['type_agreement_bound']:.3f}) "
        "is lower"
        if by_percentile
        else f"where the nearest other works start to share the type >= "
        f"{RELATED_TYPE_AGREEMENT:.0%} of the time ({r['type_agreement_bound']:.3f}), rounded "
        f"up; above the {r['percentile']:g}th percentile of the nearest-other-work similarity "
        f"({r['percentile_value']:.3f})"
    )
    agree = r["type_agreement_above"]
    return (
        f"related_min_similarity {r['related_min_similarity']:.2f} is {why}: "
        f"{r['share_of_originals_with_related']:.1%} of the works have a related neighbour"
        + (f", of the same type {agree:.1%} of the time." if agree is not None else ".")
    )


def percentiles(x: np.ndarray) -> dict:
    x = np.asarray(x, float).ravel()
    return {f"p{q:g}": round(float(np.percentile(x, q)), 4) for q in PERCENTILES}


def _rounded(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def calibrate(
    m: dict,
    target: float = TARGET_COPY_FLAG_RATE,
    max_false: float = MAX_FALSE_FLAG_RATE,
    note: str = "",
    checks: dict | None = None,
    names: list[str] | None = None,
) -> dict:
    """The card's serving.duplicates block from `measure`'s arrays. `checks`: other copy families
    {name: (similarity, hamming)} whose flag rate at the chosen bounds is reported (not fitted).
    `names`: the gallery rows' file names, to list the closest distinct pairs."""
    t = choose_thresholds(
        m["copy_sim"], m["copy_ham"], m["distinct_sim"], m["distinct_ham"], target, max_false
    )
    s, h = t["min_similarity"], t["max_hamming"]
    nearest_sim = m["distinct_sim"][:, 0]
    nearest_ham = m["distinct_ham"][:, 0]
    r = choose_related(nearest_sim, m["distinct_same_type"])
    copy_side_false = flag_rate(m["copy_other_sim"], m["copy_other_ham"], s, h)
    n_orig = len(m["distinct_sim"])
    measured = {
        "copies": int(len(m["copy_sim"])),
        "originals": int(n_orig),
        "copy_flag_rate": round(t["copy_flag_rate"], 4),
        "copy_misses": int(round((1 - t["copy_flag_rate"]) * len(m["copy_sim"]))),
        "target_copy_flag_rate": target,
        "target_met": t["target_met"],
        "distinct_pairs": int(m["distinct_sim"].size),
        "distinct_neighbours_per_original": int(m["distinct_sim"].shape[1]),
        "distinct_false_flag_rate": round(t["distinct_false_flag_rate"], 4),
        "max_false_flag_rate": max_false,
        "copy_to_other_work_false_flag_rate": round(copy_side_false, 4),
        "copy_similarity": percentiles(m["copy_sim"]),
        "copy_hamming": percentiles(m["copy_ham"]),
        "nearest_distinct_similarity": percentiles(nearest_sim),
        "nearest_distinct_hamming": percentiles(nearest_ham),
        "nearest_distinct_same_type": round(r["overall_type_agreement"], 4),
        "unrounded_min_similarity": round(t["unrounded_min_similarity"], 4),
        "tradeoff": t["tradeoff"],
        "related": _rounded({k: v for k, v in r.items() if k != "related_min_similarity"}),
    }
    if names is not None:
        # for a person to look at: the same work in two groups, or kin?
        closest = np.argsort(-nearest_sim)[:CLOSEST_LISTED]
        measured["closest_distinct_pairs"] = [
            {
                "similarity": round(float(nearest_sim[i]), 4),
                "hamming": int(nearest_ham[i]),
                "files": [names[i], names[int(m["distinct_index"][i, 0])]],
            }
            for i in closest
        ]
    for name, (c_sim, c_ham) in (checks or {}).items():
        measured[name] = {
            "copies": int(len(c_sim)),
            "flag_rate": round(flag_rate(c_sim, c_ham, s, h), 4),
            "similarity": percentiles(c_sim),
            "hamming": percentiles(c_ham),
        }
    ms, mh = measured["copy_similarity"], measured["copy_hamming"]
    ns, nh = measured["nearest_distinct_similarity"], measured["nearest_distinct_hamming"]
    at_target = next(
        (p for p in reversed(t["tradeoff"]) if p["copy_flag_rate"] >= target), None
    )
    if t["target_met"]:
        choice = (
            f"flag {t['copy_flag_rate']:.2%} of the copies (target {target:.0%}) while "
            f"{t['distinct_false_flag_rate']:.2%} of the originals have one of their "
            f"{measured['distinct_neighbours_per_original']} most similar other works flagged"
        )
    else:
        best = t["tradeoff"][-1]
        choice = (
            f"are the pair flagging the most copies while at most {max_false:.0%} of the "
            f"originals have one of their {measured['distinct_neighbours_per_original']} most "
            f"similar other works flagged: {t['copy_flag_rate']:.1%} of the copies are flagged, "
            f"{t['distinct_false_flag_rate']:.2%} of the originals falsely. The {target:.0%} "
            "target is out of reach for this model: "
            + (
                f"reaching it flags {at_target['max_false_flag_rate']:.0%}"
                if at_target
                else f"even allowing {best['max_false_flag_rate']:.0%} false flags only "
                f"{best['copy_flag_rate']:.1%} of the copies are flagged"
            )
            + f": the copies cropped most are no closer to their originals than the closest "
            f"distinct works are to each other (copy similarity p10 {ms['p10']:.3f} against "
            f"the nearest other work's p90 {ns['p90']:.3f}; copy dHash p90 {mh['p90']:.0f} "
            f"bits against the nearest other work's p10 {nh['p10']:.0f})"
            + (" - the closest distinct pairs are listed in measured.closest_distinct_pairs"
               if names is not None else "")
        )
    extra = "".join(
        f"; {name.replace('_', ' ')} (rescaled and re-encoded only): {c['flag_rate']:.1%} of "
        f"{c['copies']} flagged (similarity p1 {c['similarity']['p1']:.3f}, dHash p99 "
        f"{c['hamming']['p99']:.0f} bits)"
        for name, c in ((n, measured[n]) for n in (checks or {}))
    )
    basis = (
        f"Calibrated on {measured['copies']} user-style copies (evaluate.user_copy: crop 3-10 % "
        f"per side, rescale to 160-480 px, 5-20 % brighter, JPEG q60-85; the copy family of the "
        f"card's copy recall@1) of {n_orig} held-out pictures of the grouped test split{note}. "
        f"Copy to original: cosine similarity p1 {ms['p1']:.3f}, p50 {ms['p50']:.3f}; dHash "
        f"distance p50 {mh['p50']:.0f}, p99 {mh['p99']:.0f} bits. Each original to its most "
        f"similar other work: similarity p50 {ns['p50']:.3f}, p99 {ns['p99']:.3f}, max "
        f"{float(nearest_sim.max()):.3f}; dHash p1 {nh['p1']:.0f}, p50 {nh['p50']:.0f} bits. "
        f"min_similarity {s:.2f} with max_hamming {h} {choice}; a copy is mistaken for another "
        f"work {copy_side_false:.2%} of the time{extra}. {related_text(r)}"
    )
    return {
        "min_similarity": s,
        "max_hamming": int(h),
        "related_min_similarity": r["related_min_similarity"],
        "basis": basis,
        "measured": measured,
    }


def format_table(block: dict) -> str:
    m = block["measured"]
    rows = [
        f"copies {m['copies']} of {m['originals']} held-out pictures; "
        f"{m['distinct_pairs']} distinct pairs ({m['distinct_neighbours_per_original']} per "
        "original)",
        f"{'percentile':<29}" + "".join(f"{k:>8}" for k in m["copy_similarity"]),
    ]
    for name in ("copy_similarity", "nearest_distinct_similarity", "copy_hamming",
                 "nearest_distinct_hamming"):
        rows.append(f"{name:<29}" + "".join(f"{v:>8.3f}" for v in m[name].values()))
    rows.append("best copy flag rate at a false-flag rate of at most:")
    for p in m["tradeoff"]:
        rows.append(
            f"  {p['max_false_flag_rate']:>6.1%}: {p['copy_flag_rate']:>7.2%} "
            f"(min_similarity {p['min_similarity']:.3f}, max_hamming {p['max_hamming']})"
        )
    rows.append(
        f"chosen: min_similarity {block['min_similarity']:.2f}  max_hamming "
        f"{block['max_hamming']}  related_min_similarity {block['related_min_similarity']:.2f}"
    )
    rows.append(
        f"copies flagged {m['copy_flag_rate']:.2%} ({m['copy_misses']} missed; target "
        f"{m['target_copy_flag_rate']:.0%} {'met' if m['target_met'] else 'NOT met'}); originals "
        f"with a distinct work flagged {m['distinct_false_flag_rate']:.2%}; copies with another "
        f"work flagged {m['copy_to_other_work_false_flag_rate']:.2%}"
    )
    for name, v in m.items():
        if isinstance(v, dict) and "flag_rate" in v:
            rows.append(f"{name}: {v['flag_rate']:.2%} of {v['copies']} flagged")
    return "\n".join(rows)


# --- the command --------------------------------------------------------------------------


def reencoded_copy(data: bytes, seed: int) -> bytes:
    """The mildest near duplicate, for a check beside the user copies: the picture rescaled
    (long side 160-480 px) and re-encoded as JPEG (q 60-85), no crop, no brightness change;
    the same draws as evaluate.user_copy makes for those two steps."""
    import io

    from PIL import Image

    from artlens.image import load_image

    rng = np.random.default_rng(seed)
    img = load_image(data, max_bytes=len(data) + 1).rgb
    rng.uniform(0.03, 0.10, 4)  # user_copy's crop draws: keep the size and quality draws equal
    s = int(rng.integers(160, 481)) / max(img.size)
    img = img.resize(
        (max(8, round(img.size[0] * s)), max(8, round(img.size[1] * s))),
        Image.Resampling.BICUBIC,
    )
    rng.uniform(1.05, 1.2)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(60, 86)))
    return buf.getvalue()


def reencoded_copies(root: Path, paths: list[str], rows: np.ndarray, size: int) -> np.ndarray:
    """reencoded_copy of each row's file, decoded as an upload is, at the model's input size."""
    from artlens.image import load_image
    from training.data import resize_to

    return np.stack(
        [
            resize_to(
                load_image(reencoded_copy((Path(root) / paths[i]).read_bytes(), int(i)),
                           size=size).rgb,
                size,
            )
            for i in rows
        ]
    )


def calibrate_arrays(
    onnx_path: Path,
    gallery_emb: np.ndarray,
    gallery_px: np.ndarray,
    gallery_y: np.ndarray,
    n_originals: int,
    copy_emb: np.ndarray,
    copy_px: np.ndarray,
    copy_of: np.ndarray,
    reencoded_px: np.ndarray | None = None,
    note: str = "",
    threads: int = 2,
    target: float = TARGET_COPY_FLAG_RATE,
    max_false: float = MAX_FALSE_FLAG_RATE,
    names: list[str] | None = None,
) -> tuple[dict, dict]:
    """measure + calibrate from embeddings a caller already has (the training job's evaluation):
    gallery = the held-out originals first (rows 0..n_originals-1), then the training pictures.
    Returns (the card block, measure's arrays)."""
    from training.v2 import onnx_run

    g_hash = hashes_of(gallery_px)
    m = measure(gallery_emb, g_hash, gallery_y, np.arange(n_originals), copy_emb,
                hashes_of(copy_px), copy_of)
    checks = {}
    if reencoded_px is not None:
        _, r_emb = onnx_run(onnx_path, reencoded_px, threads=threads)
        r_of = np.arange(len(reencoded_px))
        r_sim = np.einsum("ij,ij->i", _unit(r_emb), _unit(gallery_emb[r_of]))
        checks["reencoded_copies"] = (r_sim, hamming_between(hashes_of(reencoded_px), g_hash[r_of]))
    return calibrate(m, target, max_false, note=note, checks=checks, names=names), m


def measure_card(card_path: Path, data: Path, cache_dir: Path | None, limit: int | None,
                 copies: int, threads: int = 2, target: float = TARGET_COPY_FLAG_RATE,
                 max_false: float = MAX_FALSE_FLAG_RATE,
                 labels: list[Path] | None = None) -> tuple[dict, dict, dict]:
    """Calibrate a shipped model on its own grouped test split (same rows, test fraction and
    seed as the run that trained it). Returns (card block, measure's arrays, context)."""
    from training import data as data_mod
    from training import evaluate as ev
    from training import v2

    card = json.loads(Path(card_path).read_text())
    size = int(card["input"]["shape"][1])
    onnx_path = Path(card_path).with_name(card["onnx_file"])
    training = card.get("training", {})
    seed = int(training.get("seed", 0))
    fraction = float(card.get("metrics", {}).get("test_split", {}).get("fraction", 0.15))
    pool = data_mod.load_pool(data, cache_dir=cache_dir, progress=False, size=size, labels=labels)
    expected = training.get("data", {}).get("checksum")
    if expected and expected != pool.report["data_checksum"]:
        print(f"warning: {data} is not the data the card was trained on "
              f"({pool.report['data_checksum']} != {expected})", file=sys.stderr)
    rows_main = v2.main_rows(pool.labels, len(pool.classes), training.get("per_class_limit"),
                             seed)
    px, y = pool.pixels[rows_main], pool.labels[rows_main]
    paths = [pool.paths[i] for i in rows_main]
    train_idx, test_idx = data_mod.stratified_split(y, fraction, seed)
    if limit and limit < len(test_idx):
        test_idx = np.sort(np.random.default_rng(seed).permutation(test_idx)[:limit])
    gallery = np.concatenate([test_idx, np.sort(train_idx)])  # test row i is gallery row i
    t0 = time.perf_counter()
    copy_px = np.concatenate(
        [v2.copies_of(data, paths, test_idx, size, seed_offset=r * ev.COPY_SEED_STRIDE)
         for r in range(copies)]
    )
    copy_of = np.tile(np.arange(len(test_idx)), copies)
    _, g_emb = v2.onnx_run(onnx_path, px[gallery], threads=threads)
    _, c_emb = v2.onnx_run(onnx_path, copy_px, threads=threads)
    block, m = calibrate_arrays(
        onnx_path, g_emb, px[gallery], y[gallery], len(test_idx), c_emb, copy_px, copy_of,
        reencoded_px=reencoded_copies(data, paths, test_idx, size),
        note=f" ({copies} copies each; gallery of {len(gallery)} test + training pictures; "
        f"model {card['version']})",
        threads=threads,
        target=target,
        max_false=max_false,
        names=[paths[i] for i in gallery],
    )
    context = {"card": card, "seconds": time.perf_counter() - t0,
               "names": [paths[i] for i in gallery]}
    return block, m, context


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.duplicates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--card", type=Path, default=Path("models/artlens.json"))
    p.add_argument("--data", type=Path, required=True, help="the data the card was trained on")
    p.add_argument("--cache-dir", type=Path, default=Path(".artlens/cache"))
    p.add_argument("--labels", action="append", type=Path, default=[], metavar="FILE",
                   help="the curator labels the card was trained with (as python -m training)")
    p.add_argument("--limit", type=int, default=None,
                   help="held-out pictures to copy (default: the whole test split)")
    p.add_argument("--copies", type=int, default=2,
                   help="copies per picture; the first is the card's copy recall@1 copy")
    p.add_argument("--target", type=float, default=TARGET_COPY_FLAG_RATE,
                   help="share of the copies to flag")
    p.add_argument("--max-false", type=float, default=MAX_FALSE_FLAG_RATE,
                   help="at most this share of originals may have another work flagged")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true",
                   help="store the block in the card's serving.duplicates (restamps the ONNX)")
    p.add_argument("--show", type=int, default=5, help="list this many closest distinct pairs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    block, m, ctx = measure_card(args.card, args.data, args.cache_dir, args.limit, args.copies,
                                 args.threads, args.target, args.max_false, args.labels)
    print(format_table(block))
    print(f"measured in {ctx['seconds']:.0f} s; closest distinct pairs (look: the same work in "
          "two groups, or kin?):")
    nearest = m["distinct_sim"][:, 0]
    for i in np.argsort(-nearest)[: args.show]:
        j = m["distinct_index"][i, 0]
        print(f"  {nearest[i]:.3f} {m['distinct_ham'][i, 0]:>2} bits  {ctx['names'][i]}  ~  "
              f"{ctx['names'][j]}")
    print(block["basis"])
    if args.write:
        from training.export import restamp_card, validate_card

        card = json.loads(args.card.read_text())
        serving = dict(card.get("serving") or {}) | {"duplicates": block}
        restamp_card(args.card, {"serving": serving})
        validate_card(args.card)
        print(f"wrote serving.duplicates into {args.card} (ONNX metadata restamped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
