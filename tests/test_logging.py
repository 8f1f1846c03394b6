"""``bot.logging``: what reaches the log at DEBUG, with the real Kubernetes client talking to the
fake API server over HTTP (whose debug lines quote response bodies)."""

from __future__ import annotations

import base64
import io
import json
import logging

import bcrypt
import pytest
import sqlalchemy as sa
from kubernetes import client

from bot import logging as log
from provisioning.store import Database


def test_a_secret_body_never_reaches_the_log_at_debug(
    debug_log: io.StringIO, kube_api_client: client.ApiClient
) -> None:
    hashed = bcrypt.hashpw(b"correct horse battery", bcrypt.gensalt(4))
    encoded_hash = base64.b64encode(hashed).decode()
    plain_value = base64.b64encode(b"not-for-the-logs-0123").decode()
    core = client.CoreV1Api(kube_api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="auth")))
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="dex-passwords", namespace="auth"),
        data={"alice": encoded_hash, "other": plain_value},
    )
    core.create_namespaced_secret("auth", secret)
    core.read_namespaced_secret("dex-passwords", "auth")
    # and a body quoted by our own code (an exception message, a debug line)
    logging.getLogger("provisioning.dex").debug("patched: %s", json.dumps({"data": {"alice": encoded_hash}}))
    logging.getLogger("provisioning.dex").debug("password hash %s", encoded_hash)

    written = debug_log.getvalue()
    assert "patched" in written  # our own DEBUG lines are kept, scrubbed
    for leaked in (encoded_hash, plain_value, encoded_hash[:24], hashed.decode()):
        assert leaked not in written


def test_the_scrubber_keeps_ordinary_metadata() -> None:
    assert log.scrub('metadata: {"name": "x"}') == 'metadata: {"name": "x"}'


def test_a_failing_statements_parameters_never_reach_the_log_or_the_error(
    database: Database, debug_log: io.StringIO
) -> None:
    """A database error names the statement, never its values (``hide_parameters``): the values
    of the edge's writes are a command's text and a live ``response_url`` (atk4 finding 2)."""
    secret = "https://hooks.slack.com/commands/T1/2/not-for-the-logs-0123"
    with pytest.raises(sa.exc.DBAPIError) as failed, database.engine.begin() as conn:
        conn.execute(sa.text("insert into no_such_table (url) values (:url)"), {"url": secret})
    logging.getLogger("provisioning.store").error("insert failed", exc_info=failed.value)
    assert "no_such_table" in debug_log.getvalue()  # the error itself is logged
    assert secret not in debug_log.getvalue() and secret not in str(failed.value)
    assert "not-for-the-logs" not in repr(failed.value)
