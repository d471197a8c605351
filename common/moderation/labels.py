"""The vocabulary of decisions, which of them still stand, and the label they make of a listing.

A listing's label (what refits learn from) is the newest moderator decision still standing on
its current revision (a new photo ends the old decisions' say), else the seller's category.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import aliased

from common.schema import Listing, ModeratorDecision


class Action(StrEnum):
    accept = "accept"  # the suggestion is right
    override = "override"  # another category is
    skip = "skip"  # not this moderator's call: back to the queue for someone else
    undo = "undo"  # reverts the moderator's previous decision on the item


# Decisions that name the listing's category.
LABELLING = (Action.accept, Action.override)


def standing() -> ColumnElement[bool]:
    """A `ModeratorDecision` that no undo reverts."""
    undo = aliased(ModeratorDecision)
    return ~select(undo.id).where(undo.reverts_id == ModeratorDecision.id).exists()


def label_expression() -> ColumnElement[str | None]:
    """A listing's label: the newest decision standing on its revision, else the seller's category."""
    decision = (
        select(ModeratorDecision.category)
        .where(
            ModeratorDecision.listing_id == Listing.id,
            ModeratorDecision.action.in_(LABELLING),
            ModeratorDecision.revision == Listing.revision,
            standing(),
        )
        .order_by(ModeratorDecision.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return func.coalesce(decision, Listing.seller_category)
