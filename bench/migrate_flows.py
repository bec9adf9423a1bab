"""The runs bench/migrate.py moves: a parcel waiting in ``shipped`` for news (a 3-day timer),
and version 2, where the state is ``in_transit`` and the timer waits 5 days."""

from datetime import timedelta

from engine import State, Workflow, after


class ParcelV1(Workflow):
    name, version = "bench_parcel", 1

    shipped = State(initial=True)
    delivered = State(final=True)
    returned = State(final=True)

    deliver = shipped.to(delivered)
    give_up = shipped.to(returned)
    patience = after(timedelta(days=3), shipped, send="give_up")


class ParcelV2(Workflow):
    name, version = "bench_parcel", 2

    in_transit = State(initial=True)
    delivered = State(final=True)
    returned = State(final=True)

    deliver = in_transit.to(delivered)
    give_up = in_transit.to(returned)
    patience = after(timedelta(days=5), in_transit, send="give_up")
