"""Shared personas and markers.

Personas: `alice` and `bob` are ordinary API users; each owns only what a test gives them.
`alice_client` / `bob_client` are DRF clients authenticated with that user's API key.

Markers: `postgres` / `redis` tests need the real services; `sqlite` tests are about the
embedded default and run only without DATABASE_URL. Where DATABASE_URL / REDIS_URL are
not set they are deselected (the newcomer's `make test`); with STELLO_REQUIRE_SERVICES=1 (CI)
they must run, and a missing service fails the run instead of skipping anything.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import shutil

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from spaces import pgpool
from spaces.apikeys import apikey_create

HAS_POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
HAS_REDIS = bool(os.environ.get("REDIS_URL"))
REQUIRE_SERVICES = os.environ.get("STELLO_REQUIRE_SERVICES") == "1"
# The web console's end-to-end tests drive Debian's Chromium through chromedriver and Selenium.
HAS_BROWSER = bool(shutil.which("chromium") and shutil.which("chromedriver")
                   and importlib.util.find_spec("selenium"))

# On PostgreSQL the hot paths (space checks, the store, API-key lookups) use their own pooled
# connections on the event loop, which cannot see a test's uncommitted transaction: there, tests
# that go through them commit what they create (transactional tests, flushed afterwards).
HOT_PATH_DB = pytest.mark.django_db(transaction=HAS_POSTGRES)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs PostgreSQL (DATABASE_URL)")
    config.addinivalue_line("markers", "redis: needs Redis (REDIS_URL)")
    config.addinivalue_line("markers", "sqlite: about the embedded SQLite default (deselected "
                                       "when the run uses PostgreSQL)")
    config.addinivalue_line("markers", "browser: drives headless Chromium (chromium, "
                                       "chromium-driver, selenium); required, not deselected, "
                                       "with STELLO_REQUIRE_SERVICES=1")
    config.addinivalue_line("markers", "servers: starts real server processes "
                                       "(daphne, or uvicorn with STELLO_TEST_SERVER=uvicorn)")
    if REQUIRE_SERVICES and not (HAS_POSTGRES and HAS_REDIS):
        raise pytest.UsageError(
            "STELLO_REQUIRE_SERVICES=1 but DATABASE_URL (postgresql://) or REDIS_URL is missing"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = {"postgres": not HAS_POSTGRES, "redis": not HAS_REDIS, "sqlite": HAS_POSTGRES,
               # In CI a missing browser fails the browser tests (their fixture says why).
               "browser": not HAS_BROWSER and not REQUIRE_SERVICES}
    keep, drop = [], []
    for item in items:
        needs = [m for m, absent in missing.items() if absent and item.get_closest_marker(m)]
        (drop if needs else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.obj = closing_the_loops_pool(item.obj)


def closing_the_loops_pool(test):
    """An async test ends by closing its event loop's hot-path pool. Left open, the loop's end
    cancels the pool's worker tasks, and psycopg_pool's worker swallows a cancellation that
    lands while it runs a maintenance task (a connection being added or returned) and waits
    on its queue again: the runner then waits for it forever (a run of the suite hung so).
    The server closes the pool itself (lifespan shutdown); a test may simply stop."""

    @functools.wraps(test)
    async def run(*args, **kwargs):
        try:
            await test(*args, **kwargs)
        finally:
            await pgpool.pools.aclose_current()

    return run


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> None:
    """One PostgreSQL test database per pytest process, so parallel runs never collide."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.postgresql":
        db.setdefault("TEST", {})["NAME"] = f"test_{db['NAME']}_{os.getpid()}"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Before pytest-django drops the PostgreSQL test database, end the connections that worker
    threads (sync_to_async, server subprocesses) still hold, or the DROP would fail."""
    yield
    from django.db import connection

    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


def make_user(username: str):
    return get_user_model().objects.create_user(username=username, password=None)


def client_for(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=key)
    return client


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def alice_key(alice) -> str:
    return apikey_create(user=alice, name="alice test key")[1]


@pytest.fixture
def bob_key(bob) -> str:
    return apikey_create(user=bob, name="bob test key")[1]


@pytest.fixture
def alice_client(alice_key) -> APIClient:
    return client_for(alice_key)


@pytest.fixture
def bob_client(bob_key) -> APIClient:
    return client_for(bob_key)


@pytest.fixture
def anonymous_client() -> APIClient:
    return APIClient()


@pytest.fixture(autouse=True)
def no_quotas_yet() -> None:
    """Every test starts with a database without usage quotas; tell the per-process quota book
    so, or its first read could land inside a test's counted queries. A quota a test saves
    reaches the book through the ORM's signals."""
    from sessions_app.accounting.quotas import quota_book

    quota_book.assume(frozenset())


@pytest.fixture
def executor():
    """A migration executor (tests of migrations), with the database put back at the latest
    state afterwards."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    run = MigrationExecutor(connection)
    latest = run.loader.graph.leaf_nodes()
    yield run
    run = MigrationExecutor(connection)
    run.migrate(latest)
