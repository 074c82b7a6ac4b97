"""MCP server load benchmark: N concurrent HTTP clients, each making M ``select_t2i_api`` calls.

    python benchmarks/mcp_load.py [--clients 16] [--calls 50] [--registry registry.db]
                                  [--selector retrieval|llm] [--mode auto|legacy]
                                  [--llm-instances 1] [--llm-threads 2]

Starts ``diffagent serve --http`` on a free 127.0.0.1 port as a subprocess (one process, models loaded
once and shared, as in production), warms it with one call (not timed), then runs the clients at
once. A failure is an exception or an ``isError`` result. Prints p50/p95/p99/max latency, throughput
and failures, and writes them to benchmarks/results/mcp_load.json (git-ignored).

Then a stall probe: one client sends ``render_image`` with a call of 20,000 LoRAs (1.8 MB of JSON, refused by
validation) while another pings every 20 ms; the slowest ping says whether one request can stall the server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mcp_load.json"
PROMPTS = [
    "a watercolor fox in a snowy forest",
    "cyberpunk city at night, neon, rain",
    "portrait of an old sailor, oil painting",
    "anime girl with silver hair, cherry blossoms",
    "a cozy cabin interior, warm light",
    "product photo of a perfume bottle on marble",
    "a dragon over a medieval castle, epic fantasy",
    "isometric low-poly island",
    "pencil sketch of a cat sleeping",
    "astronaut riding a horse on mars",
    "minimalist logo of a mountain",
    "a bowl of ramen, food photography",
    "steampunk airship in the clouds",
    "ink line art of a samurai",
    "pixel art forest with a river",
    "a photo of a golden retriever puppy",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DIFFAGENT_SELECTOR": args.selector,
        "DIFFAGENT_LLM_INSTANCES": str(args.llm_instances),
        "DIFFAGENT_LLM_THREADS": str(args.llm_threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if args.registry:
        env["DIFFAGENT_REGISTRY"] = str(Path(args.registry).resolve())
    cmd = [sys.executable, "-m", "diffagent", "serve", "--http", "--port", str(port)]
    # the server's log goes to a file: a pipe nobody reads would fill up and stall the server
    log = tempfile.NamedTemporaryFile("w+", prefix="mcp_load_server_", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}):\n{Path(log.name).read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start listening within 120 s")


async def one_client(
    url: str, client_no: int, calls: int, mode: str, latencies: list[float], failures: list[str]
) -> None:
    async with Client(url, mode=mode) as client:
        for i in range(calls):
            prompt = PROMPTS[(client_no + i) % len(PROMPTS)]
            t = time.perf_counter()
            try:
                r = await client.call_tool("select_t2i_api", {"prompt": prompt, "options": {"seed": i}})
                if r.is_error:
                    failures.append(f"client {client_no} call {i}: {r.content[0].text[:200]}")
                    continue
            except Exception as exc:  # noqa: BLE001 - any failure counts, and the run goes on
                failures.append(f"client {client_no} call {i}: {type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t)


async def run(url: str, args: argparse.Namespace) -> dict:
    async with Client(url, mode=args.mode) as warm:  # loads the registry, index and selector
        t = time.perf_counter()
        r = await warm.call_tool("select_t2i_api", {"prompt": PROMPTS[0]})
        if r.is_error:
            raise SystemExit(f"warm-up call failed: {r.content[0].text}")
        warmup_s = time.perf_counter() - t
    latencies: list[float] = []
    failures: list[str] = []
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in range(args.clients):
            tg.start_soon(one_client, url, c, args.calls, args.mode, latencies, failures)
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {
        "clients": args.clients,
        "calls_per_client": args.calls,
        "selector": args.selector,
        "mode": args.mode,
        "ok": len(latencies),
        "failures": len(failures),
        "failure_samples": failures[:5],
        "p50_ms": round(q[49] * 1000, 1),
        "p95_ms": round(q[94] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "throughput_per_s": round(len(latencies) / wall, 1),
        "wall_s": round(wall, 1),
        "warmup_s": round(warmup_s, 2),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


#: the pinger of the stall probe runs in its own process: in this one, building and sending 1.8 MB of JSON
#: would hold the event loop (and the GIL) and delay the pings on the client side
PINGER = """
import json, sys, time, anyio, warnings
from mcp import Client
warnings.simplefilter("ignore")
async def main(url):
    out = []
    async with Client(url, mode="legacy") as c:
        print("ready", flush=True)
        async with anyio.create_task_group() as tg:
            async def stop_on_eof():
                await anyio.to_thread.run_sync(sys.stdin.read)
                tg.cancel_scope.cancel()
            tg.start_soon(stop_on_eof)
            while True:
                t = time.perf_counter()
                await c.send_ping()
                out.append([time.time(), time.perf_counter() - t])
                await anyio.sleep(0.01)
    print(json.dumps(out), flush=True)
