"""Shared fixtures: a small registry built from synthetic Civitai items (no shared data, no network)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pg_binary(name: str) -> str | None:
    """PostgreSQL's ``initdb`` / ``pg_ctl``: on PATH, else in Debian's versioned folder (the newest version)."""
    import shutil

    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return str(versions[-1]) if versions else None


#: where the tests' registries live: SQLite files, or with DIFFAGENT_TEST_REGISTRY=postgres databases of a
#: throwaway PostgreSQL cluster (``.ci/run`` runs the registry suite both ways)
REGISTRY_BACKEND = os.environ.get("DIFFAGENT_TEST_REGISTRY", "sqlite")
if REGISTRY_BACKEND not in ("sqlite", "postgres"):
    raise ValueError(f"DIFFAGENT_TEST_REGISTRY={REGISTRY_BACKEND!r}: use sqlite or postgres")


def pytest_configure(config):
    if REGISTRY_BACKEND == "postgres" and not (pg_binary("initdb") and pg_binary("pg_ctl")):
        # asked for explicitly: a run that skipped every registry test would pass without testing anything
        raise pytest.UsageError(
            "DIFFAGENT_TEST_REGISTRY=postgres needs PostgreSQL's initdb and pg_ctl (on PATH or "
            "under /usr/lib/postgresql/<version>/bin); install the postgresql package"
        )


def pytest_collection_modifyitems(config, items):
    if REGISTRY_BACKEND != "postgres":
        return
    skip = pytest.mark.skip(reason="about the SQLite file itself; this run keeps registries on PostgreSQL")
    for item in items:
        if "sqlite_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def new_registry(tmp_path_factory, request):
    """``new_registry(name)``: the location of a registry that does not exist yet: a path in a fresh temporary
    folder, or (``DIFFAGENT_TEST_REGISTRY=postgres``) the URL of a new empty database of the session's cluster."""
    if REGISTRY_BACKEND == "sqlite":
        return lambda name="registry": tmp_path_factory.mktemp(name) / f"{name}.db"
    import uuid

    import psycopg

    server = request.getfixturevalue("postgres_url")
    # a database's derived indexes are cached under the data folder (a file's beside it): keep them in the session
    os.environ.setdefault("DIFFAGENT_DATA_DIR", str(tmp_path_factory.mktemp("data")))

    def make(name: str = "registry") -> str:
        database = f"{name.lower()[:20]}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        return server.replace("@/postgres?", f"@/{database}?")

    return make


@pytest.fixture(scope="session")
def embedder():
    from diffagent.registry.embeddings import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def tiny_registry_path(tmp_path_factory, embedder, new_registry) -> Path | str:
    """A registry with 11 synthetic models (SD 1.5 + SDXL, LoRAs, an embedding, one NSFW), with vectors."""
    from civitai_fixtures import write_jsonl

    from diffagent.registry.importer import import_path

    d = tmp_path_factory.mktemp("registry")
    src = write_jsonl(d / "items.jsonl")
    db = new_registry("tiny")
    import_path(src, db, embedder=embedder)
    return db


@pytest.fixture()
def tiny_registry_copy(tiny_registry_path, new_registry):
    """A copy of the tiny registry that a test may change (made by ``registry copy``, on either backend)."""
    from diffagent.registry.copy import copy_registry

    dest = new_registry("copy")
    copy_registry(tiny_registry_path, dest)
    return dest


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
def postgres_server():
    """A throwaway PostgreSQL cluster of this test session: ``initdb`` in a temporary folder, reachable only through
    a Unix socket there (no TCP port at all), stopped at the end. Skips, saying why, where the binaries or psycopg
    are absent. ``initdb`` refuses to run as root, so as root the cluster runs as the ``postgres`` user."""
    import shutil
    import subprocess

    pytest.importorskip("psycopg", reason="psycopg is not installed (the 'postgres' extra)")
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL's initdb / pg_ctl are neither on PATH nor under /usr/lib/postgresql")
    import tempfile

    as_user: list[str] = []
    # not under pytest's basetemp: another pytest session started meanwhile (a second terminal, CI jobs side by side)
    # resets pytest-of-<user> to mode 0700, which would lock the server, running as another user, out of its data
    root = Path(tempfile.mkdtemp(prefix="diffagent-pg-"))
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
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "diffagent"], check=True, capture_output=True
    )
    options = f"-k {root} -c listen_addresses='' -p {port}"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(root / "server.log"), "-o", options, "start"],
        check=True,
        capture_output=True,
    )

    def restart() -> None:
        """Restart the server (every open connection is dropped)."""
        subprocess.run(
            [
                *as_user,
                pg_ctl,
                "-D",
                str(data),
                "-m",
                "fast",
                "-w",
                "-l",
                str(root / "server.log"),
                "-o",
                options,
                "restart",
            ],
            check=True,
            capture_output=True,
        )

    try:
        yield SimpleNamespace(url=f"postgresql://diffagent@/postgres?host={root}&port={port}", restart=restart)
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """The URL of the throwaway cluster's ``postgres`` database (``postgres_server``)."""
    return postgres_server.url
