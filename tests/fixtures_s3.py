"""A real S3 server for the tests: moto's server mode on 127.0.0.1 (a free port), reached
with s3fs like any S3 endpoint; dummy credentials in the environment."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    @property
    def cli_options(self) -> list[str]:
        return ["--storage-option", f"endpoint_url={self.endpoint}"]

    @property
    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """A moto S3 server with one empty bucket, for the module's tests."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        # moto keeps its buckets per Python process: a fresh name for each module's server
        srv = S3Server(f"http://127.0.0.1:{port}", f"eastkd-test-{uuid.uuid4().hex[:8]}")
        srv.fs.mkdir(srv.bucket)
        yield srv
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _fresh_access() -> Iterator[None]:
    """Each test starts and ends with no storage options configured."""
    from eastkd.store import configure_access

    configure_access()
    yield
    configure_access()
