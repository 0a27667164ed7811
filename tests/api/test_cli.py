"""`visioninapp-api`: help everywhere, migrations, and one clear line on a bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visioninapp.api.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "migrate", "consume"):
        assert command in result.stdout
        assert run(command, "--help").returncode == 0


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    """The command builds exactly the models' schema at the newest revision, and a rerun is a no-op."""
    import sqlalchemy
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from visioninapp.api.db import Base, alembic_config

    result = run("migrate", env={"VISIONINAPP_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stdout
    database = tmp_path / "visioninapp.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []  # every table, column and index
            heads = set(ScriptDirectory.from_config(alembic_config(f"sqlite:///{database}")).get_heads())
            assert set(context.get_current_heads()) == heads and heads
            tables = set(sqlalchemy.inspect(connection).get_table_names())
        assert set(Base.metadata.tables) <= tables
        before = database.read_bytes()
        again = run("migrate", env={"VISIONINAPP_DATA_DIR": str(tmp_path)})
        assert again.returncode == 0, again.stderr
        with engine.connect() as connection:
            assert set(MigrationContext.configure(connection).get_current_heads()) == heads
        assert len(database.read_bytes()) == len(before)
    finally:
        engine.dispose()


def test_windows_stored_before_cameras_are_kept_without_camera_numbers(tmp_path: Path) -> None:
    """0002 adds `edge_windows.cameras` to a table that has windows: they stay, with NULL (no camera
    numbers were reported), and new windows store theirs."""
    import sqlalchemy
    from alembic import command

    from visioninapp.api.db import Database, EdgeWindow, alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0001")
    db = Database(url)
    with db.engine.begin() as connection:
        connection.execute(
            sqlalchemy.text(
                "INSERT INTO edge_windows (project_name, deployment, node, revision, window_start, "
                "window_end, requests, errors, detections_per_class, low_confidence, ready, stream_offset) "
                "VALUES ('p', 'd', 'n', 'r', '2026-11-30 10:00:00', '2026-11-30 10:00:15', 5, 0, '{}', "
                "0, 1, 7)"
            )
        )
    db.migrate()
    with db.session() as session:
        (old,) = session.scalars(sqlalchemy.select(EdgeWindow))
        assert (old.requests, old.cameras) == (5, None)
        session.add(
            EdgeWindow(
                project_name="p",
                deployment="d",
                node="n",
                revision="r",
                window_start=old.window_start,
                window_end=old.window_end,
                requests=1,
                errors=0,
                stream_offset=8,
                cameras=[{"name": "dock", "state": "streaming"}],
            )
        )
    with db.session() as session:
        new = session.scalars(sqlalchemy.select(EdgeWindow).where(EdgeWindow.stream_offset == 8)).one()
        assert new.cameras == [{"name": "dock", "state": "streaming"}]
    db.engine.dispose()


def test_serve_without_kubernetes_configuration_says_what_to_set(tmp_path: Path) -> None:
    result = run(
        "serve",
        "--port",
        "1",
        env={"VISIONINAPP_DATA_DIR": str(tmp_path), "VISIONINAPP_KUBECONFIG": "/nonexistent"},
    )
    assert result.returncode == 1
    assert "VISIONINAPP_KUBECONFIG" in result.stderr
    assert "Traceback" not in result.stderr


def test_replicas_starting_together_migrate_one_at_a_time(tmp_path: Path, mariadb_server: str) -> None:
    """Two API replicas migrate one new database at once: both succeed (a named lock), on MariaDB
    and on SQLite (a file lock)."""
    import uuid

    import sqlalchemy

    name = f"vt_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(f"{mariadb_server}/")
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        for url in (f"{mariadb_server}/{name}", f"sqlite:///{tmp_path / 'api.db'}"):
            env = {**os.environ, "VISIONINAPP_DATA_DIR": str(tmp_path), "VISIONINAPP_DATABASE_URL": url}
            replicas = [
                subprocess.Popen(
                    [sys.executable, "-m", "visioninapp.api.main", "migrate"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(3)
            ]
            for replica in replicas:
                _, errors = replica.communicate(timeout=180)
                assert replica.returncode == 0, f"{url}: {errors}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
