"""Sources: the marketplaces and storefronts listings come from, and finding a listing in them.

A listing's `external_id` is the source's own id for it, unique within that source only. An
ingest token belongs to one source and finds listings in it alone: another source's listing is
as absent to it as one that never was. Moderators work for the whole deployment and find a
listing by its external id in any source, naming the source where two share that id.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.schema import DEFAULT_SOURCE_ID, ApiToken, Listing, Source

# Lower case, so that "Acme" and "acme" cannot be two sources; no "/" or ":", so that a name can
# stand beside an external id in a path or a log line without ambiguity.
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
DEFAULT_SOURCE = "default"


class SourceError(ValueError):
    """A request about sources that cannot be done; the message says why."""


class AmbiguousListing(LookupError):
    """More than one source has a listing of this external id, and none was named."""

    def __init__(self, external_id: str, sources: list[str]) -> None:
        super().__init__(
            f"external_id {external_id!r} is a listing of {len(sources)} sources "
            f"({', '.join(sources)}): name one with `source`"
        )
        self.external_id = external_id
        self.sources = sources


def add_source(session: Session, name: str) -> Source:
    if not NAME.match(name):
        raise SourceError(
            f"source {name!r}: use 1 to 100 lower-case letters, digits or . _ - (starting with one)"
        )
    if session.execute(select(Source.id).where(Source.name == name)).first() is not None:
        raise SourceError(f"source {name!r} exists already")
    source = Source(name=name)
    session.add(source)
    session.flush()
    return source


def source_named(session: Session, name: str) -> Source:
    source = session.execute(select(Source).where(Source.name == name)).scalar_one_or_none()
    if source is None:
        raise SourceError(f"no source {name!r} (see `vitrine sources list`)")
    return source


def source_id_named(session: Session, name: str | None) -> int:
    """The id of the source of this name; the default source's when no name is given."""
    return DEFAULT_SOURCE_ID if name is None else source_named(session, name).id


def list_sources(session: Session) -> list[tuple[Source, int, int]]:
    """Every source with its number of listings and of usable-or-not ingest tokens."""
    listings = select(Listing.source_id, func.count().label("n")).group_by(Listing.source_id).subquery()
    tokens = select(ApiToken.source_id, func.count().label("n")).group_by(ApiToken.source_id).subquery()
    rows = session.execute(
        select(Source, func.coalesce(listings.c.n, 0), func.coalesce(tokens.c.n, 0))
        .outerjoin(listings, listings.c.source_id == Source.id)
        .outerjoin(tokens, tokens.c.source_id == Source.id)
        .order_by(Source.name)
    ).all()
    return [(source, int(n_listings), int(n_tokens)) for source, n_listings, n_tokens in rows]


def source_names(session: Session, source_ids: set[int]) -> dict[int, str]:
    if not source_ids:
        return {}
    rows = session.execute(select(Source.id, Source.name).where(Source.id.in_(source_ids))).all()
    return {source_id: name for source_id, name in rows}


def candidates(
    session: Session, external_id: str, source_id: int | None, *, for_update: bool = False
) -> list[Listing]:
    """The listings of this external id: in this source, or in any when `source_id` is None."""
    query = select(Listing).where(Listing.external_id == external_id)
    if source_id is not None:
        query = query.where(Listing.source_id == source_id)
    if for_update:
        query = query.with_for_update()
    return list(session.execute(query.order_by(Listing.id)).scalars())


def ambiguous(session: Session, found: list[Listing]) -> AmbiguousListing:
    names = source_names(session, {listing.source_id for listing in found})
    return AmbiguousListing(found[0].external_id, sorted(names.values()))


def find_listing(
    session: Session, external_id: str, source_id: int | None, *, for_update: bool = False
) -> Listing | None:
    """The listing of this external id in this source; in any source when `source_id` is None
    (a moderator's lookup), raising `AmbiguousListing` when several sources have one."""
    found = candidates(session, external_id, source_id, for_update=for_update)
    if len(found) > 1:
        raise ambiguous(session, found)
    return found[0] if found else None