anyio.run(main, sys.argv[1])
"""


async def stall_probe(url: str) -> dict:
    """Ping latencies (from another process) while a 20,000-LoRA ``render_image`` request is sent and refused."""
    lora = {"id": 1, "air": "urn:air:sd1:lora:civitai:1@1", "name": "x", "family": "sd1", "weight": 0.5}
    call = {
        "checkpoint": {"id": 1, "air": "urn:air:sd1:checkpoint:civitai:1@1", "name": "x", "family": "sd1"},
        "prompt": "a cat",
        "loras": [lora] * 20_000,
    }
    pinger = subprocess.Popen(
        [sys.executable, "-c", PINGER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert pinger.stdout.readline().strip() == "ready"
        await anyio.sleep(1.0)  # idle pings first
        big: dict = {}
        async with Client(url, mode="legacy") as sender:
            t_start, t = time.time(), time.perf_counter()
            try:
                r = await sender.call_tool("render_image", {"call": call, "wait": False})
                refused, message = r.is_error, " ".join(b.text for b in r.content if b.type == "text")
            except MCPError as exc:  # refused by the transport (HTTP 413) rather than by the tool
                refused, message = True, f"{exc.code}: {exc.message}"
            t_end = time.time()
            big.update(seconds=round(time.perf_counter() - t, 3), refused=refused, message=message[:160])
        await anyio.sleep(0.5)
        pinger.stdin.close()
        pings = json.loads(pinger.stdout.readline())
    finally:
        pinger.kill()
    during = [d for at, d in pings if t_start <= at <= t_end + 0.5]  # answered while the big request was in flight
    idle = [d for at, d in pings if at < t_start]
    return {
        "big_request": big,
        "pings": len(during),
        "ping_median_ms": round(statistics.median(during) * 1000, 1) if during else None,
        "ping_max_ms": round(max(during) * 1000, 1) if during else None,
        "idle_ping_median_ms": round(statistics.median(idle) * 1000, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--calls", type=int, default=50, help="calls per client")
    p.add_argument("--registry", help="registry database (default: the server's default)")
    p.add_argument("--selector", choices=["retrieval", "llm"], default="retrieval")
    p.add_argument("--mode", choices=["auto", "legacy"], default="auto", help="protocol era of the clients")
    p.add_argument("--llm-instances", type=int, default=1, help="DIFFAGENT_LLM_INSTANCES of the server")
    p.add_argument("--llm-threads", type=int, default=2, help="DIFFAGENT_LLM_THREADS of the server")
    args = p.parse_args()

    port = free_port()
    server = start_server(args, port)
    try:
        result = anyio.run(run, f"http://127.0.0.1:{port}/mcp", args)
        result["llm_instances"], result["llm_threads"] = args.llm_instances, args.llm_threads
        result["stall_probe"] = anyio.run(stall_probe, f"http://127.0.0.1:{port}/mcp")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, RESULTS)
    print(
        f"{result['clients']} clients x {result['calls_per_client']} select_t2i_api calls over HTTP "
        f"({result['selector']} selector, {result['mode']} protocol, {result['cpus']} CPUs)"
    )
    print(f"ok {result['ok']}, failures {result['failures']}")
    print(
        f"latency p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, p99 {result['p99_ms']} ms, "
        f"max {result['max_ms']} ms"
    )
    print(
        f"throughput {result['throughput_per_s']} calls/s (wall {result['wall_s']} s; warm-up {result['warmup_s']} s)"
    )
    sp = result["stall_probe"]
    print(
        f"stall probe: a 20,000-LoRA render_image took {sp['big_request']['seconds']} s "
        f"(refused: {sp['big_request']['refused']}); {sp['pings']} pings meanwhile, "
        f"median {sp['ping_median_ms']} ms, "
        f"max {sp['ping_max_ms']} ms (idle: median {sp['idle_ping_median_ms']} ms)"
    )
    for f in result["failure_samples"]:
        print("  failure:", f)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
