"""The stage book of a model's versions (``services/registry/stages.py``), on its own.

Covered: a move records the transition (from, to, at, by, reason, numbers) and returns it; a stage
that is not one is refused and records nothing; ``production``, ``challengers`` and ``history``;
``previous_production`` is the production replaced last, and only while it stays archived;
``in_play`` is the live stages plus that previous production; ``to_json`` / ``from_json`` round-trip
through JSON (string keys) and an absent book; ``to_json`` keeps the last 500 transitions.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from services.registry.stages import LIVE, STAGES, StageBook, StageError


def book_with(*moves: tuple[int, str]) -> StageBook:
    book = StageBook("digits")
    for version, stage in moves:
        book.move(version, stage, by="test", reason=f"{version} to {stage}")
    return book


def round_trip(book: StageBook) -> StageBook:
    """Through JSON text, as records.py stores it (version keys become strings)."""
    return StageBook.from_json(book.model, json.loads(json.dumps(book.to_json())))


def test_a_move_records_the_transition_with_its_numbers():
    book = StageBook("digits")
    first = book.move(3, "candidate", by="retraining run r-1", reason="passed its gates",
                      numbers={"holdout": 0.97})
    second = book.move(3, "canary", by="rollout-controller", reason="shadow agreed", numbers={"agreement": 0.99})

    assert first == {"version": 3, "from": None, "to": "candidate", "at": first["at"], "by": "retraining run r-1",
                     "reason": "passed its gates", "numbers": {"holdout": 0.97}}
    assert datetime.fromisoformat(first["at"]).tzinfo is not None
    assert (second["from"], second["to"], second["numbers"]) == ("candidate", "canary", {"agreement": 0.99})
    assert book.transitions == [first, second] and book.history(3) == [first, second]
    assert book.history(4) == []
    assert book.stage(3) == "canary" and book.stage(4) is None
    assert book.move(4, "candidate", by="x", reason="y")["numbers"] == {}  # no numbers: an empty dict


def test_a_stage_that_is_not_one_is_refused():
    book = book_with((1, "production"))
    for bad in ("staging", "Production", "", None):
        with pytest.raises(StageError, match="not a stage"):
            book.move(1, bad, by="test", reason="typo")
    assert book.stage(1) == "production" and len(book.transitions) == 1
    assert set(LIVE) == set(STAGES) - {"archived"}


def test_production_and_challengers():
    book = book_with((1, "production"), (2, "archived"), (3, "candidate"), (4, "shadow"), (5, "canary"))
    assert book.production == 1
    assert book.challengers == [3, 4, 5]
    assert book.in_stage("archived") == [2] and book.in_stage("candidate", "canary") == [3, 5]
    assert StageBook("empty").production is None and StageBook("empty").challengers == []


def test_previous_production_is_the_production_replaced_last():
    book = book_with((1, "production"))
    assert book.previous_production is None
    book.move(1, "archived", by="promote", reason="replaced by version 2")
    book.move(2, "production", by="promote", reason="better")
    assert book.previous_production == 1
    # a canary that is rolled back was never production: it does not count
    book.move(3, "canary", by="c", reason="r")
    book.move(3, "archived", by="c", reason="rollback")
    assert book.previous_production == 1
    # a rollback to 1: 2 is now the one replaced last
    book.move(2, "archived", by="operator", reason="rollback")
    book.move(1, "production", by="operator", reason="rollback")
    assert book.previous_production == 2
    # taken live again as a candidate, 2 is no longer "previous"; 1 (replaced earlier) serves now: none is
    book.move(2, "candidate", by="operator", reason="try again")
    assert book.previous_production is None
    assert book.in_play() == [1, 2]


def test_in_play_is_the_live_stages_and_the_previous_production():
    book = book_with((1, "production"), (1, "archived"), (2, "production"), (2, "archived"), (3, "production"),
                     (4, "candidate"), (5, "canary"), (5, "archived"), (6, "shadow"))
    # 1 and 5 are archived and not the production replaced last; 2 is
    assert book.previous_production == 2
    assert book.in_play() == [2, 3, 4, 6]
    assert book_with((7, "candidate")).in_play() == [7]
    assert StageBook("empty").in_play() == []


def test_to_json_and_from_json_round_trip():
    book = book_with((1, "production"), (1, "archived"), (2, "production"), (3, "canary"))
    book.move(3, "canary", by="rollout-controller", reason="canary step 2", numbers={"weight": 0.25})
    data = book.to_json()
    assert data["model"] == "digits" and data["versions"] == {"1": "archived", "2": "production", "3": "canary"}

    again = round_trip(book)
    assert again.versions == {1: "archived", 2: "production", 3: "canary"}
    assert again.transitions == book.transitions
    assert (again.production, again.previous_production, again.in_play()) == (2, 1, [1, 2, 3])
    assert again.to_json() == data

    for absent in (None, {}):
        empty = StageBook.from_json("digits", absent)
        assert (empty.model, empty.versions, empty.transitions) == ("digits", {}, [])


def test_to_json_keeps_the_last_500_transitions():
    book = StageBook("digits")
    for step in range(600):
        book.move(1, "canary", by="rollout-controller", reason=f"canary step {step}")
    kept = book.to_json()["transitions"]
    assert len(kept) == 500
    assert kept[0]["reason"] == "canary step 100" and kept[-1]["reason"] == "canary step 599"
    assert len(round_trip(book).transitions) == 500
    assert round_trip(book).stage(1) == "canary"
