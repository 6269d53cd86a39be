"""AdminGetUser for per-user SMS limits: a user's immutable `sub`, cached briefly per pool and
username (see lookups.CachedLookup), a miss paid for from the caller's lookup budget.

Why cache found subs at all: a user's repeated writes (a resent verification code, a client's
retry after UNAVAILABLE) need no second AdminGetUser, and while AdminGetUser is throttled they
still get through. Why only briefly: a username or alias can move to another user (deleted and
re-created, an email alias taken over), and until the entry expires the old user's count is
charged. Not-found users are never cached: services create users and write their phone number
moments later.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from attrgate.domain import UpstreamResult
from attrgate.lookups import CachedLookup, Clock, LookupBudget, Observe, no_observer

USER_SUB_TTL = 60.0
# Memory stays bounded whatever usernames callers send (found ones only are kept).
MAX_USERS = 10_000

UserKey = tuple[str, str]  # (pool id, username); kept in memory only, never logged


class UserSubs(CachedLookup[UserKey, str]):
    def __init__(
        self,
        lookup: Callable[[str, str], Awaitable[str | UpstreamResult]],
        *,
        budget: LookupBudget,
        ttl: float = USER_SUB_TTL,
        clock: Clock = time.monotonic,
        observe: Observe = no_observer,
    ) -> None:
        async def fetch(key: UserKey) -> str | UpstreamResult:
            return await lookup(*key)

        super().__init__(
            fetch,
            operation="AdminGetUser",
            budget=budget,
            ttl=ttl,
            max_entries=MAX_USERS,
            clock=clock,
            observe=observe,
        )
