"""NATS subject names (one place, so no module spells a subject by hand)."""
PREFIX = "specstop"
GENERATE = f"{PREFIX}.generate"               # queue group "edges"; reply inbox gets TokenChunk*
                                              # .<edge_id>: the same, to one edge
TIMING_PREFIX = f"{PREFIX}.timing"            # .<edge_id>: TimingEvent, captured by a JetStream stream
POLICY_PREFIX = f"{PREFIX}.policy"            # .<edge_id>: PolicyUpdate
DRAFT_PREFIX = f"{PREFIX}.draft"              # .<edge_id>: first round / resend (queue group "verifiers");
                                              # .<edge_id>.<verifier_id>: later rounds, straight to one verifier.
                                              # The edge id in the subject is what the broker let the sender
                                              # publish on (permissions), so a verifier trusts it, not the body
END_PREFIX = f"{PREFIX}.end"                  # .<edge_id>: final drafts, to every verifier (the edge does not
                                              # know which one holds a session whose first round went unanswered)
ALIVE_PREFIX = f"{PREFIX}.alive"              # .edge.<edge_id> / .verifier.<verifier_id>: AliveMsg every second
CANCEL = f"{PREFIX}.cancel"                   # CancelMsg, to every edge (the one holding the request acts)
RESUME = f"{PREFIX}.resume"                   # ResumeMsg, to every edge (the one holding the request answers)
EDGE_QUEUE = "edges"
VERIFIER_QUEUE = "verifiers"
TIMING_STREAM = "SPECSTOP_TIMING"
CONTROL_DURABLE = "specstop-control"
POLICY_BUCKET = "specstop_policies"


def generate(edge_id: str | None = None) -> str:
    return GENERATE if edge_id is None else f"{GENERATE}.{edge_id}"


def policy_key(edge_id: str, policy_spec: str) -> str:
    """KV key of one learner (KV keys allow [-/_=.a-zA-Z0-9])."""
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "=" for c in policy_spec)
    return f"{edge_id}.{safe}"


def timing(edge_id: str) -> str:
    return f"{TIMING_PREFIX}.{edge_id}"


def policy(edge_id: str) -> str:
    return f"{POLICY_PREFIX}.{edge_id}"


def draft(edge_id: str, verifier_id: str | None = None) -> str:
    """Where an edge sends a draft: the verifiers' queue group, or one verifier (sticky sessions)."""
    return f"{DRAFT_PREFIX}.{edge_id}" if verifier_id is None else f"{DRAFT_PREFIX}.{edge_id}.{verifier_id}"


def session_end(edge_id: str) -> str:
    return f"{END_PREFIX}.{edge_id}"


def edge_alive(edge_id: str) -> str:
    return f"{ALIVE_PREFIX}.edge.{edge_id}"


def verifier_alive(verifier_id: str) -> str:
    return f"{ALIVE_PREFIX}.verifier.{verifier_id}"


def sender_of(subject: str, prefix: str) -> str | None:
    """The edge id a draft / end / heartbeat subject carries (the token after `prefix`), or None."""
    if not subject.startswith(prefix + "."):
        return None
    rest = subject[len(prefix) + 1:].split(".")
    return rest[0] or None
