"""Argument types and shared flag groups of the `specstop` parser.

Every user error (bad flag value, bad file, bad model path) ends as one line
`specstop: error: ...` on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
from typing import Callable

from nodes.device import DeviceError, load_device
from schemas.messages import valid_id

DEFAULT_DELAYS = "20,55,111,150"


TREE_HELP = ("draft trees: DEPTHxWIDTH (e.g. 4x2: width candidates per depth, the best one extended), 'auto' "
             "(learned online, no profile: the shape of least estimated ms/token at the measured delay, chains "
             "included) or 'off' (chains, chosen by --policy)")

def _number(kind: type, minimum: float, strict: bool):
    """An argparse type: `kind` (int or float), finite, >= minimum (> minimum when `strict`)."""
    word = "an integer" if kind is int else "a number"
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {word}") from None
        if not (v > minimum if strict else v >= minimum) or v == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return v

    return parse


positive_int = _number(int, 1, strict=False)
AHEAD_HELP = ("rounds in flight per request (proactive drafting; chains, a --tree spine, or with --tree auto the "
              "spine the edge's learner prices cheapest with R in flight): while a round is in flight the edge "
              "drafts and sends the continuation that assumes it is kept; 1: one round per round trip")


def rounds_in_flight(text: str) -> int:
    """An argparse type for --ahead: 1..MAX_ROUNDS_IN_FLIGHT."""
    from nodes.config import check_ahead

    try:
        return check_ahead(int(text))
    except ValueError:
        from nodes.config import MAX_ROUNDS_IN_FLIGHT

        raise argparse.ArgumentTypeError(f"must be an integer in 1..{MAX_ROUNDS_IN_FLIGHT}, got {text}") from None
non_negative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0, strict=True)
non_negative_float = _number(float, 0, strict=False)


def delays(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"'{text}' must list delays >= 0")
    return vals


# the bundled pair's stream tree at zero delay, in-process (docs/shapes.md: compute ms per token, misses per token)
STREAM_TREE_BUNDLED = "4.5,0.083"


def stream_calibration(text: str) -> tuple[float, float] | None:
    """An argparse type for --stream-tree: 'C0,M' (zero-delay ms per token, misses per token) or 'off'."""
    if text == "off":
        return None
    try:
        c0, m = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not 'C0,M' (ms per token, misses per token) or 'off'") from None
    if not (0 <= c0 < float("inf") and 0 <= m <= 1):
        raise argparse.ArgumentTypeError(f"'{text}': need 0 <= C0 (ms per token) and 0 <= M (misses per token) <= 1")
    return c0, m


def shape_calibration_args(p: argparse.ArgumentParser) -> None:
    """The shape chooser's calibration flags (`bench shapes`, `simulate --shapes`)."""
    p.add_argument("--stream-tree", type=stream_calibration, default=stream_calibration(STREAM_TREE_BUNDLED),
                   metavar="C0,M", help="the stream tree's zero-delay ms per token and misses per token, or 'off' "
                                        f"(default: {STREAM_TREE_BUNDLED}, the bundled pair in-process)")
    p.add_argument("--new-tokens", type=positive_int, default=64, help="tokens per request (the stream tree's first "
                                                                       "token waits a round trip)")
    p.add_argument("--compute", choices=("shared", "separate"), default="shared",
                   help="shared: draft and verify take turns on one compute (one process or one small machine); "
                        "separate: an edge and a cloud, drafting ahead hides the draft")
    p.add_argument("--max-nodes", type=positive_int, default=64, help="largest tree weighed")
    p.add_argument("--max-rounds", type=positive_int, default=5, help="most rounds in flight weighed")
    p.add_argument("--margin", type=non_negative_float, default=0.1,
                   help="another family displaces the best plain chain only when modelled this much (relative) "
                        "below it")


