"""Finding, decoding, cleaning and splitting the training data.

Layouts accepted (classes are folder names, sorted; any number >= 2):
  <root>/<class>/<file>
  <root>/<split>/<class>/<file>
  <root>/{dataset,musemart}/dataset_updated/{training_set,validation_set}/<class>/<file>  (Kaggle)
Every file's class is the name of the folder that holds it, so the Kaggle layout's two copies and
two splits merge into ONE pool; the pool is deduplicated and then re-split by duplicate group.

Near duplicates: 64-bit perceptual hash (DCT pHash, imagehash). Two pictures are the same work
when their pHashes differ in at most NEAR_DUPLICATE_BITS bits. At 6 bits (of 64), re-encoded,
resized and lightly re-cropped copies collapse, while distinct works - even Doré plates on the
same paper - stay apart (checked on ../shared/datasets/art; see the cleaning report).

Curator labels (`python -m training --labels FILE`, the CSV `make export-labels` writes:
file,sha256,label,decision,reviewer,decided_at,model_version,catalogued_type) join the listing
before anything is decoded, so every config sees them and they go through the same cleaning,
grouping and split as every other picture: a listed picture whose SHA-256 is a picture of the data
takes the curator's label (a correction); any other is added as a picture of that type. Rows whose
file is missing, whose bytes no longer match their sha256, or whose label is not a class of the
data are reported and skipped (a curator's type the data has no folder for cannot train a model
with these classes; add the folder to add the type).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from artlens.errors import ImageRejected
from artlens.image import INPUT_SIZE, load_image, preprocessing_for, resize

NEAR_DUPLICATE_BITS = 6
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "MANIFEST.csv", "README.md"}


@dataclass
class DataPool:
    """Decoded, deduplicated pictures: one row per distinct work."""

    classes: list[str]
    pixels: np.ndarray  # uint8 [N,S,S,3], the cached preprocess form (artlens.image.resize)
    labels: np.ndarray  # int [N]
    paths: list[str]  # relative path of the kept file per row
    report: dict
    hashes: np.ndarray | None = None  # uint64 pHash per row (150 px form); None in old caches


def find_files(root: Path, split: str | None = None) -> list[tuple[str, Path]]:
    """(class name, path) for every file below root; the class is the file's folder name.

    `split` keeps only files with a folder of that name above them (e.g. "validation_set"), so
    one split of a Kaggle-layout folder can be loaded - and kept out of training - on its own.
    """
    root = Path(root)
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.name not in IGNORED_NAMES:
            if path.parent == root:
                continue  # a file at the root has no class
            if split is not None and split not in path.relative_to(root).parts[:-2]:
                continue
            found.append((path.parent.name, path))
    classes = {c for c, _ in found}
    if len(classes) < 2:
        raise ValueError(f"{root}: need at least two class folders, found {sorted(classes)}")
    return found


LABEL_COLUMNS = (
    "file", "sha256", "label", "decision", "reviewer", "decided_at", "model_version",
    "catalogued_type",
)
REQUIRED_LABEL_COLUMNS = ("file", "sha256", "label")
LISTED_SKIPS = 50  # skipped rows listed by name in the report (all are counted)


class LabelsError(ValueError):
    """A labels file that cannot be used at all (absent, not a CSV with the export's columns)."""


@dataclass
class Listing:
    """Every picture a run reads: (class, path) with its bytes and SHA-256, after curator labels."""

    files: list[tuple[str, Path]]
    raw: list[bytes]
    digests: list[str]
    checksum: str  # of the data folder, plus the applied labels when there are any
    labels: dict | None = None  # what the labels did (None: no --labels)
    curated: set[str] = field(default_factory=set)  # SHA-256 of curator-labelled pictures


def read_label_rows(path: Path) -> list[dict]:
    """The rows of one review export, each with its CSV line number; LabelsError when the file
    is absent or lacks the file/sha256/label columns."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"labels file {path} not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_LABEL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise LabelsError(
                f"labels file {path}: no {', '.join(missing)} column(s); expected the header "
                + ",".join(LABEL_COLUMNS)
            )
        return [row | {"_line": reader.line_num} for row in reader]


def apply_labels(
    files: list[tuple[str, Path]],
    raw: list[bytes],
    digests: list[str],
    label_files: Sequence[Path],
    classes: list[str],
) -> tuple[list[tuple[str, Path]], list[bytes], list[str], dict, set[str]]:
    """Curator labels onto a listing: returns (files, raw, digests, summary, curated SHA-256s).

    A row names its picture by `file` (absolute, or relative to the CSV's folder) and `sha256`
    (of the bytes; checked when given). Its picture's SHA-256 found in the data: every file with
    those bytes takes the label (replaced, or confirmed when it already had it); the row's own
    file may then be absent (the export leaves `file` empty for a work not in the lake). Not
    found: the picture is added under that label. When several rows name one picture, the latest
    `decided_at` wins (then the later row). Skipped, with a reason per row: no label, a label
    that is not one of `classes`, a missing file, bytes that do not match `sha256`.
    """
    files, raw, digests = list(files), list(raw), list(digests)
    by_name = {c.lower(): c for c in classes}  # "Drawings" is drawings; "tapestry" is nothing
    known = set(digests)
    skipped: list[dict] = []
    chosen: dict[str, dict] = {}  # sha256 -> the winning row
    superseded = 0
    rows_seen = 0
    for csv_path in label_files:
        csv_path = Path(csv_path)
        for row in read_label_rows(csv_path):
            rows_seen += 1
            where = {"csv": str(csv_path), "line": row["_line"], "file": row.get("file") or ""}
            written = (row.get("label") or "").strip()
            label = by_name.get(written.lower(), written)
            name = (row.get("file") or "").strip()
            path = Path(name) if Path(name).is_absolute() else csv_path.parent / name
            if not label:
                skipped.append(where | {"reason": "no_label", "message": "the row has no label"})
                continue
            if label not in classes:
                skipped.append(
                    where
                    | {
                        "label": label,
                        "reason": "unknown_label",
                        "message": f"label {label!r} is not a class of this data "
                        f"(known: {', '.join(classes)})",
                    }
                )
                continue
            given = (row.get("sha256") or "").strip().lower()
            if not name or not path.is_file():
                if given in known:
                    # the data holds these very bytes: the correction needs no file of its own
                    data, sha = None, given
                else:
                    skipped.append(
                        where
                        | {
                            "label": label,
                            "reason": "missing_file",
                            "message": f"{path if name else 'no file named'} not found, and "
                            "its sha256 is no picture of the data",
                        }
                    )
                    continue
            else:
                data = path.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
            if given and given != sha:
                skipped.append(
                    where
                    | {
                        "label": label,
                        "reason": "sha256_mismatch",
                        "message": f"{path} has SHA-256 {sha}, the row says {given}: the file "
                        "changed since it was reviewed",
                    }
                )
                continue
            candidate = {
                "sha256": sha,
                "label": label,
                "path": path,
                "data": data,
                "decided_at": (row.get("decided_at") or "").strip(),
            }
            if sha in chosen:
                superseded += 1
                if candidate["decided_at"] < chosen[sha]["decided_at"]:
                    continue
            chosen[sha] = candidate

    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, sha in enumerate(digests):
        by_sha[sha].append(i)
    replaced, confirmed, added, files_relabelled = [], 0, [], 0
    applied = []
    for sha, c in chosen.items():
        if sha in by_sha:
            old = sorted({files[i][0] for i in by_sha[sha]})
            if old == [c["label"]]:
                confirmed += 1
                applied.append(f"{sha}\t{c['label']}\tconfirmed")
                continue
            for i in by_sha[sha]:
                if files[i][0] != c["label"]:
                    files_relabelled += 1
                    files[i] = (c["label"], files[i][1])
            first = files[by_sha[sha][0]][1]
            replaced.append({"sha256": sha, "from": old, "to": c["label"], "file": str(first)})
            applied.append(f"{sha}\t{c['label']}\treplaced")
        else:
            files.append((c["label"], c["path"]))
            raw.append(c["data"])
            digests.append(sha)
            by_sha[sha].append(len(files) - 1)
            added.append({"sha256": sha, "label": c["label"], "file": str(c["path"])})
            applied.append(f"{sha}\t{c['label']}\tadded")
    digest = hashlib.sha256("\n".join(sorted(applied)).encode()).hexdigest()
    summary = {
        "files": [str(Path(f)) for f in label_files],
        "rows": rows_seen,
        "replaced": len(replaced),
        "confirmed": confirmed,
        "added": len(added),
        "skipped": len(skipped),
        "superseded": superseded,
        "files_relabelled": files_relabelled,
        "checksum": "labels-sha256:" + digest if applied else None,
        "per_reason": dict(Counter(r["reason"] for r in skipped)),
        "replaced_pictures": replaced[:LISTED_SKIPS],
        "added_pictures": added[:LISTED_SKIPS],
        "skipped_rows": skipped[:LISTED_SKIPS],
    }
    return files, raw, digests, summary, set(chosen)


def list_pictures(
    root: Path,
    split: str | None = None,
    labels: Sequence[Path] | None = None,
    progress: bool = False,
) -> Listing:
    """What a run reads: find_files, every file's bytes and SHA-256, the data checksum, then
    the curator labels (which extend the checksum, so caches and cards tell the runs apart)."""
    from tqdm import tqdm

    root = Path(root)
    files = find_files(root, split=split)
    raw = [p.read_bytes() for _, p in tqdm(files, desc="hash", disable=not progress, unit="file")]
    digests = [hashlib.sha256(b).hexdigest() for b in raw]
    checksum = data_checksum(root, files, digests)
    if not labels:
        return Listing(files, raw, digests, checksum)
    classes = sorted({c for c, _ in files})
    files, raw, digests, summary, curated = apply_labels(files, raw, digests, labels, classes)
    if summary["checksum"]:
        checksum = f"{checksum}+{summary['checksum']}"
    return Listing(files, raw, digests, checksum, summary, curated)


def format_labels(summary: dict) -> str:
    """The labels' effect in a few lines, every skipped row with its reason."""
    lines = [
        f"curator labels: {summary['rows']} rows from {len(summary['files'])} file(s): "
        f"{summary['replaced']} replaced ({summary['files_relabelled']} files), "
        f"{summary['confirmed']} confirmed, {summary['added']} added, {summary['skipped']} "
        f"skipped, {summary['superseded']} superseded by a later decision"
    ]
    for r in summary["skipped_rows"]:
        lines.append(f"  skipped {r['csv']}:{r['line']} ({r['reason']}): {r['message']}")
    if summary["skipped"] > len(summary["skipped_rows"]):
        lines.append(f"  ... {summary['skipped'] - len(summary['skipped_rows'])} more skipped")
    return "\n".join(lines)


def _relative(path: Path, root: Path) -> str:
    """A file's name in the pool: relative to the data root; an added labelled picture outside
    it keeps its full path (so it can still be read back, e.g. to make copies)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def data_checksum(root: Path, files: list[tuple[str, Path]], digests: list[str]) -> str:
    """The manifest's checksum when the folder ships one, else a hash of (path, class, sha256)."""
    manifest = Path(root) / "MANIFEST.csv"
    if manifest.exists():
        return "manifest-sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for (cls, path), sha in zip(files, digests, strict=True):
        digest.update(f"{path.relative_to(root)}\t{cls}\t{sha}\n".encode())
    return "files-sha256:" + digest.hexdigest()


def resize_to(rgb, size: int) -> np.ndarray:
    """artlens.image.resize at the model's input size (the serving library's own call)."""
    return resize(rgb, size)


def phash64(pixels: np.ndarray) -> int:
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(pixels)).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def near_duplicate_groups(hashes: np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS) -> np.ndarray:
    """Union-find over all pairs within max_bits Hamming distance; returns a group id per item."""
    n = len(hashes)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    h = hashes.astype(np.uint64)
    for i in range(n - 1):
        dist = np.bitwise_count(h[i + 1 :] ^ h[i])
        for j in np.nonzero(dist <= max_bits)[0]:
            a, b = find(i), find(i + 1 + int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)])


