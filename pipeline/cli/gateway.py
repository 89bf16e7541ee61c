"""`specstop gateway`: an OpenAI-compatible HTTP API (completions, chat, SSE streaming) in front of the edges."""
from __future__ import annotations

import argparse

from pipeline.cli.args import hostport, log_args, metrics_arg, nats_arg, node_id, positive_float, positive_int
from pipeline.http.config import GatewayConfig, GatewayOptions


def cmd_gateway(a: argparse.Namespace) -> None:
    from pipeline.http.serve import serve_gateway
    from pipeline.transport import aio
    from pipeline.transport.broker import default_nats_url

    from pipeline.cli.preflight import check_tokenizer, context_tokens

    check_tokenizer(a.tokenizer)  # a path that cannot load is refused before the broker probe
    context = a.max_context_tokens or context_tokens(a.tokenizer)
    cfg = GatewayConfig(model_name=a.model_name, max_context_tokens=context, max_in_flight=a.max_in_flight, max_tokens_limit=a.max_tokens_limit,
                        max_prompt_tokens=a.max_prompt_tokens, default_chat_tokens=a.default_chat_tokens,
                        request_timeout_s=a.request_timeout, silence_timeout_s=a.silence_timeout,
                        max_length=a.max_length, edge_id=a.edge, header_timeout_s=a.header_timeout,
                        body_timeout_s=a.body_timeout, max_connections=a.max_connections)
    aio.run(serve_gateway(GatewayOptions(a.http, default_nats_url(a.nats), a.id, a.log_file, a.metrics, a.tokenizer,
                                         cfg, a.drain_timeout)))


def register(sub) -> None:
    c, o = GatewayConfig(), GatewayOptions("", "")  # these own the defaults; the parser only shows them
    p = sub.add_parser("gateway", help="OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions) "
                                       "in front of the edges")
    p.add_argument("--http", type=hostport, default="127.0.0.1:8000", metavar="HOST:PORT",
                   help="where to listen (default 127.0.0.1:8000); /metrics is served there too")
    nats_arg(p)
    p.add_argument("--id", type=node_id, default=o.node_id, help="node id (names its log)")
    log_args(p)
    metrics_arg(p)
    p.add_argument("--edge", type=node_id, metavar="EDGE_ID",
                   help="front this edge only (specstop.generate.EDGE_ID, its timing events): a device's gateway, "
                        "whose identity may read no other edge's subjects (default: every edge, as a queue group)")
    p.add_argument("--model-name", default=c.model_name, help="the model id clients ask for (GET /v1/models)")
    p.add_argument("--tokenizer", help="tokenizer counting prompt tokens and rendering chat templates "
                                       "(default: the bundled pair's)")
    p.add_argument("--max-in-flight", type=positive_int, default=c.max_in_flight,
                   help="generations at once; beyond, 429 overloaded")
    p.add_argument("--max-tokens-limit", type=positive_int, default=c.max_tokens_limit,
                   help="largest max_tokens accepted")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=c.max_prompt_tokens,
                   help="longest prompt accepted (tokens)")
    p.add_argument("--max-context-tokens", type=positive_int,
                   help="prompt + max_tokens beyond this is a 400 context_length_exceeded (default: the "
                        "--tokenizer model's max_position_embeddings when it is a local directory)")
    p.add_argument("--default-chat-tokens", type=positive_int, default=c.default_chat_tokens,
                   help=f"max_tokens of a chat request that names none (completions: "
                        f"{c.default_completion_tokens}, as OpenAI)")
    p.add_argument("--request-timeout", type=positive_float, default=c.request_timeout_s,
                   help="a request's deadline in seconds (a request's specstop.deadline_s may be shorter); 504 after")
    p.add_argument("--silence-timeout", type=positive_float, default=c.silence_timeout_s,
                   help="seconds without a round before a request fails with 504")
    p.add_argument("--max-length", type=positive_int, default=c.max_length,
                   help="longest draft of the edges (specstop.policy specs are checked against it)")
    p.add_argument("--header-timeout", type=positive_float, default=c.header_timeout_s,
                   help="seconds a connection has to send a request line and headers (from opening, or from the "
                        "previous response); after: 408 and closed")
    p.add_argument("--body-timeout", type=positive_float, default=c.body_timeout_s,
                   help="seconds a request has to send its body once its headers are in; after: 408")
    p.add_argument("--max-connections", type=positive_int, default=c.max_connections,
                   help="HTTP connections open at once; the next one gets 503 and is closed")
    p.add_argument("--drain-timeout", type=positive_float, default=o.drain_timeout_s,
                   help="after SIGTERM/SIGINT: seconds running generations may finish (new connections refused)")
    p.set_defaults(func=cmd_gateway)
