"""The listening sockets of a process that serves, handed to its reactor (`Listeners`).

The sockets are bound by `hmacfs.process.listeners` (without Twisted, which the supervisor
that binds them for its workers never loads).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer

from hmacfs.core.listener import Listener
from hmacfs.process.listeners import Bound, bind_all
from hmacfs.process.services import Service
from hmacfs.process.systemd import ActivatedSockets


class Listeners(Service):
    """Listens on `listeners` for `factory`; `ready` fires with their descriptions once all
    of them listen, or fails with the first that cannot (and none listens).

    `tls` gives the current TLS context for https listeners (read when they start).
    """

    def __init__(
        self,
        reactor: Any,
        listeners: Sequence[Listener],
        factory: Any,
        tls: Callable[[], Any],
        activated: ActivatedSockets,
    ) -> None:
        self.reactor = reactor
        self.listeners = tuple(listeners)
        self.factory = factory
        self.tls = tls
        self.activated = activated
        self.ports: list[Any] = []
        self.descriptions: list[str] = []
        self.ready: defer.Deferred[list[str]] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        try:
            bound = bind_all(self.listeners, self.activated)
        except (OSError, RuntimeError) as e:
            self.ready.errback(e)
            return
        ports: list[Any] = []
        try:
            for each in bound:
                ports.append(self._adopt(each))
        except Exception as e:  # reported as a listen failure
            for port in ports:
                port.stopListening()
            self.ready.errback(e)
            return
        finally:
            for each in bound:
                each.sock.close()  # every port works on its own duplicate
        self.ports = ports
        self.descriptions = [each.description for each in bound]
        self.ready.callback(list(self.descriptions))

    def _adopt(self, bound: Bound) -> Any:
        factory: Any = self.factory
        listener = bound.listener
        if listener.tls:
            from hmacfs.http.fast.tls import tls_factory

            context = self.tls()
            assert context is not None, "configuration check lets no https listener without TLS"
            factory = tls_factory(context, factory)
        port = self.reactor.adoptStreamPort(bound.sock.fileno(), bound.sock.family, factory)
        if listener.activated is not None:
            # Close the descriptor systemd passed, or the socket would keep accepting
            # connections after stopListening.
            os.close(self.activated.find(listener.activated))
            # An inherited socket may be shared with other worker processes, which all wake
            # when connections arrive. Twisted accepts up to a hundred at once, so the one
            # that woke first would take a whole burst (all of a client's parallel
            # connections) and leave the others idle; one at a time, they share it (what
            # nginx's default "multi_accept off" does).
            from hmacfs.http._twisted import accept_one_at_a_time

            accept_one_at_a_time(port)
        return port

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        ports, self.ports = self.ports, []
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in ports], consumeErrors=True
        )

    def describe(self) -> list[str]:
        """Where it listens (nothing once stopped)."""
        return list(self.descriptions) if self.ports else []
