"""The job's image on every host: one image, byte-identical everywhere.

Per host (the inventory's `image_source`, `--push-image` forcing `push`):
- `auto`/`push` and the controller has the image (its Docker, or `--image-archive`): the
  host is asked what it has (image-have.sh); it is `present`, or it gets what it lacks
  pushed over its SSH connection (push.py: read once, fed to all such hosts at once);
- `pull` (and `auto` when the controller lacks the image): present beats pull: a host that
  holds the image by the name the job gives uses it, and only for the others does the
  controller resolve the tag to the registry's manifest digest (registry.py) and lend its
  credentials (credentials.py, ECR tokens included) for pulling NAME@DIGEST. No host
  lacking it: no registry and no credentials are asked at all. A registry the controller
  cannot reach: the hosts pull the ImageUri as it is, and the image IDs they report are
  compared instead.

"The same image" is the same config digest (fleet/host/images.sh): what the controller
pushes or finds present is known by it on every engine, through the tag the push gives it
on Docker's containerd store, whose own IDs are manifest digests.

Each host's session (session.sh) waits, once its files are written, for its line:
`instruction(algo)`. Before any container starts, `check_same` refuses hosts whose images
differ; `record` is what describe.json keeps (`AppSpecification.ImageDigest`, `Image`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from fleet import host as scripts
from fleet.errors import ClientError, FleetError
from fleet.fanout import on_each, task_group
from fleet.image import registry
from fleet.image.archive import open_archive
from fleet.image.credentials import credentials_for
from fleet.image.local import LocalImage, inspect_local
from fleet.image.push import (
    DockerSource,
    PushCount,
    PushTarget,
    Source,
    host_has,
    push_image,
    saved_archive,
)
from fleet.image.reference import Reference, parse_reference
from fleet.inventory import Host
from fleet.runtime.console import Console, Progress, host_ranges
from fleet.transport import Transport

log = logging.getLogger(__name__)


@dataclass
class Target:
    """One host, for its image."""

    algo: str
    label: str  # "algo-2 (h2, 10.0.0.12)"
    host: Host
    transport: Transport


@dataclass
class Delivery:
    """How a host got the image (the record's `Image.Hosts`)."""

    how: str  # present | pulled | pushed
    sent: int = 0  # bytes pushed
    local: bool = False  # the controller's image (present by its config digest, or pushed)
    image: str | None = None  # the engine's ID the host's container is created from
    pinned: bool = False  # told to pull the registry's digest (present by it, or pulled)


@dataclass
class _PushProgress:
    """The push's counters as Progress reads them (bytes only)."""

    count: PushCount
    counts_files = False

    @property
    def bytes(self) -> int:
        return self.count.read

    @property
    def host_bytes(self) -> int:
        return sum(self.count.sent.values())

    @property
    def total_bytes(self) -> int:
        return self.count.total


def _size(count: int) -> str:
    """Bytes as people read them: 17 kB, 1.1 MB, 312.5 MB, 2.1 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}" if unit != "kB" else f"{count / scale:.0f} kB"
    return f"{count} bytes"


@dataclass
class ImageSupply:
    uri: str
    console: Console
    docker_timeout: int = 20
    push_image: bool = False
    archive: str | None = None
    insecure: frozenset[str] = frozenset()
    spool_dir: Path = field(default_factory=lambda: Path("/var/tmp"))

    def __post_init__(self) -> None:
        self.reference: Reference = parse_reference(self.uri)
        self.digest: str | None = None  # the registry's, when the tag was resolved
        self.pinned: str | None = None  # what the pulling hosts are told to pull
        self.deliveries: dict[str, Delivery] = {}
        self.auth = "none"  # the pulls' credentials, as notices name them
        self.why = ""  # why the tag was not resolved
        self._steps: dict[str, asyncio.Future[bytes]] = {}  # each host's first line
        self._follows: dict[str, asyncio.Future[bytes]] = {}  # after a `try` it lacked: its pull
        self._answers: dict[str, asyncio.Future[bool]] = {}  # after a `try`: whether it lacked it
        self._supplied: Source | None = None  # what a push reads (the archive indexed once)
        self._local_id: str | None = None  # the controller's image's config digest
        self._cleanup = contextlib.AsyncExitStack()  # a spool file of the controller's image

    # -- what each session is told ------------------------------------------------------------
    @staticmethod
    def _future(futures: dict[str, asyncio.Future], algo: str) -> asyncio.Future:
        if algo not in futures:
            futures[algo] = asyncio.get_running_loop().create_future()
        return futures[algo]

    def _step(self, algo: str) -> asyncio.Future[bytes]:
        return self._future(self._steps, algo)

    async def instruction(self, algo: str) -> bytes:
        """The line (and credentials) this host's session waits for; raises its error."""
        return await asyncio.shield(self._step(algo))

    async def missing(self, algo: str, lacks: bool) -> bytes | None:
        """A host told to `try` the image by its name says whether it lacks it (False too for
        a session that ended, or never got to its image step); for one that lacks it, the
        pull that follows (credentials lent), once every such host has answered: raises its
        error. None for the others."""
        answer = self._future(self._answers, algo)
        if not answer.done():
            answer.set_result(lacks)
        if not lacks:
            return None
        return await asyncio.shield(self._future(self._follows, algo))

    def _tell(self, target: Target, step: bytes | FleetError) -> None:
        """This host's next line: its first, or after a `try` it lacked, its pull."""
        future = self._step(target.algo)
        if future.done():
            future = self._future(self._follows, target.algo)
        if future.done():
            return
        if isinstance(step, FleetError):
            future.set_exception(step)
            future.exception()  # retrieved: a session that ended first does not ask for it
        else:
            future.set_result(step)

    # -- delivering -----------------------------------------------------------------------------
    async def deliver(self, targets: list[Target]) -> None:
        """Decide per host, push and resolve; each host's instruction is set as soon as it is
        known (a failure is that host's error, raised where its session waits for it)."""
        try:
            async with self._cleanup:
                await self._deliver(targets)
        except FleetError as exc:
            for target in targets:
                self._tell(target, exc)
        except BaseException as exc:
            for target in targets:
                self._tell(target, ClientError(f"image {self.uri}: not delivered ({type(exc).__name__})"))
            raise

    def _source(self, host: Host) -> str:
        return "push" if self.push_image or self.archive else host.image_source

    async def _deliver(self, targets: list[Target]) -> None:
        local = None
        if any(self._source(t.host) != "pull" for t in targets):
            local = await self._local()
        pushes: list[tuple[Target, int]] = []
        pulls: list[Target] = []

        async def decide(target: Target) -> None:
            source = self._source(target.host)
            if source != "pull" and local is not None:
                try:
                    have = await host_has(target.transport, target.host.docker_command, local, self.docker_timeout)
                except FleetError as exc:
                    self._tell(target, exc)
                    return
                if have is None:
                    self.deliveries[target.algo] = Delivery("present", local=True)
                    self._tell(target, scripts.image_use(local.id))
                else:
                    pushes.append((target, have))
            elif source == "push":
                self._tell(target, ClientError(
                    f"{target.label}: image_source is push, but the controller's Docker has no image "
                    f"{self.uri} (DOCKER_HOST, the current docker context; or give --image-archive FILE)"))
            else:
                pulls.append(target)
        await on_each(targets, decide)
        async with task_group() as tasks:
            if pulls:
                tasks.create_task(self._pull(pulls), name="image pull")
            if pushes:
                assert local is not None
                tasks.create_task(self._push(local, pushes), name="image push")

    async def _local(self) -> LocalImage | None:
        if self.archive:
            self._supplied = await asyncio.to_thread(open_archive, Path(self.archive))
            self._local_id = self._supplied.image.id
            return self._supplied.image
        local = await inspect_local(self.uri, timeout=float(self.docker_timeout))
        if local is None:
            return None
        self._supplied = DockerSource(self.uri, local)
        if not local.config_known:  # Docker's containerd store: the config's digest is in a save
            self._supplied = await self._cleanup.enter_async_context(
                saved_archive(self._supplied, self.spool_dir, self.docker_timeout))
        self._local_id = self._supplied.image.id
        return self._supplied.image

    async def _pull(self, targets: list[Target]) -> None:
        """Present beats pull (see the module's docstring): each host is told to `try` the
        image by its name; once all have answered, those that lack it are told to pull."""
        for target in targets:
            self._tell(target, scripts.image_try(self.uri))
        answers = [await asyncio.shield(self._future(self._answers, t.algo)) for t in targets]
        lacking = [target for target, lacks in zip(targets, answers, strict=True) if lacks]
        for target, lacks in zip(targets, answers, strict=True):
            if not lacks:
                self.deliveries[target.algo] = Delivery("present")
        if lacking:
            await self._pull_to(lacking)

    async def _pull_to(self, targets: list[Target]) -> None:
        try:
            auth = await credentials_for(self.reference)
            try:
                self.digest = (await registry.resolve(self.reference, auth, self.insecure)).digest
            except registry.Unreachable as exc:  # the hosts pull as named; their IDs are compared
                log.debug("%s: not resolved: %s", self.uri, exc)
                self.why = "the controller cannot ask its registry"
        except FleetError as exc:  # one error for all of them
            error = ClientError(f"{', '.join(t.label for t in targets)} {'has' if len(targets) == 1 else 'have'} "
                                f"no image {self.uri} and must pull it, but: {exc.message}")
            error.__cause__ = exc
            for target in targets:
                self._tell(target, error)
            return
        self.pinned = pinned = self.reference.pinned(self.digest) if self.digest else self.uri
        credentials = auth.docker_config(self.reference)  # b"" when anonymous
        self.auth = auth.source
        for target in targets:
            self.deliveries[target.algo] = Delivery("pulled", pinned=self.digest is not None)
            self._tell(target, scripts.image_pull(pinned, credentials))

    async def _push(self, local: LocalImage, pushes: list[tuple[Target, int]]) -> None:
        count = PushCount()
        push_targets = [PushTarget(t.label, t.transport, t.host.docker_command, have) for t, have in pushes]
        progress = Progress(self.console)
        names = ", ".join(t.algo for t, _ in pushes)
        try:
            assert self._supplied is not None
            source = self._supplied
            async with progress.track(f"image push to {names}", _PushProgress(count), f"({self.uri})"):
                failed = await push_image(source, push_targets, count, docker_timeout=self.docker_timeout,
                                          spool_dir=self.spool_dir)
        except FleetError as exc:
            failed = {t.label: exc for t, _ in pushes}
        for target, _ in pushes:
            error = failed.get(target.label)
            if error is not None:
                self._tell(target, error)
                continue
            sent = count.sent.get(target.label, 0)
            self.deliveries[target.algo] = Delivery("pushed", sent, local=True)
            self._tell(target, scripts.image_use(local.id))

    # -- before anything starts -----------------------------------------------------------------
    def settle(self, reported: dict[str, tuple[str | None, str]]) -> None:
        """Every host's session has said which image ID its container is created from, and
        whether it was `present` or `pulled` (a pushed one says present): the deliveries
        are what happened, and a notice says so. Raises ClientError when the hosts'
        images differ (hosts that all pulled the registry's one digest may differ by
        platform: a multi-platform image)."""
        for algo, (image, how) in reported.items():
            delivery = self.deliveries.setdefault(algo, Delivery("pulled"))
            delivery.image = image
            if delivery.how == "pulled" and how == "present":
                delivery.how = "present"
        self._notice()
        pinned = all(d.pinned for d in self.deliveries.values())
        identities = {algo: self._identity(self.deliveries[algo]) for algo in reported}
        if not pinned and len(set(identities.values())) > 1:
            listed = ", ".join(f"{algo} {image}" for algo, image in identities.items())
            raise ClientError(f"the hosts do not have the same image {self.uri}: {listed}; every host must "
                              f"run one image: push it from the controller (--push-image, image_source: "
                              f"push) or pull it from a registry the controller reaches")

    def _notice(self) -> None:
        groups: dict[str, list[str]] = {}
        for algo, delivery in sorted(self.deliveries.items(), key=lambda item: int(item[0].rsplit("-", 1)[1])):
            if delivery.how == "pushed":
                groups.setdefault("pushed", []).append(f"{algo} ({_size(delivery.sent)})")
            else:
                groups.setdefault(delivery.how, []).append(algo)
        said = []
        if "present" in groups:
            said.append(f"present on {host_ranges(groups['present'])}")
        if "pulled" in groups:
            pinned = self.reference.pinned(self.digest) if self.digest else f"{self.uri} (not resolved: {self.why})"
            said.append(f"pulled on {host_ranges(groups['pulled'])} as {pinned} (auth: {self.auth})")
        if "pushed" in groups:
            said.append(f"pushed to {', '.join(groups['pushed'])}")
        if said:
            self.console.notice(f"image {self.uri}: " + "; ".join(said))

    def _identity(self, delivery: Delivery) -> str | None:
        """What the host's image is known by: the controller's config digest for its own
        image (present or pushed: the engine may name it by a manifest), else the engine's ID."""
        return self._local_id if delivery.local and self._local_id else delivery.image

    def record(self) -> tuple[str | None, dict]:
        """(ImageDigest, the record's `Image`): the registry's manifest digest when the hosts
        pulled it by digest, else the image ID every host runs (its config digest where
        known; `EngineImageId` where the engine names it otherwise)."""
        pulled = self.digest is not None and all(d.pinned for d in self.deliveries.values())
        digest = self.digest if pulled else next((self._identity(d) for d in self.deliveries.values()), None)
        hosts = {}
        for algo, d in sorted(self.deliveries.items()):
            hosts[algo] = {"Delivery": d.how, "ImageId": self._identity(d), "BytesSent": d.sent}
            if d.image != self._identity(d):
                hosts[algo]["EngineImageId"] = d.image
        return digest, {"ImageDigest": digest, "Hosts": hosts}