def shape_calibration(a: argparse.Namespace):
    """The chooser's Calibration from --table (or the bundled pair's), --stream-tree and --compute."""
    from control.shape_choice import Calibration, StreamTreeCalibration
    from control.tree_sim import load_tree_table
    from nodes.models.loading import BUNDLED_TREES

    accept, cost = load_tree_table(a.table if a.table not in (None, "bundled") else BUNDLED_TREES)
    stream = None if a.stream_tree is None else StreamTreeCalibration(*a.stream_tree, a.new_tokens)
    return Calibration(accept, cost, stream, shared_compute=a.compute == "shared")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends `(default: X)` to a flag's help, unless the help already says its default or there is
    none worth saying (None, False for a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


# Help for flags that mean the same in every command, said once here rather than at each command.
SHARED_HELP: dict[str, str] = {
    "--json": "print one JSON object on stdout instead of text",
    "--seed": "random seed (same seed, same run)",
    "--seeds": "how many seeds to average over",
    "--max-new-tokens": "tokens to generate per request",
    "--temperature": "sampling temperature (0: greedy)",
    "--top-p": "nucleus sampling: keep the smallest set of tokens with this much probability (1: all)",
    "--requests": "requests in the workload",
    "--concurrency": "requests in flight at once",
    "--max-length": "longest draft",
    "--run-root": "directory that receives the run's logs",
    "--threads": "torch CPU threads",
    "--profile": "control profile (JSON from `specstop calibrate`)",
    "--delays": "one-way delays in ms, comma-separated",
    "--rounds": "speculative rounds per simulated run",
    "--policy": "policy spec (e.g. auto, fixed:4, ucb-specstop)",
    "--policies": "policy specs, comma-separated",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`specstop: error: ...`), exit status 2, no
    abbreviated flags (`--request 4` is an error, not a silent `--requests 4`), `--help` shows each
    flag's default so a first-time user need not read the code, and a subcommand without its own
    description shows its one-line help as the description."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs):
        action = super().add_subparsers(**kwargs)
        add_parser = action.add_parser

        def add_parser_with_description(name, **kw):
            kw.setdefault("description", kw.get("help"))
            return add_parser(name, **kw)

        action.add_parser = add_parser_with_description
        return action

    def add_argument(self, *args, **kwargs):
        if "help" not in kwargs and args and args[0] in SHARED_HELP:
            kwargs["help"] = SHARED_HELP[args[0]]
        return super().add_argument(*args, **kwargs)

    def error(self, message: str):
        where = self.prog.removeprefix("specstop").strip()
        self.exit(2, f"specstop: error: {where + ': ' if where else ''}{message}\n")


def emit(obj: dict, as_json: bool, render: Callable[[dict], str]) -> None:
    print(json.dumps(obj) if as_json else render(obj))


def batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must list batch sizes >= 1")
    return sizes


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so `with` blocks stop the child processes they started."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


def device_profile(name: str | None, half: str) -> str | None:
    """`name` if it is a device profile with `half` (draft/verify) times; a one-line error otherwise,
    before any model loads."""
    if name:
        d = load_device(name)
        if not (d.emulates_draft if half == "draft" else d.emulates_verify):
            raise DeviceError(f"device profile '{name}' has no {half} times (fields {half}_ms_*)")
    return name


def progress(enabled: bool, what: str = "requests", total: int | None = None):
    """Progress on stderr (pipeline/progress.py) and the callback that advances it (None, None when
    disabled: --json output)."""
    if not enabled:
        return None, None
    from pipeline.progress import start

    return start(what, total)


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft", help="draft model: hub id or local path (default: bundled)")
    p.add_argument("--target", help="target model: hub id or local path (default: bundled)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:0)")
    dtype_arg(p)
    p.add_argument("--threads", type=positive_int, default=int(os.environ.get("SPECSTOP_THREADS", "2")),
                   help="torch threads in this process")


def prefill_chunk(text: str) -> int | str:
    """`auto` or a token count >= 0."""
    return text if text == "auto" else non_negative_int(text)


def dtype_arg(p: argparse.ArgumentParser) -> None:
    """`--dtype`: the models' weights (and the acceptance head's); None resolves per device at load."""
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="weights' dtype (default: float32 on a CPU, bfloat16 on CUDA)")


def nice(text: str) -> int:
    value = non_negative_float(text)
    if value != int(value) or value > 19:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number from 0 to 19")
    return int(value)


def nats_arg(p):
    p.add_argument("--nats", help="broker URL (default: $SPECSTOP_NATS_URL or nats://127.0.0.1:4222)")
    auth_args(p)