def load_pool(
    root: Path,
    cache_dir: Path | None = None,
    progress: bool = True,
    size: int = INPUT_SIZE,
    split: str | None = None,
    labels: Sequence[Path] | None = None,
) -> DataPool:
    """Decode every file once (cached by data checksum), drop unreadable files and duplicates.

    Pixels are resized to `size`; duplicates are always judged on the 150 px form, so the kept
    rows (and every split and fold drawn from them) are the same whatever the input size.
    `labels`: curator label CSVs (see apply_labels); within a near-duplicate group a
    curator-labelled picture is the one kept, with its label.
    """
    from tqdm import tqdm

    root = Path(root)
    listing = list_pictures(root, split=split, labels=labels, progress=progress)
    files, raw, digests, checksum = listing.files, listing.raw, listing.digests, listing.checksum
    if listing.labels is not None:
        print(format_labels(listing.labels), flush=True)
    cache = None
    if cache_dir is not None:
        # keyed by what decoding does too: a change in artlens.image must not reuse stale pixels
        recipe = hashlib.sha256(json.dumps(preprocessing_for(size), sort_keys=True).encode())
        suffix = ("" if size == INPUT_SIZE else f"-s{size}") + (f"-{split}" if split else "")
        suffix += f"-p{recipe.hexdigest()[:8]}"
        if listing.labels and listing.labels["checksum"]:
            suffix += f"-l{listing.labels['checksum'].split(':')[1][:12]}"
        cache = Path(cache_dir) / (
            checksum.split(":")[1][:24] + f"-nd{NEAR_DUPLICATE_BITS}{suffix}.npz"
        )
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                report = json.loads(str(z["report"]))
                if listing.labels is not None:
                    # rows the labels skipped do not change the pool: say what THIS run skipped
                    report["labels"] = listing.labels
                hashes = z["hashes"] if "hashes" in z.files else None
                return DataPool(
                    report["classes"], z["pixels"], z["labels"], list(z["paths"]), report, hashes
                )

    classes = sorted({c for c, _ in files})
    seen = Counter()
    unreadable: list[dict] = []
    decoded: list[tuple[int, np.ndarray, str, str]] = []  # (label, pixels150, relpath, sha)
    sized: dict[str, np.ndarray] = {}  # relpath -> pixels at `size` (when size != 150)
    for (cls, path), data, sha in tqdm(
        list(zip(files, raw, digests, strict=True)), desc="decode", disable=not progress, unit="img"
    ):
        seen[cls] += 1
        try:
            rgb = load_image(data, max_bytes=len(data) + 1, size=size).rgb
        except ImageRejected as exc:
            unreadable.append({"path": _relative(path, root), "class": cls, "reason": exc.code})
            continue
        rel = _relative(path, root)
        decoded.append((classes.index(cls), resize(rgb), rel, sha))
        if size != INPUT_SIZE:
            sized[rel] = resize_to(rgb, size)

    # exact duplicates: same bytes
    exact_dups = Counter()
    first_by_sha: dict[str, int] = {}
    unique: list[tuple[int, np.ndarray, str, str]] = []
    for item in decoded:
        if item[3] in first_by_sha:
            exact_dups[classes[item[0]]] += 1
            continue
        first_by_sha[item[3]] = len(unique)
        unique.append(item)

    # near duplicates: same picture re-encoded; keep the first of each group
    hashes = np.array(
        [phash64(px) for _, px, _, _ in tqdm(unique, desc="phash", disable=not progress)],
        dtype=np.uint64,
    )
    groups = near_duplicate_groups(hashes)
    members: dict[int, list[int]] = defaultdict(list)
    for idx, g in enumerate(groups):
        members[int(g)].append(idx)
    near_dups = Counter()
    conflicts = []
    kept: list[int] = []
    for _, idxs in sorted(members.items()):
        labels_in_group = Counter(unique[i][0] for i in idxs)
        # a curator's decision outweighs the folders: the group takes the curated label
        curated = [i for i in idxs if unique[i][3] in listing.curated]
        majority = Counter(unique[i][0] for i in (curated or idxs)).most_common(1)[0][0]
        if len(labels_in_group) > 1:
            conflicts.append([unique[i][2] for i in idxs])
        keep = next(i for i in (curated or idxs) if unique[i][0] == majority)
        kept.append(keep)
        for i in idxs:
            if i != keep:
                near_dups[classes[unique[i][0]]] += 1

    kept.sort()
    if size == INPUT_SIZE:
        pixels = np.stack([unique[i][1] for i in kept])
    else:
        pixels = np.stack([sized[unique[i][2]] for i in kept])
    labels = np.array([unique[i][0] for i in kept])
    paths = [unique[i][2] for i in kept]
    kept_hashes = hashes[kept] if len(kept) else np.zeros(0, np.uint64)
    kept_per_class = Counter(classes[i] for i in labels)
    report = {
        "root": str(root),
        "data_checksum": checksum,
        "classes": classes,
        "near_duplicate_bits": NEAR_DUPLICATE_BITS,
        "input_size": size,
        "split": split,
        "per_class": {
            c: {
                "seen": seen[c],
                "unreadable": sum(1 for u in unreadable if u["class"] == c),
                "exact_duplicates": exact_dups[c],
                "near_duplicates": near_dups[c],
                "kept": kept_per_class[c],
            }
            for c in classes
        },
        "totals": {
            "seen": sum(seen.values()),
            "unreadable": len(unreadable),
            "exact_duplicates": sum(exact_dups.values()),
            "near_duplicates": sum(near_dups.values()),
            "kept": len(kept),
        },
        "cross_class_groups": len(conflicts),
        "cross_class_examples": conflicts[:20],
        "unreadable_files": unreadable,
    }
    if listing.labels is not None:
        report["labels"] = listing.labels
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            pixels=pixels,
            labels=labels,
            paths=np.array(paths),
            report=json.dumps(report),
            hashes=kept_hashes,
        )
        tmp.replace(cache)
    return DataPool(classes, pixels, labels, paths, report, kept_hashes)


