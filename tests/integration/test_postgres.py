"""PostgreSQL for both databases: Prefect's (`PREFECT_API_DATABASE_CONNECTION_URL`) and our store.

Starts a real PostgreSQL (Debian package; scripts/system-deps.sh installs it) with initdb + pg_ctl
in a temp dir on a free loopback port, as the `postgres` user when the tests run as root (the
server refuses to run as root). Then a Prefect server on that PostgreSQL runs `scale_cluster`
whose store is also on PostgreSQL, and the store row links to the flow run the API reports.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_prefect_server import client, free_port, start_prefect_server, stop

pytestmark = pytest.mark.integration


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"PostgreSQL's {name} not found: run `bash scripts/system-deps.sh` (installs postgresql)")
    return found[-1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1; yields a `host:port` with trust auth for user postgres."""
    root = Path(tempfile.mkdtemp(prefix="hs-pg-"))
    data = root / "data"
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL will not run as root: hand the dir to the `postgres` user the package creates.
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE prefect")
            conn.execute("CREATE DATABASE heteroscale")
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_store_round_trip_on_postgres(postgres: str) -> None:
    from tasks.store import Store

    store = Store(f"postgresql+psycopg://postgres@{postgres}/heteroscale")
    run_id = store.start_run(cluster="pg", now_s=1.0, mode="apply", backend="twin", flow_run_id="abc")
    store.finish_run(run_id, status="held", summary="nothing to do")
    (run,) = store.runs("pg")
    assert (run.id, run.status, run.flow_run_id, run.summary) == (run_id, "held", "abc", "nothing to do")


def test_prefect_server_and_store_on_postgres(postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path / "prefect"
    home.mkdir()
    port = free_port()
    t0 = time.monotonic()
    proc = start_prefect_server(
        home, port, {"PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@{postgres}/prefect"}
    )
    ready_s = time.monotonic() - t0
    url = f"http://127.0.0.1:{port}/api"
    store_url = f"postgresql+psycopg://postgres@{postgres}/heteroscale"
    try:
        from flows.scale_cluster import scale_cluster
        from tests.conftest import DEMO_CONFIG

        monkeypatch.setenv("HETEROSCALE_DATA_DIR", str(tmp_path / "data"))  # the twin's state file
        with temporary_settings({PREFECT_API_URL: url}):
            state = scale_cluster(config_path=str(DEMO_CONFIG), database_url=store_url, return_state=True)
        assert state.is_completed(), state
        with client(url) as c:
            fr = c.read_flow_run(state.state_details.flow_run_id)
            assert fr.state.is_completed()
        from tasks.store import Store

        linked = [r for r in Store(store_url).runs("demo") if r.flow_run_id == str(fr.id)]
        assert len(linked) == 1 and linked[0].status in ("applied", "held")
        print(f"Prefect server on PostgreSQL ready in {ready_s:.1f} s")
    finally:
        stop(proc)