def auth_args(p):
    """Broker identity and TLS: files only (a secret is never a flag's value); each flag has an environment
    twin (pipeline/transport/auth.py), the flag wins."""
    g = p.add_argument_group("broker credentials and TLS (files; or SPECSTOP_NATS_* environment variables)")
    g.add_argument("--creds", dest="nats_creds", metavar="FILE", help="NATS user credentials file (JWT + seed)")
    g.add_argument("--nkey", dest="nats_nkey", metavar="FILE", help="file holding a user nkey seed (SU...)")
    g.add_argument("--user", dest="nats_user", metavar="NAME", help="user name (password from --password-file "
                                                                 "or $SPECSTOP_NATS_PASSWORD)")
    g.add_argument("--password-file", dest="nats_password_file", metavar="FILE",
                   help="file holding the broker password for --user")
    g.add_argument("--tls-ca", dest="nats_tls_ca", metavar="FILE", help="CA the broker's certificate must chain to")
    g.add_argument("--tls-cert", dest="nats_tls_cert", metavar="FILE", help="client certificate (mutual TLS)")
    g.add_argument("--tls-key", dest="nats_tls_key", metavar="FILE", help="client certificate's key")
    g.add_argument("--js-domain", dest="nats_js_domain", metavar="NAME",
                   help="JetStream domain of the hub (an edge on a leaf node)")
    g.add_argument("--client-id", dest="nats_client_id", metavar="ID",
                   help="id of this client identity (client.tmpl): replies arrive under _INBOX_client_ID, "
                        "the only inbox it may read")


def node_id(text: str) -> str:
    if not valid_id(text):
        raise argparse.ArgumentTypeError(f"'{text}' must be 1..128 ASCII letters, digits, '-' or '_'")
    return text


def node_args(p, default_id):
    from pipeline.orchestration.serve import NodeOptions

    n = NodeOptions("", default_id, None)  # the options own the defaults; the parser only shows them
    nats_arg(p)
    p.add_argument("--id", type=node_id, default=default_id, help="node id (names its subjects and log)")
    log_args(p)
    p.add_argument("--max-length", type=positive_int, default=n.max_length, help="longest draft accepted/produced")
    model_args(p)
    p.add_argument("--model-nice", type=nice, default=n.model_nice,
                   help="lower the model thread's priority by this much (0-19) so the event loop stays prompt")
    p.add_argument("--drain-timeout", type=positive_float, default=n.drain_timeout_s,
                   help="seconds to finish work in hand after SIGTERM/SIGINT")
    p.add_argument("--emulate", metavar="DEVICE",
                   help="pad compute to a device profile's times (shipped: jetson-orin-nano, rtx-3090-ti, "
                        "as-is; or a JSON file)")
    metrics_arg(p)
    p.set_defaults(threads=1)


def log_args(p) -> None:
    """Where a worker's events go: every event as JSON to --log-file (what analysis reads); on the console
    (stderr) those at --log-level or above (per-round events are debug), for people on a terminal."""
    p.add_argument("--log-file", help="JSON-lines log file: every event, whatever --log-level (default: none)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="least level shown on the console (default info; per-round events are debug)")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                   help="console lines: readable (console), JSON objects (json), or readable on a terminal "
                        "and JSON otherwise (auto, the default); a --log-file is always JSON")


def hostport(text: str) -> str:
    """HOST:PORT (or :PORT, host 127.0.0.1; port 0 picks a free one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not HOST:PORT (port 0-65535)")
    return text if host else f"127.0.0.1:{port}"


def metrics_arg(p) -> None:
    p.add_argument("--metrics", type=hostport, metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default)")


def workload_args(p, local: bool):
    """The workload's flags; `local` (demo): this command starts the edge, so the link and the run folder
    are its to set (`run` drives edges that already run their own links and log folders)."""
    from pipeline.orchestration.local import RunConfig

    r = RunConfig()  # the run's config owns the defaults; the parser only shows them
    p.add_argument("--requests", type=positive_int, default=r.requests)
    p.add_argument("--concurrency", type=positive_int, default=r.concurrency)
    p.add_argument("--max-new-tokens", type=positive_int, default=r.max_new_tokens)
    if local:
        p.add_argument("--channel", default=r.channel, help="the edge's link emulation (see README)")
        p.add_argument("--run-root", default=r.run_root, help="parent folder of run directories")
    p.add_argument("--policy", default=r.policy, help="policy spec, or target-only")
    p.add_argument("--max-length", type=positive_int, default=r.max_length)
    p.add_argument("--temperature", type=non_negative_float, default=r.temperature)
    p.add_argument("--seed", type=int, default=r.seed)
    p.add_argument("--json", action="store_true", help="print one JSON object")

