"""Load on `janus-like serve`: the same requests sent one at a time, then by N concurrent clients.

Starts the server (a subprocess on a free 127.0.0.1 port), sends a fixed list of seeded requests
(chat, text-to-image, interleaved) first one after another, then from `--clients` threads at
once, and prints for each phase: images/s, text tokens/s (chat completion tokens), p50/p95/max
latency, failures and 429s, the server's resident memory, and the concurrent/sequential ratio.

    python benchmarks/serve_load.py                       # mixed: 16 clients, 32 requests
    python benchmarks/serve_load.py --scenario t2i        # 16 text-to-image clients, 1 image + guidance each
    python benchmarks/serve_load.py --model DIR --mix chat=1,image=1,interleave=0 --requests 64
    python benchmarks/serve_load.py --random 100m --scenario t2i   # a random ~100M model (benchmarks/generate.py's)

Every request has a timeout (--request-timeout) and each phase a time limit (--time-limit): no
request is issued after it, and what was not sent counts as a failure."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "bench-model"
PROMPTS = [
    "a red circle in the center",
    "a blue square on the left",
    "a green triangle on the right",
    "a yellow circle on the left",
]


@dataclass
class Outcome:
    kind: str
    seconds: float
    status: int  # HTTP status, 0 for a transport error or a request never sent
    images: int = 0
    text_tokens: int = 0


@dataclass
class Phase:
    name: str
    wall: float
    outcomes: list[Outcome] = field(default_factory=list)
    rss_mb: float = 0.0

    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    def images_per_s(self) -> float:
        return sum(o.images for o in self.ok()) / self.wall

    def tokens_per_s(self) -> float:
        return sum(o.text_tokens for o in self.ok()) / self.wall

    def latency(self, q: float) -> float:
        times = sorted(o.seconds for o in self.ok())
        return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")

    def line(self) -> str:
        failed = [o for o in self.outcomes if o.status not in (200, 429)]
        rejected = sum(o.status == 429 for o in self.outcomes)
        return (
            f"{self.name:<12} {len(self.ok()):>4} ok {len(failed):>3} failed {rejected:>3} x429  "
            f"wall {self.wall:7.2f} s  {self.images_per_s():7.2f} images/s  {self.tokens_per_s():8.1f} text tok/s  "
            f"latency p50 {self.latency(0.5):6.2f} p95 {self.latency(0.95):6.2f} max {self.latency(1.0):6.2f} s  "
            f"server RSS {self.rss_mb:7.1f} MiB"
        )


def requests_for(args: argparse.Namespace) -> list[dict]:
    """The seeded request list both phases send: kinds in the --mix proportions, round-robin."""
    if args.scenario == "t2i":
        mix = {"image": 1}
    else:
        mix = {k: int(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    kinds = [k for k, weight in mix.items() for _ in range(weight)]
    if not kinds or set(kinds) - {"chat", "image", "interleave"}:
        sys.exit(f"--mix {args.mix!r}: give weights for chat, image and interleave, e.g. chat=2,image=1,interleave=1")
    out = []
    for i in range(args.requests):
        kind, prompt = kinds[i % len(kinds)], PROMPTS[i % len(PROMPTS)]
        if kind == "image":
            body = {"model": MODEL_ID, "prompt": prompt, "n": 1, "seed": i}
            if args.cfg_scale is not None:
                body["cfg_scale"] = args.cfg_scale
        elif kind == "chat":
            body = {
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": f"Describe {prompt}."}],
                "max_tokens": args.max_tokens,
                "seed": i,
                "temperature": 1.0,
                "ignore_eos": True,
            }
        else:
            body = {
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": f"Draw {prompt}, then describe it."}],
                "max_tokens": args.max_tokens,
                "seed": i,
                "modalities": ["text", "image"],
                "max_images": 1,
            }
        out.append({"kind": kind, "body": body})
    return out


def send(client: httpx.Client, request: dict) -> Outcome:
    path = "/v1/images/generations" if request["kind"] == "image" else "/v1/chat/completions"
    began = time.perf_counter()
    try:
        response = client.post(path, json=request["body"])
    except httpx.HTTPError:
        return Outcome(request["kind"], time.perf_counter() - began, 0)
    seconds = time.perf_counter() - began
    if response.status_code != 200:
        return Outcome(request["kind"], seconds, response.status_code)
    body = response.json()
    if request["kind"] == "image":
        return Outcome("image", seconds, 200, images=len(body["data"]))
    content = body["choices"][0]["message"]["content"]
    images = len(re.findall(r"!\[image \d+\]\(data:image/png;base64,", content))
    tokens = body["usage"]["completion_tokens"] if request["kind"] == "chat" else 0
    return Outcome(request["kind"], seconds, 200, images=images, text_tokens=tokens)


def run_phase(name: str, base: str, requests: list[dict], clients: int, args: argparse.Namespace) -> Phase:
    """Send `requests` from `clients` threads (1: one at a time), none issued after the time limit."""
    deadline = time.monotonic() + args.time_limit
    pending = iter(requests)

    def worker() -> list[Outcome]:
        done = []
        with httpx.Client(base_url=base, timeout=args.request_timeout) as client:
            for request in pending:  # the iterator is shared: each request goes to one thread
                if time.monotonic() > deadline:
                    done.append(Outcome(request["kind"], 0.0, 0))
                    continue
                done.append(send(client, request))
        return done

    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [f.result() for f in [pool.submit(worker) for _ in range(clients)]]
    phase = Phase(name, time.perf_counter() - began, [o for r in results for o in r])
    phase.rss_mb = server_rss(base) / 2**20
    return phase


def server_rss(base: str) -> float:
    """The server's resident memory in bytes, from /metrics (NaN, said on stderr, when it does not answer)."""
    try:
        text = httpx.get(f"{base}/metrics", timeout=30).text
    except httpx.HTTPError as e:
        print(f"serve_load: /metrics did not answer ({type(e).__name__}); memory not measured", file=sys.stderr)
        return float("nan")
    found = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:  # a free port; the server binds it a moment later
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "janus_like.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch",
        str(args.max_batch),
        "--max-queue",
        str(args.max_queue),
        "--served-model-name",
        MODEL_ID,
    ]
    command += ["--model", args.model] if args.model else []
    command += ["--device", args.device] if args.device else []
    command += ["--compile"] if args.compile else []
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("JANUS_LIKE_API_KEY", None)
    # its log goes to a file: a pipe nobody reads fills up and then blocks the server's next log line
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    server.log = log
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with status {server.returncode}:\n{server_log(server)}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return server, base
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    sys.exit(f"the server did not answer /health within {args.start_timeout:g} s")


