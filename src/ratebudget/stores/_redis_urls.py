"""What a Redis store's URL may say, and the messages that name one.

``redis://host:port/db``, ``rediss://`` (TLS), ``unix:///path`` name one
server; ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``)
a cluster by some of its nodes. Any of them may end in ``?replicas=N``
(``RedisStore(replicas=N)``). What redis-py would read wrongly
(``redis://host/abc`` as database 0) is refused with ``InvalidRequest``.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Final

from .._exceptions import InvalidRequest
from ._base import redact

__all__ = (
    "CLUSTER_SCHEMES",
    "MAX_REPLICAS",
    "check_url",
    "cluster_hint",
    "parse_cluster_url",
    "replicas_of",
    "resolve",
    "url_of",
)

CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
MAX_REPLICAS: Final = 16


def resolve(
    url: str | None,
    cluster: bool,
    replicas: int | None,
    client: Any,
    cluster_client: bool,
) -> tuple[str, bool, int]:
    """What ``RedisStore(url, cluster=, replicas=, client=)`` names: its
    URL (a cluster's as ``redis+cluster://``, the node of a plain URL as a
    seed), whether it is a cluster, and its replicas (``?replicas=N`` if
    not given); anything else is ``InvalidRequest``. ``cluster_client``:
    ``client`` is a ``RedisCluster``."""
    if not isinstance(cluster, bool):
        raise InvalidRequest(f"cluster={cluster!r}: expected True or False")
    if url is None:
        url = "redis://localhost:6379/0" if client is None else url_of(client)
    check_url(url)
    url, in_url = replicas_of(url)
    if replicas is None:
        replicas = in_url
    if (
        isinstance(replicas, bool)
        or not isinstance(replicas, int)
        or not 0 <= replicas <= MAX_REPLICAS
    ):
        raise InvalidRequest(
            f"replicas={replicas!r}: expected a number of replicas, 0 to {MAX_REPLICAS}"
        )
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    cluster = cluster or scheme in CLUSTER_SCHEMES or cluster_client
    if cluster and scheme == "unix":
        raise InvalidRequest(
            f"url={redact(url)!r}: a Redis Cluster's nodes are host:port addresses"
        )
    if cluster and scheme in ("redis", "rediss"):
        url = f"{scheme}+cluster://{rest.partition('/')[0]}"  # that node, a seed
    if client is not None and cluster != cluster_client:
        raise InvalidRequest(
            f"client={client!r}: a {'RedisCluster' if cluster else 'redis.Redis'} "
            f"is needed for {redact(url)!r}"
        )
    if cluster:
        parse_cluster_url(url)  # refused now, not at the first call
    return url, cluster, replicas


def check_url(url: str) -> None:
    """Refuse a URL redis-py would read wrongly (``redis://host/abc``: db 0)."""
    if not isinstance(url, str):
        raise InvalidRequest(f"url={url!r}: expected a redis:// URL")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
        raise InvalidRequest(
            f"url={redact(url)!r}: use redis://host:port/db, rediss://, unix:// "
            "or, for a Redis Cluster, redis+cluster://host:port[,host:port...]"
        )
    if scheme.lower() in ("unix", *CLUSTER_SCHEMES):
        return
    path = rest.partition("?")[0].partition("/")[2]
    if path and not path.isdigit():
        raise InvalidRequest(
            f"url={redact(url)!r}: the database after the host is a number, "
            f"like redis://localhost:6379/0, not {path!r}"
        )


def replicas_of(url: str) -> tuple[str, int]:
    """``url`` without its ``replicas=N`` parameter, and N (0 if none)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, 0
    kept, replicas = [], 0
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key != "replicas":
            kept.append(item)
        elif value.isdigit() and int(value) <= MAX_REPLICAS:
            replicas = int(value)
        else:
            raise InvalidRequest(
                f"url={redact(url)!r}: replicas={value!r}: expected a number "
                f"of replicas, 0 to {MAX_REPLICAS}"
            )
    return (base + "?" + "&".join(kept) if kept else base), replicas


def url_of(client: Any) -> str:
    """A URL naming ``client``'s server or cluster, for messages."""
    if hasattr(client, "get_primaries"):  # a RedisCluster
        names = sorted(node.name for node in client.get_primaries())
        return "redis+cluster://" + ",".join(names or ["localhost:6379"])
    kw = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def cluster_hint(url: str, moved: Exception | None = None) -> str:
    """Why a plain URL of a cluster's node cannot serve, and what to use."""
    host = url.partition("://")[2].rpartition("@")[2].partition("/")[0]
    why = "" if moved is None else f" (it answered MOVED {moved})"
    return (
        f"Redis store {url}: that server is a node of a Redis Cluster{why}; "
        f"use store='redis+cluster://{host}' (or RedisStore(..., cluster=True)) "
        "so each name is sent to the node that serves it"
    )


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The nodes ``redis+cluster://[user:password@]host:port[,host:port...]``
    names, and the connection options it gives (credentials, TLS)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in CLUSTER_SCHEMES:
        raise InvalidRequest(
            f"url={redact(url)!r}: a cluster's URL is redis+cluster://host:port"
            "[,host:port...] (or rediss+cluster:// for TLS)"
        )
    if parts.path not in ("", "/", "/0"):
        raise InvalidRequest(
            f"url={redact(url)!r}: a Redis Cluster has database 0 only; "
            "drop the path after the nodes"
        )
    if parts.query or parts.fragment:
        raise InvalidRequest(
            f"url={redact(url)!r}: a cluster URL takes no options after '?'; "
            "pass client=redis.cluster.RedisCluster(...) for other settings"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    options: dict[str, Any] = {}
    if userinfo:
        user, sep, password = userinfo.partition(":")
        if sep:
            options["password"] = urllib.parse.unquote(password)
            if user:
                options["username"] = urllib.parse.unquote(user)
        else:
            options["password"] = urllib.parse.unquote(user)
    if scheme == "rediss+cluster":
        options["ssl"] = True
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, port = _host_port(item.strip(), url)
        nodes.append((host, port))
    return nodes, options


def _host_port(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:7000
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif ":" in item:
        host, _, port_text = item.rpartition(":")
    else:
        host, port_text = item, ""
    if not host:
        raise InvalidRequest(f"url={redact(url)!r}: a node without a host")
    if not port_text:
        return host, 6379
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidRequest(
            f"url={redact(url)!r}: {item!r} has no valid port (host:port)"
        )
    return host, int(port_text)
