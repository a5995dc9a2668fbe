"""`python -m tests.audit requirements/runtime.lock` (make audit): known vulnerabilities in the
runtime lock -- every package the Lambda image and layer install, transitive ones included (a
plain requirements file with `name==version` lines works too; hash lines are ignored). Exit 1
on any finding, or when nothing could be audited at all.

1. pip-audit (`--no-deps --disable-pip -r FILE`, OSV/PyPI advisory data).
2. Packages pip-audit skipped (no vulnerability service reachable -- the case behind the local
   mirror) fall back to PyPI's project JSON, whose `vulnerabilities` list describes the LATEST
   release only: a pin equal to the latest release is audited there; an older pin cannot be,
   and is reported as unaudited, never as clean.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

PYPI_JSON = "https://pypi.org/pypi/{name}/json"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;#]+)")


def pins(requirements: Path) -> dict[str, str]:
    found = {}
    for line in requirements.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            found[match[1].lower()] = match[2]
    return found


def pip_audit(requirements: Path) -> tuple[list[str], dict[str, str]]:
    """(findings, skipped name -> reason)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--no-deps", "--disable-pip", "-r", str(requirements),
         "-f", "json", "--progress-spinner", "off"],
        capture_output=True, text=True, timeout=300,
    )
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"pip-audit failed: {done.stderr.strip()[-500:]}") from None
    findings, skipped = [], {}
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            skipped[dep["name"].lower()] = dep["skip_reason"]
        for vuln in dep.get("vulns", []):
            findings.append(f"{dep['name']} {dep.get('version')}: {vuln.get('id')} "
                            f"(fixed in {', '.join(vuln.get('fix_versions') or []) or '?'})")
    return findings, skipped


def pypi_fallback(name: str, pinned: str) -> tuple[list[str], str | None]:
    """(findings, why it could not be audited or None)."""
    try:
        with urllib.request.urlopen(PYPI_JSON.format(name=name), timeout=20) as answer:  # noqa: S310
            project = json.load(answer)
    except (OSError, ValueError) as exc:
        return [], f"PyPI JSON unreachable ({type(exc).__name__})"
    latest = project.get("info", {}).get("version")
    if latest != pinned:
        return [], (f"pinned {pinned} is not the latest ({latest}); "
                    "PyPI JSON lists advisories only for the latest")
    vulns = project.get("vulnerabilities") or []
    return [f"{name} {pinned}: {v.get('id')} (fixed in {', '.join(v.get('fixed_in') or []) or '?'})"
            for v in vulns], None


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m tests.audit REQUIREMENTS_FILE", file=sys.stderr)
        return 2
    requirements = Path(args[0])
    pinned = pins(requirements)
    findings, skipped = pip_audit(requirements)
    audited_by_pip_audit = sorted(set(pinned) - set(skipped))
    via_pypi, unaudited = [], {}
    for name, reason in sorted(skipped.items()):
        more, why = pypi_fallback(name, pinned.get(name, ""))
        findings += more
        if why:
            unaudited[name] = f"{why}; pip-audit: {reason}"
        else:
            via_pypi.append(name)

    print(f"audited by pip-audit: {', '.join(audited_by_pip_audit) or 'none'}")
    print(f"audited via PyPI JSON (latest release): {', '.join(via_pypi) or 'none'}")
    for name, why in unaudited.items():
        print(f"NOT AUDITED {name}: {why}")
    for finding in findings:
        print(f"VULNERABLE {finding}")
    if findings:
        return 1
    if len(unaudited) == len(pinned):
        print("nothing could be audited; failing rather than claiming a clean result")
        return 1
    print(f"no known vulnerabilities in {len(pinned) - len(unaudited)} of {len(pinned)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
