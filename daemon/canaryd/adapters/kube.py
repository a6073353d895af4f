"""The one Kubernetes client of a daemon: where the API server is, and one ``ApiClient`` to it.

Every Kubernetes adapter (the ``kubernetes`` platform, the ``gateway-api`` router, the ones to
come) talks through a ``KubeClient``. The daemon makes one and hands it to every factory, so a
daemon holds one connection pool however many targets it has, and closes it once, at stop
(``aclose``). An adapter built on its own (a test, a script) makes its own and closes it in its
own ``aclose``.

Where the API server is: in-cluster configuration (the pod's service account) when canaryd runs
in a pod, else the kubeconfig at ``$KUBECONFIG`` or ``~/.kube/config`` (its current context).
A ``KubeAccess`` (``config.kubeaccess``: the config's ``kubernetes:`` keys, per daemon or per
target) that names a kubeconfig or a context uses that file and that context, never in-cluster
configuration. ``KubeClients`` keeps one ``KubeClient`` per distinct access, so targets on one
cluster share one pool and a target on another cluster (another region) has its own.
It is looked up on first use, not at start: a daemon whose Kubernetes targets are idle does not
fail to start because a cluster is away; the adapter reports the failure on the pass that needed
it, and the next pass tries again.
"""

from __future__ import annotations

import asyncio
import os

from kubernetes_asyncio import client, config

from canaryd.config.kubeaccess import KubeAccess


class KubeConflict(Exception):
    """409 from the API server: the object changed since it was read (or appeared since it was
    found missing). The adapters read again and re-apply; once their attempts run out they raise
    ``RouterConflict`` / ``PlatformUnavailable``."""


class KubeUnavailable(Exception):
    """No API server to talk to: not in a pod, and no usable kubeconfig (the message says why)."""


async def load_configuration(access: KubeAccess | None = None) -> client.Configuration:
    """In-cluster configuration when in a pod and ``access`` names nothing, else the kubeconfig
    (``access.kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``) at ``access.context`` (its
    current context when None)."""
    access = access or KubeAccess()
    configuration = client.Configuration()
    if not access.explicit:
        try:
            # untyped upstream; raises ConfigException outside a pod
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return configuration
        except config.ConfigException:
            pass
    kubeconfig = str(access.kubeconfig) if access.kubeconfig is not None else None
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    context = f" context {access.context!r}" if access.context is not None else ""
    try:
        await config.load_kube_config(
            config_file=kubeconfig,
            context=access.context,
            client_configuration=configuration,
            persist_config=False,
        )
    except (config.ConfigException, OSError, ValueError, KeyError) as exc:
        where = "not in a pod, and no" if not access.explicit else "no"
        raise KubeUnavailable(
            f"{where} usable kubeconfig {kubeconfig}{context} "
            f"(kubernetes.kubeconfig, KUBECONFIG, ~/.kube/config): {exc}"
        ) from exc
    return configuration


class KubeClient:
    """One ``ApiClient``, made on first use and closed by ``aclose``.

    ``api_client`` given (tests): it is used as is and never closed here, since its maker owns it.
    After ``aclose`` a new call makes a new client: a daemon restarted in the same process (the
    tour does that) must not inherit a closed pool.
    """

    def __init__(
        self, api_client: client.ApiClient | None = None, access: KubeAccess | None = None
    ) -> None:
        self.access = access or KubeAccess()
        self._api = api_client
        self._owned = api_client is None
        self._lock = asyncio.Lock()
        self.opened = 0  # ApiClients made here, for tests: one per daemon, whatever the targets

    async def api(self) -> client.ApiClient:
        """The client; ``KubeUnavailable`` when there is no API server to talk to."""
        async with self._lock:
            if self._api is None:
                self._api = client.ApiClient(await load_configuration(self.access))
                self.opened += 1
            return self._api

    @property
    def host(self) -> str | None:
        """The API server's URL once known (for error messages)."""
        return None if self._api is None else str(self._api.configuration.host)

    @property
    def closed(self) -> bool:
        """Nothing held: never opened, or closed by ``aclose``."""
        return self._api is None

    async def aclose(self) -> None:
        """Close the client if this object made it; a no-op otherwise, and when called twice."""
        if self._owned and self._api is not None:
            api, self._api = self._api, None
            await api.close()


class KubeClients:
    """A daemon's clients, one per distinct ``KubeAccess``: ``default`` (the daemon's own access)
    serves every target that names no other cluster. Closed together by ``aclose``."""

    def __init__(self, default: KubeClient) -> None:
        self.default = default
        self._by_access: dict[KubeAccess, KubeClient] = {default.access: default}

    def for_access(self, access: KubeAccess) -> KubeClient:
        """The client for ``access``, made (unopened) the first time it is asked for."""
        found = self._by_access.get(access)
        if found is None:
            found = self._by_access[access] = KubeClient(access=access)
        return found

    @property
    def clients(self) -> tuple[KubeClient, ...]:
        return tuple(self._by_access.values())

    async def aclose(self) -> None:
        """Close every client made here (each closes only what it made)."""
        for kube in self.clients:
            await kube.aclose()
