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
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
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
) -> DataPool:
    """Decode every file once (cached by data checksum), drop unreadable files and duplicates.

    Pixels are resized to `size`; duplicates are always judged on the 150 px form, so the kept
    rows (and every split and fold drawn from them) are the same whatever the input size.
    """
    from tqdm import tqdm

    root = Path(root)
    files = find_files(root, split=split)
    raw = [p.read_bytes() for _, p in tqdm(files, desc="hash", disable=not progress, unit="file")]
    digests = [hashlib.sha256(b).hexdigest() for b in raw]
    checksum = data_checksum(root, files, digests)
    cache = None
    if cache_dir is not None:
        # keyed by what decoding does too: a change in artlens.image must not reuse stale pixels
        recipe = hashlib.sha256(json.dumps(preprocessing_for(size), sort_keys=True).encode())
        suffix = ("" if size == INPUT_SIZE else f"-s{size}") + (f"-{split}" if split else "")
        suffix += f"-p{recipe.hexdigest()[:8]}"
        cache = Path(cache_dir) / (
            checksum.split(":")[1][:24] + f"-nd{NEAR_DUPLICATE_BITS}{suffix}.npz"
        )
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                report = json.loads(str(z["report"]))
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
            unreadable.append(
                {"path": str(path.relative_to(root)), "class": cls, "reason": exc.code}
            )
            continue
        rel = str(path.relative_to(root))
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
        majority = labels_in_group.most_common(1)[0][0]
        if len(labels_in_group) > 1:
            conflicts.append([unique[i][2] for i in idxs])
        keep = next(i for i in idxs if unique[i][0] == majority)
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
    return "\n".join(rows)


def card_data(root: Path, report: dict) -> dict:
    """The model card's `training.data`: which data, its checksum and what cleaning did."""
    return {
        "root": str(root),
        "checksum": report["data_checksum"],
        "cleaning": report["totals"],
        "per_class": report["per_class"],
        **manifest_summary(root),
    }


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
