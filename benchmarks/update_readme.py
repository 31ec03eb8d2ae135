"""Copy the tables in benchmarks/results/*.md into README.md below the BENCHMARKS marker."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- BENCHMARKS -->"
ORDER = ["capture", "passes", "propagation", "autoshard", "partition", "federated", "functional", "training"]


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head = text.split(MARKER)[0].rstrip() + "\n\n" + MARKER + "\n"
    results = ROOT / "benchmarks" / "results"
    files = sorted(results.glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    sections = []
    for path in files:
        body = path.read_text().strip()
        if body.startswith("# "):
            body = "###" + body[1:]
        sections.append(body)
    readme.write_text(head + "\n" + "\n\n".join(sections) + "\n")
    print(f"README.md: {len(sections)} benchmark tables from {results}")


if __name__ == "__main__":
    main()
