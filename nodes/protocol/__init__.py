"""The round protocol with no transport in it (sans-I/O, as in h11 or nats.py's parser).

`request.EdgeRequest` is one generate request on the edge, round by round;
`verifier_table.SessionTable` is the verifier's sessions; `admission` holds
the edge's bounds; `timing` the one delay estimate everybody learns from.
The in-process loop, the edge worker and the cloud worker wire these same
objects to a model and (or not) to NATS; every rule is tested without a broker.
"""
