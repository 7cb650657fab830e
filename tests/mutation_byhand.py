"""Apply mutmut mutants by hand, one at a time, to a scratch copy of `src/`, and run tests against it.

    python tests/mutation_byhand.py "tests/unit/test_dicom.py" unimedvl.data.dicom_profile.x__tags__mutmut_1 ...

For the mutants mutmut cannot switch on itself (code that only runs while a module is imported, such
as the tables built at import: `tests/mutation-equivalent.md`), and to check that a new test kills a
survivor before the next `make mutation`. Each line says KILLED (a test failed), SURVIVED, or why the
mutant could not be applied (its function changed since mutmut generated it). Exit status 1 when any
survived. The working tree is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def mutant_change(name: str, env: dict[str, str]) -> tuple[str, str, str]:
    """(file, original lines, mutated lines) of one mutant, from `mutmut show`."""
    diff = subprocess.run([str(BIN / "mutmut"), "show", name], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.splitlines()
    path = next((line[4:] for line in diff if line.startswith("--- ")), None)
    if path is None:
        raise ValueError(f"mutmut show {name} printed no diff")
    body = [line for line in diff if not line.startswith(("---", "+++", "@@", "#"))]
    old = "\n".join(line[1:] for line in body if line[:1] in (" ", "-"))
    new = "\n".join(line[1:] for line in body if line[:1] in (" ", "+"))
    return path, old, new


def indent(block: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in block.split("\n"))


def run(tests: list[str], names: list[str]) -> int:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    survived = 0
    with tempfile.TemporaryDirectory(prefix="mutation-byhand-") as tmp:
        scratch = Path(tmp) / "src"
        for name in names:
            path, old, new = mutant_change(name, env)
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.copytree(ROOT / "src", scratch)
            target = scratch.parent / path
            text = target.read_text()
            # mutmut shows a method dedented, as a function: find it at its class's indentation
            found = [(o, n) for o, n in ((indent(old, d), indent(new, d)) for d in ("", "    ", "        "))
                     if text.count(o) == 1]
            if not found:
                print(f"{name}: not applied (its function changed since mutmut generated it)", flush=True)
                continue
            target.write_text(text.replace(*found[0]))
            check = subprocess.run([sys.executable, "-c", "import unimedvl; print(unimedvl.__file__)"], env={
                **env, "PYTHONPATH": str(scratch)}, capture_output=True, text=True).stdout.strip()
            if not check.startswith(str(scratch)):  # an installed copy would shadow the scratch one
                raise RuntimeError(f"unimedvl imports from {check}, not from the scratch copy {scratch}")
            res = subprocess.run([str(BIN / "pytest"), "-q", "-n", "0", "-x", "-p", "no:randomly", *tests], cwd=ROOT,
                                 env={**env, "PYTHONPATH": f"{scratch}{os.pathsep}{ROOT}"}, capture_output=True, text=True)
            last = (res.stdout.strip().splitlines() or [""])[-1]
            # 1: a test failed; 2: collection stopped (the mutant breaks the import), which the default run reports too
            verdict = "KILLED" if res.returncode in (1, 2) else "SURVIVED" if res.returncode == 0 else f"pytest exit {res.returncode}"
            survived += res.returncode == 0
            print(f"{name}: {verdict} ({last})", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(run(sys.argv[1].split(), sys.argv[2:]))
