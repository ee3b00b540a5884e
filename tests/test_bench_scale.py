"""`sweep bench scale`: simulated workers on real storage, directly and through PgBouncer."""

from __future__ import annotations

import pytest

from sweep_bench.scale import run_once

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("route", ["direct", "pgbouncer"])
def test_simulated_workers_meet_the_budget_within_the_connection_budget(
    route: str, pg_fresh_url: str, request: pytest.FixtureRequest
) -> None:
    from sqlalchemy.engine import make_url

    url = pg_fresh_url
    if route == "pgbouncer":
        bouncer = make_url(request.getfixturevalue("pgbouncer_url"))
        routed = make_url(url).set(host=bouncer.host, port=bouncer.port).update_query_dict(bouncer.query)
        url = routed.render_as_string(hide_password=False)  # with ?pgbouncer=true
    admin = make_url(pg_fresh_url).set(drivername="postgresql").render_as_string(hide_password=False)
    run = run_once("sweep", route, url, admin, 6, trials_per_worker=2, trial_s=0.3, procs=2)
    assert run["errors"] == 0, run["error_kinds"]
    assert run["budget_exact"] and run["trials_done"] == 12
    if route == "direct":
        # Two connections per worker process at most, one at rest (a simulated worker has its own storage).
        assert 1 <= run["server_connections_max"] <= 2 * 6
        assert run["server_connections_median"] <= 6
    else:  # PgBouncer's server connections: its pool (scripts/pgbouncer-test: 20), whatever the clients hold
        assert 1 <= run["server_connections_max"] <= 20
    assert run["wal_bytes_per_trial"] > 0 and run["ask_ms_p50"] > 0