def row_hashes(pool: DataPool) -> np.ndarray:
    """pHash per kept row, on the 150 px form the duplicate groups were built on."""
    from PIL import Image

    if pool.hashes is not None:
        return pool.hashes
    if pool.pixels.shape[1] == INPUT_SIZE:
        return np.array([phash64(p) for p in pool.pixels], dtype=np.uint64)
    small = [
        np.asarray(Image.fromarray(p).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR))
        for p in pool.pixels
    ]
    return np.array([phash64(p) for p in small], dtype=np.uint64)


def near_copies_of(hashes: np.ndarray, others: np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS):
    """Boolean mask over `hashes`: True where a row is a near copy of any row in `others`."""
    if len(others) == 0:
        return np.zeros(len(hashes), bool)
    h = hashes.astype(np.uint64)[:, None] ^ others.astype(np.uint64)[None, :]
    return (np.bitwise_count(h) <= max_bits).any(axis=1)


def row_sources(root: Path, paths: list[str], default: str) -> list[str]:
    """Source per kept row from MANIFEST.csv (when the data ships one), else `default`."""
    manifest = Path(root) / "MANIFEST.csv"
    by_path = {}
    if manifest.exists():
        with open(manifest, newline="") as fh:
            by_path = {r["path"]: r.get("source", default) for r in csv.DictReader(fh)}
    return [by_path.get(p, default) for p in paths]