def server_log(server: subprocess.Popen) -> str:
    """What the server wrote on stderr so far."""
    server.log.flush()
    server.log.seek(0)
    return server.log.read()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory or hub id (default: the embedded default model)")
    p.add_argument(
        "--random",
        choices=["100m", "1b"],
        default=None,
        help="serve a random model of benchmarks/generate.py's size instead of --model (saved to a "
        "temporary folder; 1b: Janus-Pro-1B shapes, for a GPU)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: the server's: cuda if available)")
    p.add_argument("--compile", action="store_true", help="start the server with --compile")
    p.add_argument(
        "--scenario",
        choices=["mixed", "t2i"],
        default="mixed",
        help="mixed: the --mix of chat, image and interleaved requests; t2i: text-to-image only, "
        "1 image + guidance each (default: mixed)",
    )
    p.add_argument("--clients", type=int, default=16, help="concurrent clients of the second phase, >= 1 (default: 16)")
    p.add_argument("--requests", type=int, default=None, help="requests per phase, >= 1 (default: 2 × clients)")
    p.add_argument(
        "--mix",
        default="chat=1,image=1,interleave=1",
        help="weights of chat, image and interleave requests (default: chat=1,image=1,interleave=1)",
    )
    p.add_argument(
        "--max-tokens", type=int, default=32, help="max_tokens of chat and interleaved requests (default: 32)"
    )
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance of image requests (default: the model's)")
    p.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch (default: 32)")
    p.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue (default: 64)")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request (default: 300)")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds per phase (default: 600)")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds for the server to start (default: 300)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    args.requests = args.requests or 2 * args.clients
    if args.clients < 1 or args.requests < 1:
        p.error("--clients and --requests must be >= 1")
    return args


def save_random_model(size: str, folder: str) -> None:
    """benchmarks/generate.py's random model of `size`, saved where the server can load it."""
    import torch
    from generate import build

    _, model, processor, _ = build(size, "cpu", torch.float32)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as folder:
        if args.random:
            save_random_model(args.random, folder)
            args.model = folder
        report(args, *measure(args))


def measure(args: argparse.Namespace) -> tuple[list[dict], float, Phase, Phase]:
    """Warm the server up, then both phases on the same requests."""
    requests = requests_for(args)
    server, base = start_server(args)
    try:
        run_phase("warm-up", base, requests[:3], 1, args)  # first calls pay one-time costs (allocations, compile)
        idle_rss = server_rss(base) / 2**20
        one = run_phase("one-at-a-time", base, requests, 1, args)
        many = run_phase(f"{args.clients} clients", base, requests, args.clients, args)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        lines = server_log(server).splitlines()
        errors = [i for i, line in enumerate(lines) if "internal error" in line]
        if errors:  # the first one with its traceback
            first = "\n".join(lines[errors[0] : errors[0] + 40])
            print(
                f"serve_load: the server logged {len(errors)} internal error(s); the first:\n{first}", file=sys.stderr
            )
    return requests, idle_rss, one, many


def report(args: argparse.Namespace, requests: list[dict], idle_rss: float, one: Phase, many: Phase) -> None:
    kinds = ", ".join(f"{k} {sum(r['kind'] == k for r in requests)}" for k in ("chat", "image", "interleave"))
    model = f"random {args.random}" if args.random else args.model or "embedded default"
    print(
        f"scenario {args.scenario}: {len(requests)} requests ({kinds}), model {model}, server --max-batch "
        f"{args.max_batch} --max-queue {args.max_queue}; server RSS after warm-up {idle_rss:.1f} MiB"
    )
    print(one.line())
    print(many.line())
    ratio = {
        "wall": one.wall / many.wall,
        "images_per_s": many.images_per_s() / one.images_per_s() if one.images_per_s() else float("nan"),
        "text_tokens_per_s": many.tokens_per_s() / one.tokens_per_s() if one.tokens_per_s() else float("nan"),
    }
    print(
        f"concurrent / one at a time: throughput {ratio['wall']:.2f}x (wall time), images/s "
        f"{ratio['images_per_s']:.2f}x, text tokens/s {ratio['text_tokens_per_s']:.2f}x"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "ratio": ratio,
                    "phases": {
                        p.name: {
                            "wall_s": p.wall,
                            "ok": len(p.ok()),
                            "images_per_s": p.images_per_s(),
                            "text_tokens_per_s": p.tokens_per_s(),
                            "p50_s": p.latency(0.5),
                            "p95_s": p.latency(0.95),
                            "max_s": p.latency(1.0),
                            "rss_mib": p.rss_mb,
                            "statuses": sorted({o.status for o in p.outcomes}),
                        }
                        for p in (one, many)
                    },
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
