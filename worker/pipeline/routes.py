"""The routes a replica holds for the feedback it is given. Pure.

The routes topic (compacted, keyed by job id) and the feedback topic have the same partitions, and both
are keyed by job id: the feedback of feedback partition p finds its route on routes partition p. A
replica holds the routes of the routes partitions that match its feedback partitions, the latest
record of each job id (a route marked `feedback` once its feedback was learned from).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from worker.messages import Route

_decoder = msgspec.json.Decoder(Route)
_encoder = msgspec.json.Encoder()


def routes_partitions(feedback: Iterable[int], feedback_count: int, routes_count: int) -> set[int]:
    """The routes partitions that hold the routes of the jobs whose feedback is on `feedback` partitions:
    the same numbers when the topics are co-partitioned, else (a topic made by hand) all of them."""
    if feedback_count == routes_count:
        return set(feedback)
    return set(range(routes_count))


class RouteIndex:
    """Job id -> its latest route, per routes partition held.

    A route is kept as its record's bytes and decoded only when feedback asks for it: every answered job's
    route is read, few get feedback."""

    def __init__(self) -> None:
        self._routes: dict[int, dict[bytes, bytes]] = {}

    def __len__(self) -> int:
        return sum(len(routes) for routes in self._routes.values())

    def held(self) -> set[int]:
        """The routes partitions held."""
        return set(self._routes)

    def hold(self, partitions: Iterable[int]) -> None:
        """Start holding `partitions` (empty until their records are put)."""
        for partition in partitions:
            self._routes.setdefault(partition, {})

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget `partitions` and their routes."""
        for partition in partitions:
            self._routes.pop(partition, None)

    def put_record(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """A record of the routes topic (keyed by job id) read from `partition`: it replaces the job's earlier
        route, a tombstone (no value) forgets the job. A record without a key is decoded for its job id, and
        skipped when it is not a route."""
        routes = self._routes.get(partition)
        if routes is None:
            return  # a partition no longer held: nothing to keep
        if key is None:
            route = _decode(value)
            if route is None:
                return
            key = route.job_id.encode()
        if value is None:
            routes.pop(key, None)
        else:
            routes[key] = value

    def put(self, partition: int, route: Route) -> None:
        """Keep `route` (one this replica produced) as the job's latest."""
        routes = self._routes.get(partition)
        if routes is not None:
            routes[route.job_id.encode()] = _encoder.encode(route)

    def get(self, partition: int, job_id: str) -> Route | None:
        """The job's latest route on `partition`, or None (also when its record is not a route: a job whose
        route cannot be read is as unknown as one never routed)."""
        routes = self._routes.get(partition)
        value = None if routes is None else routes.get(job_id.encode())
        return _decode(value)


def _decode(value: bytes | None) -> Route | None:
    if value is None:
        return None
    try:
        return _decoder.decode(value)
    except msgspec.DecodeError:
        return None
