"""Synthetic clickstream with planted personas, written as raw files (the ``generate`` stage).

Pure numpy + pyarrow (no Spark), vectorised so that millions of events generate in seconds.

What is planted
---------------
* ``n_users`` human users, each assigned one of ``n_personas`` personas (balanced).  A persona
  (``personas.yaml``) has a category mixture concentrated on 4 categories (neighbouring personas
  share at most one), preferred brands, a funnel (P(cart | view), P(purchase | cart),
  P(remove | cart)), a search propensity with typical queries, a session rhythm (sessions per
  day, events per session, inter-event gaps) and a price preference.  A share
  ``noise.off_persona_rate`` of a human's product events come from a uniformly random category.
* ``noise.bot_users`` extra users (persona ``bot``) viewing random items every 0.5-2 s for hours.
* With the defaults (5,000 users over 7 days) about 44 events per human user: ~220k events.

How the counts reconcile
------------------------
Every clean event is written exactly once in clean form; noise only ever adds records
(:mod:`jobs.synthetic.noise`).  So ingest of one format must give ``kept = n_events_clean``,
``duplicates = n_duplicates_planted``, ``quarantined = malformed + drift`` of that format.

Modules: :mod:`~jobs.synthetic.personas` (the data file, typed), :mod:`~jobs.synthetic.catalogue`
(items and per-persona item choice), :mod:`~jobs.synthetic.events` (clean events),
:mod:`~jobs.synthetic.noise`, :mod:`~jobs.synthetic.writers` (raw files) and
:mod:`~jobs.synthetic.generator` (one generation end to end).
"""

from jobs.synthetic.events import FIELDS, generate_events
from jobs.synthetic.generator import GenerateResult, generate
from jobs.synthetic.personas import CATEGORIES, CATEGORY_NAMES, PERSONAS, Persona

__all__ = [
    "CATEGORIES",
    "CATEGORY_NAMES",
    "FIELDS",
    "PERSONAS",
    "GenerateResult",
    "Persona",
    "generate",
    "generate_events",
]
