"""The routes a replica holds for the feedback it is given. Pure.

The routes topic (compacted, keyed by job id) and the feedback topic have the same partitions, and both
are keyed by job id: the feedback of feedback partition p finds its route on routes partition p. A
replica holds the routes of the routes partitions that match its feedback partitions, the latest
record of each job id (a route marked `feedback` once its feedback was learned from).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import msgspec

from worker.messages import Route

_decoder = msgspec.json.Decoder(Route)


def routes_partitions(feedback: Iterable[int], feedback_count: int, routes_count: int) -> set[int]:
    """The routes partitions that hold the routes of the jobs whose feedback is on `feedback` partitions:
    the same numbers when the topics are co-partitioned, else (a topic made by hand) all of them."""
    if feedback_count == routes_count:
        return set(feedback)
    return set(range(routes_count))


class RouteIndex:
    """Job id -> its latest route, per routes partition held."""

    def __init__(self) -> None:
        self._routes: dict[int, dict[str, Route]] = {}

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

    def put_record(self, partition: int, key: bytes | None, value: bytes | None) -> bool:
        """A record of the routes topic read from `partition`: its route replaces the job's earlier one, a
        tombstone (no value) forgets the job. False when the record is not a route (nothing changes)."""
        routes = self._routes.get(partition)
        if routes is None:
            return True  # a partition no longer held: nothing to keep
        if value is None:
            if key is not None:
                routes.pop(key.decode("utf-8", "replace"), None)
            return True
        try:
            route = _decoder.decode(value)
        except msgspec.DecodeError:
            return False
        # Task types and models repeat: one copy of each name, a quarter of a route's memory.
        route.task, route.model = sys.intern(route.task), sys.intern(route.model)
        routes[route.job_id] = route
        return True

    def put(self, partition: int, route: Route) -> None:
        """Keep `route` (one this replica produced) as the job's latest."""
        routes = self._routes.get(partition)
        if routes is not None:
            routes[route.job_id] = route

    def get(self, partition: int, job_id: str) -> Route | None:
        """The job's latest route on `partition`, or None."""
        routes = self._routes.get(partition)
        return None if routes is None else routes.get(job_id)
