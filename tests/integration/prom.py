"""Start a real Prometheus (Debian package) for tests: loopback, free port, temp config and storage.

`start_prometheus(targets, workdir)` installs the binary through scripts/system-deps.sh when it is
missing (the project's own set-up; CI runs as root), writes a scrape config for `targets`
("host:port" strings, scraped every second) and waits until the server answers /-/ready.
`backfill(openmetrics_text, workdir)` turns OpenMetrics text into TSDB blocks with `promtool`
(same Debian package) in `workdir/data`, so a server started on that dir has the history at once.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_prometheus() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        subprocess.run(["bash", "scripts/system-deps.sh"], cwd=ROOT, check=True)
        binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed and scripts/system-deps.sh could not install it")
    return binary


@dataclass
class PromServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def wait_for_series(self, promql: str, *, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
            if r.ok and r.json()["data"]["result"]:
                return
            time.sleep(0.5)
        raise TimeoutError(f"no result for {promql!r} after {timeout_s}s; log: {self.log.read_text()[-2000:]}")


def backfill(openmetrics: str, workdir: Path) -> Path:
    """Write blocks for `openmetrics` (must end with `# EOF`) into `workdir/data`; returns it."""
    ensure_prometheus()
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("promtool missing (Debian package prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "backfill.om"
    src.write_text(openmetrics)
    data = workdir / "data"
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(src), str(data)],
        check=True,
        capture_output=True,
    )
    return data


def start_prometheus(
    targets: list[str], workdir: Path, *, scrape_interval_s: float = 1.0, retention: str = "1d"
) -> PromServer:
    binary = ensure_prometheus()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "prometheus.yml"
    cfg.write_text(
        "global:\n"
        f"  scrape_interval: {scrape_interval_s:g}s\n"
        f"  evaluation_interval: {scrape_interval_s:g}s\n"
        "scrape_configs:\n"
        "  - job_name: twin\n"
        "    static_configs:\n"
        f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
    )
    port = free_port()
    log = workdir / "prometheus.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.retention.time={retention}",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = PromServer(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{server.url}/-/ready", timeout=1).ok:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"prometheus not ready in 20 s: {log.read_text()[-2000:]}")
