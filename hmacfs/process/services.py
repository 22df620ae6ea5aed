"""The services a process is made of: started together, stopped in the reverse order.

The part of twisted.application these processes use, and no more: its package also loads the
plugin system, persistence (pickle) and the client-service state machines, about 1 MiB in
every process, none of which a server that is started by its command line needs.

- `Service`: something that starts and stops (`running` says which); `stopService` may
  return a Deferred that fires once it has stopped.
- `Services`: a service holding others (`setServiceParent`), started in the order they
  were added and stopped in the reverse order, all at once; its stop fires once every one
  has stopped. A service added to a running one starts at once; one taken out of it
  (`disownServiceParent`) stops.
- `Timer`: calls a function now and every `interval` seconds of a clock until it stops; a
  call that returns a Deferred delays the next until it fires, and stopping waits for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

_log = Logger(namespace="hmacfs.process")


class Service:
    """Something that starts and stops, perhaps as a part of `Services`."""

    parent: Services | None = None
    running = False

    def setServiceParent(self, parent: Services) -> None:  # (the names are Twisted's)
        """Become a part of `parent` (and start, if it runs)."""
        if self.parent is not None:
            self.disownServiceParent()
        self.parent = parent
        parent.addService(self)

    def disownServiceParent(self) -> Any:
        """Stop being a part of the parent (and stop, if it runs); what `stopService`
        returned then, else None."""
        parent, self.parent = self.parent, None
        return parent.removeService(self) if parent is not None else None

    def startService(self) -> None:
        self.running = True

    def stopService(self) -> Any:
        """Stop; a Deferred that fires once stopped, or None when that is now."""
        self.running = False
        return None


class Services(Service):
    """A service made of others."""

    def __init__(self) -> None:
        self.services: list[Service] = []

    def addService(self, service: Service) -> None:
        self.services.append(service)
        if self.running:
            service.startService()

    def removeService(self, service: Service) -> Any:
        self.services.remove(service)
        return service.stopService() if self.running else None

    def startService(self) -> None:
        super().startService()
        for service in list(self.services):
            service.startService()

    def stopService(self) -> defer.Deferred[Any]:
        """Stop every part at once (the last added first); fires once all have stopped,
        whether or not each stopped cleanly."""
        super().stopService()
        stopping = [defer.maybeDeferred(s.stopService) for s in reversed(self.services)]
        return defer.DeferredList(stopping)


class Timer(Service):
    """Calls `call` when it starts and then every `interval` seconds of `clock` (the
    process's reactor, or a fake one), until it stops."""

    def __init__(self, interval: float, call: Callable[[], object], clock: Any) -> None:
        self.interval = interval
        self.call = call
        self.clock = clock
        self._loop: task.LoopingCall | None = None
        self._finished: defer.Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        loop = self._loop = task.LoopingCall(self.call)
        loop.clock = self.clock
        self._finished = loop.start(self.interval, now=True)
        self._finished.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        # The call raised (or its Deferred failed): the loop has ended.
        _log.failure("a periodic call failed; it is not made again", failure)

    def stopService(self) -> Any:
        """Stop calling; fires once a call still running has finished."""
        loop, finished = self._loop, self._finished
        if loop is None or finished is None:
            return super().stopService()
        if loop.running:
            loop.stop()
        self._loop = self._finished = None

        def stopped(result: object) -> object:
            Service.stopService(self)
            return result

        return finished.addCallback(stopped)
