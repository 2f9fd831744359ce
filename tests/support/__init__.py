"""What the tests share, each written once: fake_s3 (fleet's S3 client faked in memory, and a
small HTTP server answering presigned URLs), procwatch (what every local process's argv and
the hosts' files hold, read once or again and again while a job runs), bed (the test bed of
scripts/local-cluster and the real CLI run against it: tests/integration and tests/scale),
s3server (a real S3 server, SeaweedFS), serving (a real `fleet serve` on loopback: its port,
argv, start and stop, and the `served` fixture). Imported as `support.NAME`: pyproject's pytest
`pythonpath` puts tests/ on sys.path. tests/hostprotocol stays a package of its own: the
host protocol's fake and its scenario table, type-checked with fleet."""

import pkgutil

import pytest

# Their asserts say what they compared, as the tests' own do: rewritten when first imported.
pytest.register_assert_rewrite(*(f"{__name__}.{module.name}" for module in pkgutil.iter_modules(__path__)))
