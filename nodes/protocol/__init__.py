"""The round protocol with no transport in it (sans-I/O, as in h11 or nats.py's parser).

`request.EdgeRequest` is one generate request on the edge, round by round;
`verifier_table.SessionTable` is the verifier's sessions; `admission` holds
the edge's bounds; `acting` the policy a round acts on and its stop rule;
`timing` a round's time and the one delay estimate everybody learns from;
`resume` what a client that missed chunks gets back; `policy_sync` how the
edge takes the controller's snapshots; `liveness` and `placement` the
heartbeat table and where a new session starts.
The in-process loop, the edge worker and the cloud worker wire these same
objects to a model and (or not) to NATS; every rule is tested without a broker.
"""
