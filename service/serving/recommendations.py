"""What the endpoints do, without HTTP: look up, cache, score, rank, record.

Raises `NotFound`, `InputError` (→ 422), `StoreUnavailable` and `NoModel` (→ 503); routes map
them to status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from service.experiment import CANDIDATE, CONTROL, Experiment
from service.features import FeatureError
from service.serving.batcher import MicroBatcher
from service.serving.catalogue import NO_FILTERS, CatalogueView, ItemInfo, valued_fields
from service.serving.filters import Filters, parse_filters
from service.serving.holder import ModelHolder
from service.serving.onnx_model import InputError, Model, Query, Ranked, finish
from service.state.cache import Cache, cache_key
from service.state.online import Impression, MissingList, Online, Shadowed
from service.state.store import (
    Catalogue,
    CatalogueFull,
    Store,
    StoreUnavailable,
    UsersFull,
    UserState,
    Written,
)
from service.telemetry import Metrics

MAX_NAMED = 20  # an answer names at most this many item ids the model does not know
INLINE_ITEMS = 2_000  # work on at most this many items runs on the event loop (well under 1 ms)
MAX_PENDING_WRITES = 1_000  # background cache writes at once; beyond, an answer is not cached
MAX_PENDING_IMPRESSIONS = 5_000  # impressions waiting for the store; beyond, answers wait
IMPRESSION_BATCH_SECONDS = 0.01  # impressions wait at most this long to go in one store call
RECORDED_WAIT_SECONDS = 0.5  # an attribution waits at most this long for queued impressions
CATALOGUE_RETRY_SECONDS = 1.0  # after the catalogue's read failed, the last view serves
MAX_SHADOWS = 64  # shadow scorings at once (a shadow experiment); beyond, users are skipped
_VERSION = re.compile(rb'^\{"model_version":("(?:[^"\\]|\\.)*")')
_ITEM_HEAD, _SCORE = b'{"item_id":', b',"score":'
log = logging.getLogger("cddae.service")


class NotFound(LookupError):
    pass


ITEM_TITLE_LIMIT = 200


@dataclass(frozen=True)
class AdHocUser:
    """An ad-hoc user as scoring needs it, whatever the transport (the API's `AdHocUser`
    converts into it): the history is the union of items, vector and weights."""

    items: list[str] | None = None
    vector: list[float] | None = None
    weights: dict[str, float] | None = None
    profile: dict[str, Any] | None = None
    n: int = 10
    exclude: list[str] = field(default_factory=list)
    exclude_seen: bool = True
    candidates: list[str] | None = None
    filters: list[str] = field(default_factory=list)

    def digest(self) -> str:
        """Equal requests, equal digests: the cache key of the answer."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class NoModel(RuntimeError):
    pass


async def _never() -> bytes:
    raise AssertionError("a cache hit is never computed")


