"""Unit tests touch no network and no Docker of the machine's: the controller's Docker (for
images it could push) answers that it has no image, a registry is out of reach (the hosts
pull the ImageUri as named, as when the controller cannot ask the registry), and the
controller's Docker config is an empty directory, and no host's engine API is asked
(FLEET_ENGINE_API=0: the hosts' scripts answer, as the fakes play them; fleet.engine's own
tests open an Engine directly). Tests of those parts call them directly."""

from __future__ import annotations

import pytest

from fleet.image import registry, supply


@pytest.fixture(autouse=True)
def _no_network_for_images(monkeypatch, tmp_path_factory):
    async def no_local_image(reference: str, *, timeout: float):
        return None

    async def unreachable(*args, **kwargs):
        raise registry.Unreachable("no network in unit tests")

    monkeypatch.setattr(supply, "inspect_local", no_local_image)
    monkeypatch.setattr(registry, "resolve", unreachable)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))
    monkeypatch.setenv("FLEET_ENGINE_API", "0")