def format_report(report: dict) -> str:
    rows = [f"{'class':<14}{'seen':>7}{'unread':>8}{'exact':>7}{'near':>7}{'kept':>7}"]
    for cls, r in report["per_class"].items():
        rows.append(
            f"{cls:<14}{r['seen']:>7}{r['unreadable']:>8}{r['exact_duplicates']:>7}"
            f"{r['near_duplicates']:>7}{r['kept']:>7}"
        )
    t = report["totals"]
    rows.append(
        f"{'total':<14}{t['seen']:>7}{t['unreadable']:>8}{t['exact_duplicates']:>7}"
        f"{t['near_duplicates']:>7}{t['kept']:>7}"
    )
    if report.get("labels"):
        lab = report["labels"]
        rows.append(
            f"curator labels: {lab['replaced']} replaced, {lab['confirmed']} confirmed, "
            f"{lab['added']} added, {lab['skipped']} skipped"
        )
    return "\n".join(rows)


def card_data(root: Path, report: dict) -> dict:
    """The model card's `training.data`: which data, its checksum and what cleaning did."""
    out = {
        "root": str(root),
        "checksum": report["data_checksum"],
        "cleaning": report["totals"],
        "per_class": report["per_class"],
        **manifest_summary(root),
    }
    if report.get("labels") is not None:
        lab = report["labels"]
        out["labels"] = {
            k: lab[k]
            for k in ("files", "rows", "replaced", "confirmed", "added", "skipped", "superseded",
                      "files_relabelled", "checksum", "per_reason")
        } | {"skipped_rows": lab["skipped_rows"][:20]}
    return out


def manifest_summary(root: Path) -> dict:
    """Sources and licences from MANIFEST.csv, when the data ships one."""
    manifest = Path(root) / "MANIFEST.csv"
    if not manifest.exists():
        return {}
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "sources": dict(Counter(r.get("source", "?") for r in rows)),
        "licenses": dict(Counter(r.get("license", "?") for r in rows)),
    }


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), stratified by class. Rows are already one per duplicate group,
    so a stratified split of rows IS a grouped split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    return train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)


def to_jsonable(obj):
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj


def encode_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
