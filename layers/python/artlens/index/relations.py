"""Near duplicates and relatives between works (the `work_relations` table) and the works'
perceptual hashes (`works.phash`); what they mean is artlens.duplicates.

A pair is stored once, smaller SHA-256 first, per model version (the embedding that found it).
Duplicate groups are the connected components of the near-duplicate pairs: the same picture
scanned, re-encoded or cropped, however many times.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql
from psycopg2.extras import execute_values

from artlens.duplicates import RelationKind
from artlens.index.database import Cursor, Database
from artlens.index.embeddings import WORKS_SELECT
from artlens.index.works import WorkFields, work_fields


@dataclass(frozen=True)
class Relation:
    sha256: str
    other_sha256: str
    kind: RelationKind  # near_duplicate | related (exact copies are one work: no relation)
    similarity: float
    hamming: int | None
    model_version: str

    def ordered(self) -> Relation:
        if self.sha256 < self.other_sha256:
            return self
        return Relation(self.other_sha256, self.sha256, self.kind, self.similarity,
                        self.hamming, self.model_version)

    def other(self, sha256: str) -> str:
        return self.other_sha256 if sha256 == self.sha256 else self.sha256


@dataclass(frozen=True)
class GroupMember:
    sha256: str
    key: str | None  # the gallery key under the version (null: not indexed by it)
    label: str | None
    work: WorkFields


@dataclass(frozen=True)
class DuplicateGroup:
    members: list[GroupMember]  # ordered by SHA-256: a stable order
    pairs: list[Relation]  # the near-duplicate pairs that join them




def set_phashes(database: Database, hashes: Mapping[str, int]) -> None:
    """Store each work's perceptual hash where none is stored yet (a hash is a property of
    the picture's bytes, so the first one computed is the one)."""
    if not hashes:
        return

    def work(cur: Cursor) -> None:
        execute_values(
            cur,
            "UPDATE works SET phash = v.phash FROM (VALUES %s) AS v (sha256, phash)"
            " WHERE works.sha256 = v.sha256 AND works.phash IS NULL",
            [(sha, int(value)) for sha, value in hashes.items()],
            template="(%s, %s::bigint)",
        )

    database.transaction(work)


def record_relations(database: Database, relations: Iterable[Relation]) -> int:
    """Store pairs (once each); a pair seen again keeps its first finding. Returns how many
    were new."""
    rows: dict[tuple[str, str, str], Relation] = {}
    for relation in relations:
        ordered = relation.ordered()
        rows.setdefault((ordered.sha256, ordered.other_sha256, ordered.model_version), ordered)
    if not rows:
        return 0

    def work(cur: Cursor) -> int:
        inserted = execute_values(
            cur,
            "INSERT INTO work_relations (sha256, other_sha256, kind, similarity, hamming,"
            " model_version) VALUES %s ON CONFLICT DO NOTHING RETURNING 1",
            [(r.sha256, r.other_sha256, r.kind, float(r.similarity), r.hamming,
              r.model_version) for r in rows.values()],
            fetch=True,
        )
        return len(inserted)

    return database.transaction(work)


def relations_of(
    database: Database, sha256s: Sequence[str], model_version: str
) -> dict[str, list[Relation]]:
    """Every stored pair touching these works under the version, most similar first."""
    wanted = list(dict.fromkeys(sha256s))
    found: dict[str, list[Relation]] = {sha: [] for sha in wanted}
    if not wanted:
        return found

    def work(cur: Cursor) -> list[tuple[Any, ...]]:
        cur.execute(
            "SELECT sha256, other_sha256, kind, similarity, hamming, model_version"
            " FROM work_relations WHERE model_version = %s"
            " AND (sha256 = ANY(%s) OR other_sha256 = ANY(%s)) ORDER BY similarity DESC",
            (model_version, wanted, wanted),
        )
        return cur.fetchall()

    for sha, other, kind, similarity, distance, version in database.read(work):
        relation = Relation(sha, other, kind, float(similarity), distance, version)
        for side in (sha, other):
            if side in found:
                found[side].append(relation)
    return found


def duplicate_groups(database: Database, model_version: str) -> list[DuplicateGroup]:
    """The collection's near-duplicate groups under the version, largest first."""

    def work(cur: Cursor) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        cur.execute(
            "SELECT sha256, other_sha256, similarity, hamming FROM work_relations"
            " WHERE model_version = %s AND kind = 'near_duplicate'",
            (model_version,),
        )
        pairs = cur.fetchall()
        shas = sorted({sha for pair in pairs for sha in pair[:2]})
        cur.execute(
            sql.SQL("SELECT w.sha256, i.key, i.label, {} FROM works w"
                    " LEFT JOIN images i ON i.sha256 = w.sha256 AND i.model_version = %s"
                    " WHERE w.sha256 = ANY(%s)").format(WORKS_SELECT),
            (model_version, shas),
        )
        return pairs, cur.fetchall()

    pairs, members = database.read(work)
    by_sha = {row[0]: GroupMember(row[0], row[1], row[2], work_fields(row[3:]))
              for row in members}
    parent: dict[str, str] = {}

    def root(sha: str) -> str:
        parent.setdefault(sha, sha)
        while parent[sha] != sha:
            parent[sha] = parent[parent[sha]]
            sha = parent[sha]
        return sha

    for sha, other, _, _ in pairs:
        parent[root(sha)] = root(other)
    components: dict[str, list[str]] = {}
    for sha in parent:
        components.setdefault(root(sha), []).append(sha)
    groups = []
    for shas in components.values():
        members_of = sorted(shas)
        inside = set(shas)
        groups.append(DuplicateGroup(
            members=[by_sha.get(sha, GroupMember(sha, None, None, WorkFields()))
                     for sha in members_of],
            pairs=[Relation(a, b, "near_duplicate", float(s), h, model_version)
                   for a, b, s, h in pairs if a in inside],
        ))
    groups.sort(key=lambda g: (-len(g.members), g.members[0].sha256))
    return groups
