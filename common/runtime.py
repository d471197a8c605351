"""What a Vitrine process holds for its lifetime: settings, one database, one publisher, one store.

A process (a worker, the review app, a command) builds one `Runtime` from the settings it read at
start and hands it, or the parts of it a function needs, to the library.
"""

from __future__ import annotations

from functools import cached_property

from celery import Celery

from common.db import Database
from common.delivery.publisher import Publisher
from common.object_store import ObjectStore
from common.settings import Settings


class Runtime:
    def __init__(self, settings: Settings, *, app: Celery | None = None) -> None:
        self.settings = settings
        # A worker publishes through its own app (one broker connection pool per process).
        self._app = app

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.services.database_url)

    @cached_property
    def publisher(self) -> Publisher:
        return Publisher(self._app) if self._app is not None else Publisher.from_settings(self.settings)

    @cached_property
    def store(self) -> ObjectStore:
        # Made on first use: a process fed only http(s) photos needs no object store settings.
        return ObjectStore.from_settings(self.settings)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()
        if "publisher" in self.__dict__ and self._app is None:
            self.publisher.close()
