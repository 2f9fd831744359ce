"""fleet's host protocol as the tests see it: FakeHost (fakehost.py), a Python host that plays
the session over a ScriptedTransport, and the one table of scenarios (scenarios.py) that runs
against both it (tests/unit) and the real session on the test bed (tests/integration)."""
