"""DeepSpeed's CPU C++ ops, built once into the repo's ignored `build/torch_extensions/`.

DeepSpeed JIT-compiles its shared-memory all-reduce op (`deepspeed_shm_comm`) the first time a CPU
process group starts, about 30 s of g++ on two cores. `make setup` calls `build()` so that cost is
paid when the environment is installed, not inside the first training job or test that happens to
need it; training points `TORCH_EXTENSIONS_DIR` at the same folder (`extensions_dir`), so the build
is found there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def extensions_dir(root: Path) -> Path:
    """Where torch's C++ extension cache lives for the repository at `root`."""
    return (root / "build" / "torch_extensions").resolve()


def build(root: Path) -> list[str]:
    """Build (or find already built) every DeepSpeed op the CPU training path loads; their names."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir(root)))
    from deepspeed.comm.torch import build_shm_op

    module = build_shm_op()  # None where this CPU/DeepSpeed pair has no compatible op: nothing to build
    return [] if module is None else ["deepspeed_shm_comm"]


def main() -> None:
    from ..tracking import repo_root

    root = repo_root()
    built = build(root)
    where = os.environ["TORCH_EXTENSIONS_DIR"]
    print(f"DeepSpeed CPU ops in {where}: {', '.join(built) or 'none needed on this machine'}", file=sys.stderr)


if __name__ == "__main__":
    main()
