"""The one Kubernetes client of a daemon: where the API server is, and one ``ApiClient`` to it.

Every Kubernetes adapter (the ``kubernetes`` platform, the ``gateway-api`` router, the ones to
come) talks through a ``KubeClient``. The daemon makes one and hands it to every factory, so a
daemon holds one connection pool however many targets it has, and closes it once, at stop
(``aclose``). An adapter built on its own (a test, a script) makes its own and closes it in its
own ``aclose``.

Where the API server is: in-cluster configuration (the pod's service account) when canaryd runs
in a pod, else the kubeconfig at ``$KUBECONFIG`` or ``~/.kube/config`` (its current context).
It is looked up on first use, not at start: a daemon whose Kubernetes targets are idle does not
fail to start because a cluster is away; the adapter reports the failure on the pass that needed
it, and the next pass tries again.
"""

from __future__ import annotations

import asyncio
import os

from kubernetes_asyncio import client, config


class KubeConflict(Exception):
    """409 from the API server: the object changed since it was read (or appeared since it was
    found missing). The adapters read again and re-apply; once their attempts run out they raise
    ``RouterConflict`` / ``PlatformUnavailable``."""


class KubeUnavailable(Exception):
    """No API server to talk to: not in a pod, and no usable kubeconfig (the message says why)."""


async def load_configuration() -> client.Configuration:
    """In-cluster configuration when in a pod, else ``$KUBECONFIG`` / ``~/.kube/config``."""
    configuration = client.Configuration()
    try:
        # untyped upstream; raises ConfigException outside a pod
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration, persist_config=False
            )
        except (config.ConfigException, OSError, ValueError, KeyError) as exc:
            raise KubeUnavailable(
                f"not in a pod, and no usable kubeconfig {kubeconfig} "
                f"(KUBECONFIG, ~/.kube/config): {exc}"
            ) from exc
    return configuration


class KubeClient:
    """One ``ApiClient``, made on first use and closed by ``aclose``.

    ``api_client`` given (tests): it is used as is and never closed here, since its maker owns it.
    After ``aclose`` a new call makes a new client: a daemon restarted in the same process (the
    tour does that) must not inherit a closed pool.
    """

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self._api = api_client
        self._owned = api_client is None
        self._lock = asyncio.Lock()
        self.opened = 0  # ApiClients made here, for tests: one per daemon, whatever the targets

    async def api(self) -> client.ApiClient:
        """The client; ``KubeUnavailable`` when there is no API server to talk to."""
        async with self._lock:
            if self._api is None:
                self._api = client.ApiClient(await load_configuration())
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
