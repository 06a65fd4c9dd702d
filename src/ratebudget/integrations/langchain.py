"""A LangChain rate limiter backed by a ratebudget ``Limiter``.

::

    from langchain_openai import ChatOpenAI
    model = ChatOpenAI(model="gpt-4o", rate_limiter=LangChainRateLimiter(limiter))

LangChain asks its rate limiter for one request before each model call, and
says nothing of tokens or dollars: this adapter takes ``requests=1`` (and
whatever else you give it) from the limiter, so the limiter's request rates
make the call wait and its request caps refuse it. For tokens and USD, meter
the calls themselves: give the chat model an HTTP client with
``BudgetTransport`` (see "Metering LLM calls"). Needs ``langchain-core``
(the ``langchain`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._exceptions import InvalidRequest

if TYPE_CHECKING:
    from .. import Limiter
    from .._amounts import Amount

try:
    from langchain_core.rate_limiters import BaseRateLimiter
except ImportError as e:  # pragma: no cover - the extra is missing
    raise InvalidRequest(
        "the LangChain adapter needs langchain-core: pip install 'ratebudget[langchain]'"
    ) from e

__all__ = ("LangChainRateLimiter",)


class LangChainRateLimiter(BaseRateLimiter):
    """``BaseRateLimiter`` over a ``Limiter``: each call takes ``requests=1``.

    ``amounts`` are taken too (``tokens=500`` for a flat per-call estimate);
    ``timeout`` bounds a blocking wait (``AcquireTimeout``, fail fast as
    ever). A hard cap that would be crossed raises ``BudgetExceeded`` to the
    caller rather than returning ``False``: waiting would never help.
    """

    def __init__(
        self, limiter: Limiter, *, timeout: float | None = None, **amounts: Amount
    ) -> None:
        from .. import Limiter  # at the call: no import of the limiter at load

        if not isinstance(limiter, Limiter):
            raise InvalidRequest(
                f"LangChainRateLimiter needs a Limiter, not {limiter!r}"
            )
        self.limiter = limiter
        self.timeout = timeout
        self.amounts: dict[str, Any] = {"requests": 1, **amounts}
        limiter.acquire(**self.amounts)  # validate now: InvalidRequest at the call

    def acquire(self, *, blocking: bool = True) -> bool:
        sync = self.limiter.sync
        if not blocking:
            lease = sync.try_acquire(**self.amounts)
            if lease is None:
                return False
        else:
            lease = sync.acquire(timeout=self.timeout, **self.amounts)
        lease.commit()
        return True

    async def aacquire(self, *, blocking: bool = True) -> bool:
        if not blocking:
            got = await self.limiter.try_acquire(**self.amounts)
            if got is None:
                return False
            await got.commit()
            return True
        lease = await self.limiter.acquire(timeout=self.timeout, **self.amounts)
        await lease.commit()
        return True