class Recommendations:
    def __init__(
        self,
        holder: ModelHolder,
        cache: Cache,
        store: Store,
        metrics: Metrics,
        max_n: int,
        batcher: MicroBatcher | None = None,
        max_api_items: int = 10_000,
        online: Online | None = None,
        max_api_users: int = 100_000,
    ):
        self.holder, self.cache, self.store, self.metrics = holder, cache, store, metrics
        self.max_n, self.batcher, self.max_api_items = max_n, batcher, max_api_items
        self.max_api_users = max_api_users
        self._users_settled_by: tuple[str, str] | None = None  # the log and mark that did
        # One catalogue view per model served (the version in service, an experiment's
        # candidate), each rebuilt on its own.
        self._views: dict[str, CatalogueView] = {}
        self._unread_views: dict[str, CatalogueView] = {}  # the bundle alone (_unread_view)
        self._catalogue: Catalogue | None = None  # the last read of the store's catalogue
        self._view_flights: dict[str, tuple[int, asyncio.Future[CatalogueView]]] = {}
        self._flights = 0  # view rebuilds started
        self._catalogue_retry_at = 0.0  # after a failed read, the last view serves until then
        self._inflight: dict[tuple[str, str], asyncio.Future[bytes]] = {}
        # CPU work too large for the event loop (batches, long inputs) has threads of its own,
        # apart from the store's writes and model loads: one cannot starve the others.
        self.compute = ThreadPoolExecutor(max_workers=2, thread_name_prefix="compute")
        if batcher is not None and batcher.executor is None:
            batcher.executor = self.compute
        self._pending: list[tuple[str, str, bytes]] = []  # cache writes not yet sent
        self._flusher: asyncio.Future[None] | None = None
        self.online = online
        self._impressions: list[_Served] = []  # answered, not yet recorded
        self._shadowed: list[Shadowed] = []  # shadow overlaps not yet recorded
        self._impressing: asyncio.Future[None] | None = None
        self._flush_now = asyncio.Event()  # record the queued impressions without waiting
        self._shadows = 0  # shadow scorings in flight
        self._background: set[asyncio.Future[None]] = set()

    def model(self) -> Model:
        model = self.holder.model
        if model is None:
            raise NoModel("no model loaded yet")
        return model

    def models(self) -> list[Model]:
        """The models served: the version in service, and an experiment's candidate."""
        trial = self.holder.trial
        model = self.model()
        return [model] if trial is None or trial[1] is model else [model, trial[1]]

    def assigned(self, user_id: str) -> Assignment:
        """Which model answers this user, under which variant: the version in service unless
        an experiment (not a shadow) puts the user among the candidate's share."""
        model = self.model()
        trial = self.holder.trial
        if trial is None:
            return Assignment(model)
        experiment, candidate = trial
        variant = experiment.variant(user_id)
        if experiment.shadow:
            shadow = candidate if variant == CANDIDATE and candidate is not model else None
            return Assignment(model, experiment, CONTROL, shadow)
        served = candidate if variant == CANDIDATE else model
        return Assignment(served, experiment, variant)

    # --- the catalogue as served ---------------------------------------------------------------

    async def view(self, model: Model, generation: int | None = None) -> tuple[CatalogueView, bool]:
        """(the catalogue view of `model` at `generation` — read from the store when None —,
        whether it may be stale: the store could not be read, so the last view serves, or the
        bundle alone where none was read yet). One rebuild at a time: concurrent requests wait
        for the same one; after a failed one, the next waits CATALOGUE_RETRY_SECONDS."""
        view = self._views.get(model.version)
        mine = view if view is not None and view.model is model else None
        try:
            if generation is None:
                generation = await self.store.catalogue_generation()
        except StoreUnavailable:
            return mine or await self._unread_view(model), True
        if mine is not None and mine.generation == generation:
            return mine, False
        if time.monotonic() < self._catalogue_retry_at:
            return mine or await self._unread_view(model), True  # not one more read per request
        try:
            return await self._rebuilt(model, generation), False
        except StoreUnavailable:
            self._catalogue_retry_at = time.monotonic() + CATALOGUE_RETRY_SECONDS
            return mine or await self._unread_view(model), True

    async def _rebuilt(self, model: Model, generation: int) -> CatalogueView:
        """A view of `model` that reflects the catalogue at least as it was when the caller
        read `generation`: a rebuild in flight is joined only if it started after that read or
        came back at that generation; else another one follows (a few at most, then the
        newest there is: the catalogue churns faster than views build)."""
        entered = self._flights
        view = None
        for _ in range(4):
            seq, flight = self._view_flights.get(model.version) or (0, None)
            if flight is None or flight.done() or (seq <= entered and view is not None):
                self._flights += 1
                seq = self._flights
                flight = asyncio.ensure_future(self._build_view(model))
                self._view_flights[model.version] = (seq, flight)
            view = await asyncio.shield(flight)
            fresh = seq > entered or view.generation == generation
            if view.model is model and fresh:
                return view
        assert view is not None
        if view.model is not model:  # the model changed under a churning catalogue
            return await self._build_view(model)
        return view

    async def _build_view(self, model: Model) -> CatalogueView:
        # What changed since the last read (any model's), not the whole catalogue again.
        catalogue = self._catalogue = await self.store.catalogue(self._catalogue)
        loop = asyncio.get_running_loop()
        previous = self._views.get(model.version)
        view = await loop.run_in_executor(self.compute, CatalogueView, model, catalogue, previous)
        self._forget_unserved(self._views, self._view_flights)
        self._views[model.version] = view
        learnt = view.pending_in_model()
        if learnt:  # created through the API, now in the model: no longer waiting
            with contextlib.suppress(StoreUnavailable):
                await self.store.settle_items(learnt)
                if self._catalogue is catalogue:  # settling bumps no generation: no change read
                    self._catalogue = replace(catalogue, pending=catalogue.pending - set(learnt))
        return view

    async def _unread_view(self, model: Model) -> CatalogueView:
        """The bundle alone (no hidden or created item known): what serves while this process
        has read no catalogue. Built once per model, never joined with a store read (a read
        that fails would fail this request too)."""
        view = self._unread_views.get(model.version)
        if view is None or view.model is not model:
            loop = asyncio.get_running_loop()
            unread = Catalogue(unread=True)
            view = await loop.run_in_executor(self.compute, CatalogueView, model, unread, None)
            self._forget_unserved(self._unread_views)
            self._unread_views[model.version] = view
        return view

    def _forget_unserved(self, *tables: dict[str, Any]) -> None:
        """Drop what belongs to versions no longer served: each table stays at the models
        served (2 at most)."""
        served = {m.version for m in self.models()}
        for table in tables:
            for version in [v for v in table if v not in served]:
                del table[version]

    def _filters(self, model: Model, texts: Sequence[str]) -> Filters:
        if not texts:
            return NO_FILTERS
        return parse_filters(texts, model.bundle.item_spec, valued_fields(model))

    # --- caching with single flight ------------------------------------------------------------

    async def _cached(
        self, key: str, field: str, compute: Callable[[], Awaitable[bytes]], hit: bytes | None
    ) -> bytes:
        """An answer: `hit` where the caller found one, else computed once for all who ask at
        the same time, and put in the cache without the caller waiting for that."""
        if hit is not None:
            self.metrics.cache_hit.inc()
            return finish(hit, cached=True)
        self.metrics.cache_miss.inc()
        flight = self._inflight.get((key, field))
        if flight is None:
            # The computation is a task of its own: a caller that goes away (cancelled) takes
            # neither it nor the callers waiting on it down with it.
            flight = asyncio.ensure_future(self._compute_and_cache(key, field, compute))
            self._inflight[(key, field)] = flight
            flight.add_done_callback(self._landed(key, field))
        return finish(await asyncio.shield(flight), cached=False)

    async def _compute_and_cache(
        self, key: str, field: str, compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        answer = await compute()
        self._cache_later(key, field, answer)
        return answer

    def _cache_later(self, key: str, field: str, answer: bytes) -> None:
        """Write to the cache in the background: the answer does not wait for it, and the
        writes of one moment go together, in one round trip. Bounded: when too many are
        pending (a slow Redis) this one is skipped."""
        if len(self._pending) >= MAX_PENDING_WRITES:
            return
        self._pending.append((key, field, answer))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_writes())

    async def settle(self) -> None:
        """Wait for the pending cache writes and impressions (at shutdown; in tests)."""
        if self._flusher is not None:
            await self._flusher
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.recorded()

    async def recorded(self, within: float | None = None) -> None:
        """Record the queued impressions now, not at the end of the batching interval, and
        wait for the recorder — at most `within` seconds where given: under steady traffic it
        never runs dry, and a stalled store holds each batch for the background timeout."""
        if self._impressing is not None and not self._impressing.done():
            self._flush_now.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._impressing), within)

    # --- impressions ---------------------------------------------------------------------------

    async def _serve(
        self, answer: bytes, user: str | None, assigned: Assignment | None = None
    ) -> bytes:
        """The answer with its variant (null outside experiments) and its own
        `recommendation_id` (cached or not), its impression queued: made and recorded in the
        background, a moment's impressions in one round trip — the answer waits for neither.
        Bounded: past `MAX_PENDING_IMPRESSIONS` waiting, answers wait for the store (never
        dropped)."""
        variant = assigned.variant if assigned is not None else None
        tail = b',"variant":"%s"' % variant.encode() if variant else b',"variant":null'
        if self.online is None:
            return answer[:-1] + tail + b"}"
        list_id = os.urandom(16).hex()  # 128 random bits, as uuid4's, at a fifth of its cost
        while len(self._impressions) >= MAX_PENDING_IMPRESSIONS:  # the store is slow: wait
            self._flush_soon()
            self._flush_now.set()
            await asyncio.wait([self._impressing])  # type: ignore[list-item]
        arm = assigned.arm if assigned is not None else None
        self._impressions.append((list_id, user, variant, arm, time.time(), answer))
        self._flush_soon()
        return answer[:-1] + tail + b',"recommendation_id":"%s"}' % list_id.encode()

    def _flush_soon(self) -> None:
        if self._impressing is None or self._impressing.done():
            self._impressing = asyncio.ensure_future(self._flush_impressions())

    def _impression(self, served: _Served) -> Impression:
        list_id, user, variant, arm, at, answer = served
        version = json.loads(_VERSION.match(answer).group(1))  # type: ignore[union-attr]
        items = b"[" + b",".join(listed_ids(answer)) + b"]"  # JSON strings as they are
        return Impression(list_id, user, version, variant, items.decode(), at, arm)

    async def _flush_impressions(self) -> None:
        assert self.online is not None
        while self._impressions or self._shadowed:
            # The answers of the next moments join: one store call per IMPRESSION_BATCH_SECONDS
            # rather than per answer (a round trip and a script call cost more than the rest)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), IMPRESSION_BATCH_SECONDS)
            self._flush_now.clear()
            served, self._impressions = self._impressions, []
            shadowed, self._shadowed = self._shadowed, []
            batch = [self._impression(s) for s in served]
            for version, count in Counter(imp.version for imp in batch).items():
                self.metrics.lists.labels(version).inc(count)
            try:
                await self.online.record(batch, shadowed)
            except StoreUnavailable:
                self.metrics.impressions_lost.inc(len(batch))
                log.warning("the store did not record %d impressions", len(batch))
            except Exception:  # never the end of recording: counted, logged, the next goes on
                self.metrics.impressions_lost.inc(len(batch))
                log.exception("recording %d impressions failed", len(batch))

    def _shadow(self, answer: bytes, user_id: str, assigned: Assignment, ask: _Ask) -> None:
        """In a shadow experiment: the candidate's list for the same request, computed in the
        background (never served), and its overlap with the served list counted. Bounded:
        past `MAX_SHADOWS` at once, a user is not shadowed (counted as skipped)."""
        if assigned.shadow is None or assigned.experiment is None or self.online is None:
            return
        if self._shadows >= MAX_SHADOWS:
            self.metrics.shadow_skipped.inc()
            return
        served = {json.loads(match) for match in listed_ids(answer)}
        if not served:
            return
        self._shadows += 1
        candidate, experiment = assigned.shadow, assigned.experiment.id

        async def score() -> None:
            try:
                other = await self._user_answer(candidate, user_id, *ask)
            except Exception as error:  # the candidate's failure never reaches the user
                log.warning("shadow scoring of %s failed: %s", candidate.version, error)
                self.metrics.shadow_skipped.inc()
                return
            finally:
                self._shadows -= 1
            theirs = {json.loads(match) for match in listed_ids(other)}
            overlap = len(served & theirs) / len(served)
            self._shadowed.append(Shadowed(experiment, candidate.version, overlap))
            self._flush_soon()

        self._background.add(task := asyncio.ensure_future(score()))
        task.add_done_callback(self._background.discard)

    async def attribute(
        self, user_id: str, items: Sequence[str], list_id: str | None, mark: bool = True
    ) -> tuple[list[str], str | None]:
        """(the lists these interactions are attributed to, a note when the named list could
        not be found), counted as clicked unless `mark` is False. UnknownList (→ 422) when it
        is another user's. A list the store does not hold (expired, never recorded, another
        replica's still on its way after a moment's wait) is no reason to refuse the
        interactions: they are recorded, attributed to none."""
        if self.online is None:
            return [], None
        # A list answered a moment ago may still be queued here: recorded first, within bounds
        await self.recorded(within=RECORDED_WAIT_SECONDS)
        for wait in (0.05, 0.1, 0.2, 0.0):  # … from another replica, too: a moment more
            try:
                now = time.time()
                return await self.online.attribute(user_id, items, list_id, now, mark), None
            except MissingList:
                await asyncio.sleep(wait)
        note = (f"recommendation_id {list_id!r} is not in the store (expired after the "
                "attribution window, or never recorded): the interactions are recorded and "
                "attributed to no list")  # fmt: skip
        return [], note

    async def _flush_writes(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let the answers of this moment join
            batch, self._pending = self._pending, []
            await self.cache.set_many(batch)

    def _landed(self, key: str, field: str) -> Callable[[asyncio.Future], None]:
        def done(flight: asyncio.Future) -> None:
            self._inflight.pop((key, field), None)
            if not flight.cancelled():
                flight.exception()  # retrieved: the callers re-raise it; nobody else need

        return done

    async def _scores(self, view: CatalogueView, queries: Sequence[Query]):
        """Small work (one user, a short history: about 0.1 ms) runs on the event loop, where a
        thread hop would cost more than the call; larger batches in a worker thread, or
        gathered by the micro-batcher when it is on (off by default: a batched call's scores
        differ from one user's in the last float bits, enough to swap near ties, and a served
        list must not depend on who else asked at the same moment)."""
        started = time.perf_counter()
        if self.batcher is not None:
            scores = await self.batcher.scores(view, list(queries))
        elif sum(len(q.weights) for q in queries) <= INLINE_ITEMS and len(queries) == 1:
            scores = view.scores(queries)
        else:
            loop = asyncio.get_running_loop()
            scores = await loop.run_in_executor(self.compute, view.scores, queries)
        elapsed = time.perf_counter() - started
        self.metrics.observe_inference(len(queries), elapsed)
        return scores

    def _check_n(self, n: int) -> None:
        if not 1 <= n <= self.max_n:
            raise InputError(f"n must be between 1 and {self.max_n}, got {n}")

    # --- known users ---------------------------------------------------------------------------

    async def for_user(
        self,
        user_id: str,
        n: int,
        exclude_seen: bool,
        exclude: Sequence[str] = (),
        filters: Sequence[str] = (),
    ) -> bytes:
        """A known user's list (below) from the model the user is assigned to, with its variant
        and id, recorded as an impression; in a shadow experiment, the candidate's too (never
        served)."""
        ask = _Ask(n, exclude_seen, tuple(exclude), tuple(filters))
        answer, assigned = await self._assigned_answer(user_id, ask)
        served = await self._serve(answer, user_id, assigned)
        self._shadow(answer, user_id, assigned, ask)
        return served

    async def _assigned_answer(self, user_id: str, ask: _Ask) -> tuple[bytes, Assignment]:
        """The answer of the model the user is assigned to, and the assignment. A candidate
        that does not know a user the version in service knows hands the user to the control
        (and the list counts there): never a 404 because of an experiment."""
        assigned = self.assigned(user_id)
        try:
            return await self._user_answer(assigned.model, user_id, *ask), assigned
        except NotFound:
            if assigned.model is self.model():
                raise
            assigned = replace(assigned, model=self.model(), variant=CONTROL)
            return await self._user_answer(assigned.model, user_id, *ask), assigned

    async def _user_answer(
        self,
        model: Model,
        user_id: str,
        n: int,
        exclude_seen: bool,
        exclude: Sequence[str] = (),
        filters: Sequence[str] = (),
    ) -> bytes:
        """A known user's answer (JSON). The cache key carries the user's generation, which
        every write bumps atomically with itself, and the catalogue's: no list from before a
        write is served after it. With Redis, state and cached answer come in one round trip.
        When the store cannot be read, a user in the bundle still gets a list from the bundle
        alone, marked degraded and not cached; anyone else gets a 503, never a 404."""
        self._check_n(n)
        conditions = self._filters(model, filters)
        field = self._field(n, exclude_seen, exclude, conditions)
        prefix = cache_key(model.version, f"user:{user_id}:")
        probe = (
            (prefix, field) if self.cache.backend == "redis" and not self.cache.degraded else None
        )
        try:
            state = await self.store.user_state(user_id, probe)
        except StoreUnavailable:
            index = model.user_index.get(user_id)
            if index is None:
                raise
            view, _ = await self.view(model, None)
            banned = self._banned(view, exclude)
            ranked = await self._rank_user(view, model.known_user(index), n, exclude_seen,
                                           banned, conditions)  # fmt: skip
            return finish(view.answer(ranked, degraded=True), cached=False)
        if probe is not None and state.cached is not None:
            return await self._cached("", field, _never, state.cached)
        view, stale = await self.view(model, state.catalogue)
        banned = self._banned(view, exclude)

        def compute() -> Awaitable[bytes]:
            return self._for_user(view, user_id, state, n, exclude_seen, banned, conditions, stale)

        if stale:  # the catalogue could not be read: answered, marked, never cached
            return finish(await compute(), cached=False)
        key = f"{prefix}{view.generation}:{state.generation}"
        hit = None if probe is not None else await self.cache.get(key, field)
        return await self._cached(key, field, compute, hit)

    @staticmethod
    def _field(
        n: int, exclude_seen: bool, exclude: Sequence[str], filters: Filters = NO_FILTERS
    ) -> str:
        """The cache field: a list's length and everything that changes its items (excluded
        ids and filters, hashed), so that an answer never crosses exclusions or filters."""
        field = f"{n}:{int(exclude_seen)}"
        if exclude:
            ids = json.dumps(sorted(set(exclude)))
            field += ":x" + hashlib.sha256(ids.encode()).hexdigest()[:16]
        if filters:
            field += ":f" + filters.key
        return field

    @staticmethod
    def _banned(view: CatalogueView, exclude: Sequence[str]) -> list[int]:
        if not exclude:
            return []
        found = view.lookup(list(exclude))
        return sorted(set(found[found >= 0].tolist()))

    def _user_query(self, view: CatalogueView, user_id: str, state: UserState) -> Query:
        model = view.model
        found = view.lookup(state.added) if state.added else np.zeros(0, np.int64)
        added_idx = [int(i) for i in found if 0 <= i < model.n_items]  # the graph's input
        later = [int(i) for i in found if i >= model.n_items]  # created since: seen, not input
        index = model.user_index.get(user_id)
        if index is None and state.profile is None and not state.added:
            raise NotFound(f"unknown user {user_id!r}")
        if index is not None:
            query = model.known_user(index, added_idx)
        else:
            query = Query(dict.fromkeys(added_idx, 1.0), model.encode_profile(None))
        if later:
            query.seen = [*query.excluded(), *later]
        if state.profile is not None:  # stored under another model, perhaps: projected
            query.features, query.has_profile = model.stored_profile(state.profile)
        return query

    async def _for_user(
        self,
        view: CatalogueView,
        user_id: str,
        state: UserState,
        n: int,
        exclude_seen: bool,
        banned: Sequence[int],
        filters: Filters,
        stale: bool = False,
    ) -> bytes:
        query = self._user_query(view, user_id, state)
        ranked = await self._rank_user(view, query, n, exclude_seen, banned, filters)
        return view.answer(ranked, degraded=stale)

    async def _rank_user(
        self,
        view: CatalogueView,
        query: Query,
        n: int,
        exclude_seen: bool,
        banned: Sequence[int] = (),
        filters: Filters = NO_FILTERS,
    ) -> Ranked:
        scores = None
        if view.model.source(query) != "popularity":
            scores = (await self._scores(view, [query]))[0]
        exclude = [*query.excluded(), *banned] if exclude_seen else list(banned)
        return view.rank(query, scores, n, exclude, filters)

    async def add_interactions(
        self,
        user_id: str,
        items: Sequence[str],
        timestamps: Sequence[float],
        key: str,
        digest: str,
    ) -> tuple[Written, list[str]]:
        """Record; (the write's outcome, the items the model in service does not know yet:
        recorded all the same, they join the catalogue at the next retrain). A repeated key
        with the same body (`digest`) records nothing; with another body it is refused."""
        model = self.model()
        _, unknown = model.known_items(items)
        if unknown:  # items created through the API are not unknown
            view, _ = await self.view(model)
            found = view.lookup(unknown)
            unknown = [item for item, at in zip(unknown, found, strict=True) if at < 0]
        if all(user_id not in m.user_index for m in self.models()):  # an experiment's too
            state = await self.store.user_state(user_id)  # unreadable: 503, not "unknown"
            if state.profile is None and not state.added:
                raise NotFound(
                    f"unknown user {user_id!r}; create it with PUT /users/{{id}}/profile"
                )
        written = await self.store.add_interactions(
            user_id, list(items), list(timestamps), key, digest
        )
        return written, unknown

    async def set_profile(
        self, user_id: str, profile: dict[str, Any], key: str, digest: str
    ) -> tuple[bool, Written]:
        """Create or replace; (whether the write created the user, the write's outcome)."""
        model = self.model()
        model.encode_profile(profile)  # unknown fields or values: 422 before anything is written
        profile = {k: v for k, v in profile.items() if v is not None}
        created = False
        if all(user_id not in m.user_index for m in self.models()):  # an experiment's too
            state = await self.store.user_state(user_id)
            created = state.profile is None and not state.added
        if created:
            await self._settle_users(model)
        try:
            written = await self.store.set_profile(
                user_id, profile, key, digest, created, self.max_api_users
            )
        except UsersFull:
            raise UsersFull(
                f"{self.max_api_users} users created through the API wait for a retrain: the "
                "maximum (CDDAE_MAX_API_USERS); the next retrain reads them"
            ) from None
        return written.created, written  # a retry answers as its first attempt did

    async def _settle_users(self, model: Model) -> None:
        """Once per model in service (its log and mark): the users created before the mark of
        the log it was trained on no longer wait for a retrain. A store that cannot be read now
        is asked again at the next creation."""
        events = model.bundle.manifest.get("events") or {}
        log_and_mark = (str(events.get("source")), str(events.get("mark")))
        if not events.get("mark") or self._users_settled_by == log_and_mark:
            return
        with contextlib.suppress(StoreUnavailable):
            await self.store.settle_users(*log_and_mark)
            self._users_settled_by = log_and_mark

    # --- ad-hoc users --------------------------------------------------------------------------

    def _adhoc_query(self, model: Model, request: AdHocUser) -> tuple[Query, list[str]]:
        """The query, and the item ids the model does not know (left out, and named). The
        history is the union of items, vector and weights; an item in weights keeps its weight."""
        weights: dict[int, float] = {}
        if request.vector:
            if len(request.vector) != model.n_items:
                raise InputError(
                    f"vector has {len(request.vector)} entries, the catalogue has {model.n_items}"
                )
            weights.update((i, 1.0) for i, v in enumerate(request.vector) if v)
        indices, unknown = model.known_items(request.items or [])
        weights.update(dict.fromkeys(indices, 1.0))
        if request.weights:  # a weight of 0 takes an item out
            indices, missing = model.known_items(list(request.weights))
            absent = set(missing)
            values = [w for item, w in request.weights.items() if item not in absent]
            weights.update((i, float(w)) for i, w in zip(indices, values, strict=True))
            # 0 as the graph reads it (float32): 1e-46 is no weight, not a short history
            weights = {i: w for i, w in weights.items() if np.float32(w)}
            unknown += missing
        unknown = list(dict.fromkeys(unknown))  # an id in both items and weights: named once
        features = model.encode_profile(request.profile)
        known = any(v is not None for v in (request.profile or {}).values())
        return Query(weights, features, -1, known), unknown

    def _prepare(self, view: CatalogueView, request: AdHocUser, where: str) -> _Prepared:
        model = view.model
        try:
            self._check_n(request.n)
            query, unknown = self._adhoc_query(model, request)
            filters = self._filters(model, request.filters)
        except InputError as error:
            raise InputError(f"{where}{error}") from None
        exclude = self._banned(view, request.exclude)
        candidates = None
        if request.candidates:
            found = view.lookup(request.candidates)
            candidates = found[found >= 0].tolist()
        if request.exclude_seen:
            exclude = [*exclude, *query.weights]
            if unknown and view.new_ids:  # created since the model: seen, not the model's input
                later = view.lookup(unknown)
                exclude += later[later >= 0].tolist()
        owner = f"score:c{view.generation}:{request.digest()}"
        return _Prepared(query, exclude, candidates, request.n, cache_key(model.version, owner),
                         unknown[:MAX_NAMED], filters)  # fmt: skip

    async def score(self, requests: Sequence[AdHocUser]) -> list[bytes]:
        """Ad-hoc lists (below), each with its own id, recorded as impressions."""
        return [await self._serve(answer, None) for answer in await self._score(requests)]

    async def _score(self, requests: Sequence[AdHocUser]) -> list[bytes]:
        """Answers (JSON): hits from the cache; all misses scored in one onnxruntime batch.
        A batch's input building and ranking run in a worker thread, a single user's inline."""
        model = self.model()
        view, stale = await self.view(model)
        if len(requests) == 1 and _small(requests[0]):
            prepared = [self._prepare(view, requests[0], "")]
        else:
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(self.compute, self._prepare_all, view, requests)
        if stale:
            hits: list[bytes | None] = [None] * len(prepared)
        else:
            hits = await asyncio.gather(*(self.cache.get(p.key, "") for p in prepared))
        answers: list[bytes | None] = [None] * len(prepared)
        misses = []
        for i, hit in enumerate(hits):
            (self.metrics.cache_hit if hit is not None else self.metrics.cache_miss).inc()
            if hit is not None:
                answers[i] = finish(hit, cached=True)
            else:
                misses.append(i)
        to_score = [i for i in misses if model.source(prepared[i].query) != "popularity"]
        scores = (
            await self._scores(view, [prepared[i].query for i in to_score]) if to_score else None
        )
        row = {i: r for r, i in enumerate(to_score)}
        for i in misses:
            p = prepared[i]
            values = scores[row[i]] if scores is not None and i in row else None
            ranked = view.rank(p.query, values, p.n, p.exclude, p.filters, p.candidates)
            answer = view.answer(ranked, p.unknown, degraded=stale)
            answers[i] = finish(answer, cached=False)
            if not stale:
                self._cache_later(p.key, "", answer)
        return answers  # type: ignore[return-value]

    def _prepare_all(self, view: CatalogueView, requests: Sequence[AdHocUser]) -> list[_Prepared]:
        return [self._prepare(view, r, f"users[{i}]: ") for i, r in enumerate(requests)]

    # --- for the admin page: what would be served, never recorded --------------------------------

    async def preview(self, user_id: str, n: int = 10) -> tuple[dict[str, Any], Assignment]:
        """A user's list as the user would be served it now, neither recorded nor given an id;
        with the assignment (variant) it came from."""
        answer, assigned = await self._assigned_answer(user_id, _Ask(n, True, (), ()))
        return json.loads(answer), assigned

    async def history(self, user_id: str, limit: int = 100) -> list[ItemInfo]:
        """A user's recorded history (the bundle's, then what the store added since), the most
        recent `limit` items; NotFound for a user nobody knows."""
        model = self.model()
        state = await self.store.user_state(user_id)
        index = model.user_index.get(user_id)
        if index is None and state.profile is None and not state.added:
            raise NotFound(f"unknown user {user_id!r}")
        ids = []
        if index is not None:
            ids = [str(model.bundle.item_ids[i]) for i in model.known_user(index).weights]
        ids = list(dict.fromkeys([*ids, *state.added]))[-limit:]
        view, _ = await self.view(model)
        return [info for i in ids if (info := view.info(i)) is not None]

    async def preview_similar(self, item_id: str, n: int = 10) -> dict[str, Any]:
        """Similar items as served, not recorded."""
        return json.loads(await self._similar(item_id, n))

    # --- items ---------------------------------------------------------------------------------

    async def item(self, item_id: str) -> tuple[ItemInfo, str, bool]:
        """(what the service knows of an item, the model version, whether the catalogue could
        not be read: then the last view answers). NotFound when nothing; an item the last view
        lacks while the store is unreadable is a StoreUnavailable, never "unknown", and so is
        any item while no catalogue was ever read (whether it is hidden is not known)."""
        model = self.model()
        view, stale = await self.view(model)
        if view.unread:
            raise StoreUnavailable("the catalogue could not be read: availability not known")
        info = view.info(item_id)
        if info is None:
            if stale:
                raise StoreUnavailable("the catalogue could not be read")
            raise NotFound(f"unknown item {item_id!r}")
        return info, model.version, stale

    def check_item_profile(self, profile: dict[str, Any]) -> dict[str, Any]:
        """An item's profile as the API takes it: the item spec's fields, strictly typed as for
        users, and a title; 422 naming the allowed fields otherwise. Nulls are dropped."""
        spec = self.model().bundle.item_spec
        allowed = ", ".join(["title", *spec.names])
        if unknown := sorted(set(profile) - {"title", *spec.names}):
            raise InputError(f"unknown item field(s) {unknown[:5]}; item fields: {allowed}")
        fields = {k: v for k, v in profile.items() if v is not None}
        title = fields.pop("title", None)
        if title is not None and not (isinstance(title, str) and len(title) <= ITEM_TITLE_LIMIT):
            raise InputError(f"title must be text of at most {ITEM_TITLE_LIMIT} characters")
        try:
            spec.check_request(fields)
            spec.encode(fields)
        except FeatureError as error:
            raise InputError(f"item profile: {error} (item fields: {allowed})") from None
        return {**({"title": title} if title is not None else {}), **fields}

    async def set_item(self, item_id: str, profile: dict[str, Any]) -> bool:
        """Create or re-describe an item; whether this created it. New items count against
        `max_api_items` until a retrain folds them into the model."""
        profile = self.check_item_profile(profile)
        model = self.model()
        view, stale = await self.view(model)
        if stale:
            raise StoreUnavailable("the catalogue could not be read")
        created = view.index(item_id) is None
        try:
            await self.store.set_item(item_id, profile, item_id not in model.item_index,
                                      self.max_api_items)  # fmt: skip
        except CatalogueFull:
            raise CatalogueFull(
                f"{self.max_api_items} items created through the API wait for a retrain: the "
                "maximum (CDDAE_MAX_API_ITEMS); the next retrain folds them into the model"
            ) from None
        return created

    async def set_availability(self, item_id: str, available: bool) -> None:
        model = self.model()
        view, stale = await self.view(model)
        if stale:
            raise StoreUnavailable("the catalogue could not be read")
        if view.index(item_id) is None:
            raise NotFound(f"unknown item {item_id!r}; create it with PUT /items/{{id}}")
        await self.store.set_availability(item_id, available)

    async def similar(
        self, item_id: str, n: int, exclude: Sequence[str] = (), filters: Sequence[str] = ()
    ) -> bytes:
        """Similar items (below), with an id, recorded as an impression served to nobody."""
        return await self._serve(await self._similar(item_id, n, exclude, filters), None)

    async def _similar(
        self, item_id: str, n: int, exclude: Sequence[str] = (), filters: Sequence[str] = ()
    ) -> bytes:
        """The items the model holds most alike (view.similar), cached per model version and
        catalogue generation; never the item itself, never a hidden one."""
        self._check_n(n)
        model = self.model()
        conditions = self._filters(model, filters)
        view, stale = await self.view(model)
        at = view.index(item_id)
        if at is None:
            if stale:
                raise StoreUnavailable("the catalogue could not be read")
            raise NotFound(f"unknown item {item_id!r}")
        banned = sorted({*self._banned(view, exclude), at})

        async def compute() -> bytes:
            loop = asyncio.get_running_loop()
            ranked = await loop.run_in_executor(
                self.compute, view.similar, at, n, banned, conditions
            )
            return view.answer(ranked, degraded=stale)

        if stale:
            return finish(await compute(), cached=False)
        key = cache_key(model.version, f"similar:{view.generation}:{item_id}")
        field = self._field(n, True, exclude, conditions)
        return await self._cached(key, field, compute, await self.cache.get(key, field))


# An answer served, as its impression waits to be made: (id, user, variant, arm, time, answer)
_Served = tuple[str, str | None, str | None, str | None, float, bytes]


class _Ask(NamedTuple):
    """What a known user's list was asked with (beside the user and the model)."""

    n: int
    exclude_seen: bool
    exclude: tuple[str, ...]
    filters: tuple[str, ...]


@dataclass(frozen=True)
class Assignment:
    """The model that answers a user; its variant and the counts' arm when an experiment runs;
    in shadow mode, the candidate that scores the user on the side."""

    model: Model
    experiment: Experiment | None = None
    variant: str | None = None
    shadow: Model | None = None

    @property
    def arm(self) -> str | None:
        if self.experiment is None or self.variant is None:
            return None
        return self.experiment.arm(self.variant)


def listed_ids(answer: bytes) -> list[bytes]:
    """The item ids an answer lists, as the JSON strings it holds. Split, not parsed: in JSON
    text a quote inside a string is escaped, so `{"item_id":` and `,"score":` occur only where
    `render` put them (8 → 6 µs for 50 items against the regular expression it replaced)."""
    return [chunk.partition(_SCORE)[0] for chunk in answer.split(_ITEM_HEAD)[1:]]


def _small(request: AdHocUser) -> bool:
    """Whether building this request's input is cheap enough for the event loop."""
    sizes = (request.items, request.vector, request.weights, request.exclude, request.candidates)
    return sum(len(x) for x in sizes if x) <= INLINE_ITEMS


@dataclass
class _Prepared:
    query: Query
    exclude: list[int]
    candidates: list[int] | None
    n: int
    key: str
    unknown: list[str]
    filters: Filters
