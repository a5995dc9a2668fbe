"""make bench: ArtLens performance figures, each beside its baseline measured in the same run.

`python -m bench` runs every section against the shipped model (models/artlens.json + .keras),
prints a table, writes bench/results.json and refreshes the table in docs/performance.md.
`python -m bench --quick` is a small smoke run (tiny row counts, a freshly built reference model
exported by training.export) that writes only the file named by --out.
"""
