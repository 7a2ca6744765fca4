"""DATABASE_READ_URL: the lookups read from a replica when one is named; writes never go there.

The "replica" here is a second database on the test server. Its contents are the primary's at the
moment it was copied, as a replica's are the primary's some replication lag ago.
"""

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from conftest import drop_database, make_app, run_autocommit, throwaway_database
from helpers import TASK, all_contacts, identify
from identity.settings import BadSetting

LOOKUPS = ["/contacts/2", "/contacts?email=mcfly@hillvalley.edu", "/contacts/4/history", "/contacts/3/path/4"]


def rows(url):
    """Every row of the contact table at url."""
    conn = psycopg2.connect(url)
    try:
        return all_contacts(conn)
    finally:
        conn.close()


def close_pools(app):
    """Close the app's idle connections, to both servers."""
    for pool in ("identity_pool", "identity_read_pool"):
        app.extensions[pool].closeall()


@pytest.fixture
def replica(server_url, template_database):
    """(name, URL) of a migrated, empty database that stands in for a replica."""
    name, url = throwaway_database(server_url, template_database)
    yield name, url
    drop_database(server_url, name)


@pytest.fixture
def app(database_url, replica):
    app = make_app(database_url, DATABASE_READ_URL=replica[1])
    yield app
    close_pools(app)


def catch_up(app, server_url, database_url, replica_name):
    """Make the replica an exact copy of the primary, as replication does after a while."""
    close_pools(app)
    drop_database(server_url, replica_name)
    copy, _ = throwaway_database(server_url, parse_dsn(database_url)["dbname"])
    run_autocommit(server_url, "ALTER DATABASE {} RENAME TO {}", copy, replica_name)


def test_writes_go_to_the_primary_and_lookups_to_the_replica(app, server_url, database_url, replica):
    client = app.test_client()
    assert [identify(client, *request)[0] for request in TASK] == [200] * len(TASK)
    assert len(rows(database_url)) == 4
    assert rows(replica[1]) == []
    # The primary holds every customer looked up here; the replica, not yet caught up, none.
    assert [client.get(path).status_code for path in LOOKUPS] == [404] * len(LOOKUPS)
    catch_up(app, server_url, database_url, replica[0])
    assert [client.get(path).status_code for path in LOOKUPS] == [200] * len(LOOKUPS)
    assert client.get("/contacts/4").get_json()["contact"]["primaryContatctId"] == 3


def test_a_write_after_the_copy_is_not_seen_by_lookups_until_the_replica_catches_up(
    app, server_url, database_url, replica
):
    client = app.test_client()
    catch_up(app, server_url, database_url, replica[0])
    assert identify(client, "doc@hillvalley.edu", "555")[0] == 200
    assert rows(replica[1]) == []  # the write went to the primary alone
    assert client.get("/contacts?email=doc@hillvalley.edu").status_code == 404
    catch_up(app, server_url, database_url, replica[0])
    assert client.get("/contacts?email=doc@hillvalley.edu").get_json()["contact"]["primaryContatctId"] == 1


def test_identify_reads_what_it_links_from_the_primary(app):
    client = app.test_client()
    # The replica is empty: were identify's reads sent there, the second request would not link.
    identify(client, "lorraine@hillvalley.edu", "123456")
    status, body = identify(client, "mcfly@hillvalley.edu", "123456")
    assert (status, body["contact"]["secondaryContactIds"]) == (200, [2])


def test_a_read_url_libpq_cannot_read_stops_the_start(database_url):
    with pytest.raises(BadSetting, match="DATABASE_READ_URL"):
        make_app(database_url, DATABASE_READ_URL="postgresql://[nonsense")


def test_without_a_read_url_the_lookups_read_the_primary(database_url):
    app = make_app(database_url)
    client = app.test_client()
    identify(client, "lorraine@hillvalley.edu", "123456")
    assert client.get("/contacts/1").status_code == 200
    assert "identity_read_pool" not in app.extensions
    app.extensions["identity_pool"].closeall()
