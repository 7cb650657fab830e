"""Per-module mutation score from mutmut's results (`make mutation` prints it after `mutmut run`).

Score = killed / (killed + survived), per module and over all, with the mutants listed in
tests/mutation-equivalent.md (each with the reason it cannot change behaviour) left out. A mutant no
test reaches ("no tests") counts as survived: nothing would notice it. Timeouts count as killed (the
mutant made a test hang, which a CI run notices). Mutants not run yet (`make mutation MUTANTS=...`
limits a run) are counted as unrun and not scored. Statuses come from mutmut's own exit-code table.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "tests" / "mutation-equivalent.md"
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
SURVIVED = {"survived", "no tests"}


def equivalent_mutants(path: Path = EQUIVALENT) -> set[str]:
    """Mutant names written as `module.x_function__mutmut_N` in the equivalent-mutants list."""
    if not path.exists():
        return set()
    return set(re.findall(r"`([\w.]+__mutmut_\d+)`", path.read_text()))


def module_of(mutant: str) -> str:
    return mutant.rsplit(".", 1)[0]


def collect(mutants_dir: Path) -> dict[str, Counter]:
    equivalent = equivalent_mutants()
    table: dict[str, Counter] = defaultdict(Counter)
    for meta in sorted(mutants_dir.rglob("*.meta")):
        for name, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items():
            status = status_by_exit_code[code]
            counts = table[module_of(name)]
            if name in equivalent:
                counts["equivalent"] += 1
            elif status in KILLED:
                counts["killed"] += 1
            elif status in SURVIVED:
                counts["survived"] += 1
            elif status == "not checked":
                counts["unchecked"] += 1  # not run yet (a run limited by MUTANTS=...): not scored
            else:
                counts["other"] += 1  # not checked, skipped, suspicious: reported, not scored
    return table


def score(counts: Counter) -> float | None:
    judged = counts["killed"] + counts["survived"]
    return counts["killed"] / judged if judged else None


def main(argv: list[str]) -> int:
    mutants_dir = Path(argv[1]) if len(argv) > 1 else ROOT / "mutants"
    table = collect(mutants_dir)
    if not table:
        print(f"no mutmut results under {mutants_dir}: run `make mutation`", file=sys.stderr)
        return 1
    total: Counter = Counter()
    print(f"{'module':48} {'killed':>7} {'survived':>9} {'equiv.':>7} {'other':>6} {'unrun':>6} {'score':>6}")
    for module in sorted(table):
        c = table[module]
        total.update(c)
        s = score(c)
        print(f"{module:48} {c['killed']:7d} {c['survived']:9d} {c['equivalent']:7d} {c['other']:6d} {c['unchecked']:6d} "
              f"{'n/a' if s is None else f'{s:.3f}':>6}")
    overall = score(total)
    print(f"mutation score: {'n/a' if overall is None else f'{overall:.3f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
