"""Shared fixtures: a small registry built from synthetic Civitai items (no shared data, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def embedder():
    from diffagent.registry.embeddings import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def tiny_registry_path(tmp_path_factory, embedder) -> Path:
    """A registry with 11 synthetic models (SD 1.5 + SDXL, LoRAs, an embedding, one NSFW), with vectors."""
    from civitai_fixtures import write_jsonl

    from diffagent.registry.importer import import_path

    d = tmp_path_factory.mktemp("registry")
    src = write_jsonl(d / "items.jsonl")
    db = d / "registry.db"
    import_path(src, db, embedder=embedder)
    return db


@pytest.fixture()
def tiny_registry(tiny_registry_path, embedder):
    from diffagent.registry.store import Registry

    reg = Registry.open(tiny_registry_path, embedder=embedder)
    yield reg
    reg.close()


@pytest.fixture()
def shared_data() -> Path:
    if not (SHARED_DATA / "civitai-2023-07" / "models.jsonl.gz").exists():
        pytest.skip(f"shared Civitai data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A throwaway PostgreSQL cluster of this test session: ``initdb`` in a temporary folder, reachable only through
    a Unix socket there (no TCP port at all), stopped at the end. Skips, saying why, where the binaries or psycopg
    are absent. ``initdb`` refuses to run as root, so as root the cluster runs as the ``postgres`` user."""
    import shutil
    import subprocess

    pytest.importorskip("psycopg", reason="psycopg is not installed (the 'postgres' extra)")
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL's initdb / pg_ctl are not on PATH")
    as_user: list[str] = []
    root = tmp_path_factory.mktemp("postgres")
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: initdb cannot run")
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        root.chmod(0o755)
        for parent in root.parents:  # the server must reach its socket folder
            if parent == Path("/") or parent.stat().st_mode & 0o001:
                break
            parent.chmod(parent.stat().st_mode | 0o001)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", 50000 + os.getpid() % 10000
    subprocess.run([*as_user, "initdb", "-D", str(data), "-A", "trust", "-U", "diffagent"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-w", "-l", str(root / "server.log"), "-o",
                    f"-k {root} -c listen_addresses='' -p {port}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://diffagent@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
