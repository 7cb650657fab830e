"""Serving overhead: `vqa` through the real model server (KServe, v1 JSON over loopback HTTP) against
calling the same engine in-process, with the same decoding (greedy, a fixed `max_new_tokens`, EOS
ignored on both sides via `serve.ignore_eos`), on the tiny random-init model, in one run.

    python benchmarks/bench_serve.py [--requests 40] [--new-tokens 16]

Prints p50 / p99 latency and requests/s at concurrency 1 and 8 for both, the `generate` latency for
both, and last the line `serve p50 overhead: X` (server p50 / in-process p50 at concurrency 1; the
goal is X <= 1.3). The in-process baseline at concurrency 8 is the same sequential work (the server
runs model work on one worker thread too), so its requests/s is the ceiling the server can reach.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serve_helpers import Server, make_tiny_model, png_bytes  # noqa: E402
from unimedvl.config import ServeConfig  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def report(label: str, lat: list[float], wall: float) -> None:
    print(f"{label:34} p50 {pct(lat, 0.5) * 1000:8.1f} ms  p99 {pct(lat, 0.99) * 1000:8.1f} ms  "
          f"{len(lat) / wall:7.2f} req/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--gen-steps", type=int, default=4)
    args = ap.parse_args()

    import httpx
    import torch

    from unimedvl.serve.engine import Engine
    from unimedvl.serve.schemas import finish

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve-"))
    folder = make_tiny_model(tmp / "model")
    limits = {"ignore_eos": True, "torch_threads": 1, "default_new_tokens": args.new_tokens,
              "max_new_tokens": args.new_tokens, "queue_length": 64, "request_timeout_s": 600}
    (tmp / "params.yaml").write_text(yaml.safe_dump({"serve": limits}))
    cfg = ServeConfig(**limits)
    img = png_bytes(size=(64, 64))
    vqa = {"task": "vqa", "image": img, "question": "Is there a pleural effusion?", "max_new_tokens": args.new_tokens}
    gen = {"task": "generate", "prompt": "frontal chest radiograph", "steps": args.gen_steps, "seed": 0}

    # -- in-process: the engine the predictor calls, one thread, same settings --------------------
    torch.set_num_threads(1)
    engine = Engine(folder, cfg)

    def local(fields):
        t = time.perf_counter()
        out = engine.run([engine.prepare(finish(dict(fields), 0, cfg))])
        assert out[0]
        return time.perf_counter() - t

    for _ in range(3):
        local(vqa)

    # -- the real server on loopback ---------------------------------------------------------------
    srv = Server(str(folder), tmp / "params.yaml")
    try:
        body_vqa = {"instances": [{**vqa, "image": {"b64": base64.b64encode(img).decode()}}]}
        body_gen = {"instances": [gen]}
        url = f"{srv.url}/v1/models/unimedvl:predict"

        def remote(client: httpx.Client, body) -> float:
            t = time.perf_counter()
            r = client.post(url, json=body, timeout=600)
            r.raise_for_status()
            return time.perf_counter() - t

        with httpx.Client() as client:
            for _ in range(3):
                remote(client, body_vqa)
            # Interleaved, so both sides see the same machine load (the CPU is shared).
            base, served, base_gen, served_gen = [], [], [], []
            for _ in range(args.requests):
                base.append(local(vqa))
                served.append(remote(client, body_vqa))
            for _ in range(5):
                base_gen.append(local(gen))
                served_gen.append(remote(client, body_gen))
            base_wall, served_wall = sum(base), sum(served)
        clients = [httpx.Client() for _ in range(8)]
        try:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                conc = list(pool.map(lambda i: remote(clients[i % 8], body_vqa), range(args.requests)))
            conc_wall = time.perf_counter() - t0
        finally:
            for c in clients:
                c.close()
    finally:
        srv.stop()

    print(f"tiny model, vqa with {args.new_tokens} new tokens (EOS ignored), {args.requests} requests, torch threads 1")
    report("in-process  vqa  concurrency 1", base, base_wall)
    report("server      vqa  concurrency 1", served, served_wall)
    report("in-process  vqa  concurrency 8 (seq)", base, base_wall)
    report("server      vqa  concurrency 8", conc, conc_wall)
    print(f"generate ({args.gen_steps} steps) p50: in-process {statistics.median(base_gen) * 1000:.1f} ms, "
          f"server {statistics.median(served_gen) * 1000:.1f} ms")
    print(f"serve p50 overhead: {pct(served, 0.5) / pct(base, 0.5):.3f}")


if __name__ == "__main__":
    main()
