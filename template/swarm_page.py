"""The live swarm page: the inspector's snapshot as HTML, served on 127.0.0.1.

    page = SwarmPage()
    server = serve_page(page, port=8080)     # a daemon thread; server.server_address[1] = port
    page.update(snapshot)                    # the inspector's loop, after every read
    server.shutdown(); server.server_close()

Routes: ``/`` (the page), ``/panel`` (its live part, an HTML fragment), ``/api/snapshot`` (the
latest snapshot: the same JSON as ``--json``), ``/api/history`` (the in-memory history behind
the time curves). The page polls ``/api/snapshot`` every ``refresh_interval`` s and swaps in a
fresh ``/panel`` when the snapshot changed; without JavaScript it reloads itself. Charts are
inline SVG rendered here (:mod:`template.svg_charts`): nothing to build, nothing vendored.
HTTP handlers only read what the loop stored: they never touch the DHT, the chain or the store.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from template.svg_charts import bar_chart, line_chart
from template.swarm_snapshot import PeerRow, RoundRow, Snapshot


@dataclass(frozen=True)
class HistoryPoint:
    """One read of the swarm, for the curves over time."""

    time: float
    global_epoch: int
    samples_accumulated: int
    tokens_per_second: float
    """Sum over counted peers."""
    peers: int


class SwarmPage:
    """The latest snapshot, a bounded history of reads and every round seen (thread-safe).

    Rounds are kept across reads because a validator's state holds only its current round's
    transfers: a page that stays up keeps them after the validator moved on.

    :param history: reads kept for the time curves (at 2 s a read, 720 is 24 minutes).
    :param refresh_interval: seconds between the page's polls of ``/api/snapshot``.
    """

    def __init__(self, *, history: int = 720, refresh_interval: float = 2.0,
                 max_rounds: int = 500):
        self.refresh_interval, self.max_rounds = refresh_interval, max_rounds
        self._lock = threading.Lock()
        self._latest: Snapshot | None = None
        self._history: deque[HistoryPoint] = deque(maxlen=history)
        self._rounds: dict[int, RoundRow] = {}

    def update(self, snapshot: Snapshot) -> None:
        point = HistoryPoint(time=snapshot.time, global_epoch=snapshot.global_epoch,
                             samples_accumulated=snapshot.samples_accumulated,
                             tokens_per_second=sum(p.tokens_per_second for p in snapshot.peers),
                             peers=len(snapshot.peers))
        with self._lock:
            self._latest = snapshot
            self._history.append(point)
            for row in snapshot.rounds:
                known = self._rounds.get(row.epoch)
                # the validator's observed transfers outlive its state: keep them
                if known is None or known.source != "validator" or row.source == "validator":
                    self._rounds[row.epoch] = row
            for old in sorted(self._rounds)[:-self.max_rounds]:
                del self._rounds[old]

    def view(self) -> tuple[Snapshot | None, list[HistoryPoint], list[RoundRow]]:
        with self._lock:
            return (self._latest, list(self._history),
                    [self._rounds[e] for e in sorted(self._rounds)])


# ------------------------------------------------------------------ rendering (pure)


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, row_attrs: Sequence[str]
           = (), empty: str = "none") -> str:
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        f"<tr{row_attrs[i] if i < len(row_attrs) else ''}>"
        + "".join(f'<td data-k="{escape(h)}">{c}</td>' for h, c in zip(headers, row, strict=True))
        + "</tr>" for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_PEER_HEADERS = ("uid", "hotkey", "role", "epoch", "samples", "tok/s", "train loss", "age s",
                 "finished", "peer id")


def _peer_cells(p: PeerRow) -> list[str]:
    return ["-" if p.uid is None else str(p.uid), escape(p.hotkey), escape(p.role), str(p.epoch),
            str(p.samples), f"{p.tokens_per_second:.1f}", _f(p.train_loss, 4),
            f"{p.age_seconds:.1f}", "yes" if p.finished else "no", escape(p.peer_id)]


def _peers(s: Snapshot) -> str:
    rows = [_peer_cells(p) for p in s.peers]
    attrs = [f' data-peer="{escape(p.peer_id)}"' for p in s.peers]
    out = _table(_PEER_HEADERS, rows, row_attrs=attrs, empty="no counted peers")
    apart = [*s.unbound, *s.implausible]
    if apart:
        out += ("<h3>not counted (signer unbound, or epoch beyond the last checkpoint + 1)</h3>"
                + _table(_PEER_HEADERS, [_peer_cells(p) for p in apart],
                         row_attrs=[f' data-apart="{escape(p.peer_id)}"' for p in apart]))
    return out


def _senders(row: RoundRow) -> str:
    parts = []
    for s in row.senders:
        who = f"uid {s.uid}" if s.uid is not None else (s.peer_id or "?")[:12]
        what = ("failed" if s.failed else "banned" if s.banned
                else f"{_f(s.mb_per_second, 2)} MB/s" + (f", lag {s.lag:.2f} s"
                                                        if s.lag is not None else ""))
        parts.append(f"{escape(who)}: {what}")
    return "; ".join(parts) or "-"


def _rounds(rounds: Sequence[RoundRow]) -> str:
    rows = [[str(r.epoch), f"epoch-{r.epoch + 1}", (", ".join(map(str, r.participants)) or "-")
             + (f" (+{r.unknown_participants} unbound)" if r.unknown_participants else ""),
             ", ".join(map(str, r.failed)) or "-", _f(r.seconds, 2),
             "-" if r.samples is None else str(r.samples), escape(r.source), _senders(r)]
            for r in reversed(rounds[-20:])]
    return _table(("epoch", "produced", "members (uid)", "failed", "seconds", "samples",
                   "source", "per sender"), rows, empty="no round seen yet")


def _checkpoints(s: Snapshot) -> str:
    rows = [[escape(c.tag), ", ".join(map(str, c.participants)) or "-", _f(c.train_loss, 4),
             _f(c.heldout_loss, 4), _f(c.perplexity, 1), _f(c.win_fraction, 2),
             "-" if c.flagged is None else ("FLAGGED" if c.flagged else "no")]
            for c in reversed(s.checkpoints[-20:])]
    return _table(("tag", "members (uid)", "train loss", "held-out loss", "perplexity",
                   "win fraction", "flagged"), rows, empty="no checkpoint yet")


def _scores(s: Snapshot) -> str:
    rows = [[str(r.uid), escape(r.validator), _f(r.components.get("gradient")),
             _f(r.components.get("steps")), _f(r.components.get("bandwidth")), _f(r.last),
             _f(r.total), _f(s.weights.get(r.uid))] for r in s.scores]
    scored = {r.uid for r in s.scores}
    rows += [[str(uid), "-", "-", "-", "-", "-", "-", _f(w)]
             for uid, w in s.weights.items() if uid not in scored]
    return _table(("uid", "validator", "gradient", "steps", "bandwidth", "last round",
                   "moving average", "weight on chain"), rows,
                  empty="no scores (pass --workdir for validators' state) and no weights")


def _validators(s: Snapshot) -> str:
    chain = _table(("uid", "hotkey", "stake", "permit", "weights set for"),
                   [[str(v.uid), escape(v.hotkey), f"{v.stake:.1f}", "yes" if v.permit else "no",
                     f"{len(v.weights)} uids" if v.weights else "none yet"]
                    for v in s.validators], empty="no validator on chain")
    states = _table(("state", "last scored epoch", "collecting epoch", "rounds",
                     "last weights block"),
                    [[escape(v.name), "-" if v.last_scored_epoch is None
                      else str(v.last_scored_epoch),
                      "-" if v.collecting_epoch is None else str(v.collecting_epoch),
                      escape(", ".join(f"{k} {n}" for k, n in sorted(v.rounds.items())) or "-"),
                      "-" if v.last_weights_block is None else str(v.last_weights_block)]
                     for v in s.validator_states], empty="no validator state read")
    return chain + "<h3>what they last did (their persisted state)</h3>" + states


def charts(s: Snapshot, history: Sequence[HistoryPoint], rounds: Sequence[RoundRow]) -> str:
    """The page's SVG charts: losses per epoch, throughput over time, round seconds, weights."""
    losses = {
        "train (pusher)": [(c.epoch, c.train_loss) for c in s.checkpoints
                           if c.train_loss is not None],
        "train (miners' mean)": list(s.miner_loss.items()),
        "held-out": [(c.epoch, c.heldout_loss) for c in s.checkpoints
                     if c.heldout_loss is not None],
    }
    t0 = history[0].time if history else 0.0
    return "".join([
        line_chart(losses, title="loss per checkpoint", x_label="epoch", y_label="loss"),
        line_chart({"tokens/s": [(p.time - t0, p.tokens_per_second) for p in history],
                    },
                   title="swarm throughput (counted peers)", x_label="seconds since page start",
                   y_label="tokens/s"),
        line_chart({"samples": [(p.time - t0, p.samples_accumulated) for p in history]},
                   title=f"samples toward the target ({s.target_batch_size})",
                   x_label="seconds since page start", y_label="samples"),
        line_chart({"seconds": [(r.epoch, r.seconds) for r in rounds if r.seconds is not None]},
                   title="all-reduce seconds per round", x_label="epoch averaged",
                   y_label="seconds"),
        bar_chart({f"uid {u}": w for u, w in s.weights.items()}, title="weights on chain",
                  y_label="weight"),
    ])


def render_panel(s: Snapshot, history: Sequence[HistoryPoint],
                 rounds: Sequence[RoundRow]) -> str:
    """The live part of the page (pure: the same snapshot gives the same HTML)."""
    pct = 100.0 * s.samples_accumulated / max(1, s.target_batch_size)
    notes = "".join(f"<li>{escape(n)}</li>" for n in s.notes)
    return (
        f'<p class="summary">run <b id="run-id">{escape(s.run_id)}</b>: global epoch '
        f'<b id="global-epoch">{s.global_epoch}</b>, <span id="samples">'
        f"{s.samples_accumulated}</span>/<span id=\"target\">{s.target_batch_size}</span> "
        f"samples ({pct:.0f}%, target: {escape(s.target_source)}), "
        f'<b id="peer-count">{len(s.peers)}</b> counted peers; chain netuid {s.netuid} block '
        f'{"-" if s.block is None else s.block}; latest checkpoint <span id="latest">'
        f'{"-" if s.latest_checkpoint is None else f"epoch-{s.latest_checkpoint}"}</span></p>'
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
        + f'<div class="charts">{charts(s, history, rounds)}</div>'
        + "<h2>peers</h2>" + _peers(s)
        + "<h2>rounds</h2>" + _rounds(rounds)
        + "<h2>checkpoints</h2>" + _checkpoints(s)
        + "<h2>scores and weights</h2>" + _scores(s)
        + "<h2>validators</h2>" + _validators(s))


_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px;margin-bottom:1em}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
.charts{display:flex;flex-wrap:wrap;gap:8px}.chart{border:1px solid #eee}
.notes{color:#8a5a00}#status{color:#888;font-size:12px}"""


def render_page(s: Snapshot | None, history: Sequence[HistoryPoint],
                rounds: Sequence[RoundRow], *, refresh_interval: float = 2.0) -> str:
    """The whole page: the panel, and a script that refreshes it when the snapshot changes."""
    panel = (render_panel(s, history, rounds) if s is not None
             else "<p>waiting for the first read of the swarm...</p>")
    stamp = json.dumps(None if s is None else s.time)
    ms = max(250, int(refresh_interval * 1000))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>swarm {escape(s.run_id if s else "")}</title>
<noscript><meta http-equiv="refresh" content="{max(1, round(refresh_interval))}"></noscript>
<style>{_STYLE}</style></head>
<body><h1>swarm inspector</h1><div id="status">live: refreshes every {ms / 1000:g} s</div>
<div id="live">{panel}</div>
<script>
let shown = {stamp};
async function poll() {{
  try {{
    const snap = await (await fetch("/api/snapshot")).json();
    if (snap.time !== shown) {{
      document.getElementById("live").innerHTML = await (await fetch("/panel")).text();
      shown = snap.time;
    }}
    document.getElementById("status").textContent = "live: read " + new Date(snap.time * 1000)
      .toLocaleTimeString();
  }} catch (err) {{
    document.getElementById("status").textContent = "inspector unreachable: " + err;
  }}
}}
setInterval(poll, {ms});
</script></body></html>"""


# ------------------------------------------------------------------ serving


def _handler(page: SwarmPage) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            snapshot, history, rounds = page.view()
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, "text/html; charset=utf-8", render_page(
                    snapshot, history, rounds, refresh_interval=page.refresh_interval))
            elif path == "/panel" and snapshot is not None:
                self._send(200, "text/html; charset=utf-8",
                           render_panel(snapshot, history, rounds))
            elif path == "/api/snapshot" and snapshot is not None:
                self._send(200, "application/json", json.dumps(snapshot.to_json()))
            elif path == "/api/history":
                self._send(200, "application/json", json.dumps([asdict(p) for p in history]))
            elif path in ("/panel", "/api/snapshot"):
                self._send(503, "application/json", json.dumps({"error": "no read yet"}))
            else:
                self._send(404, "text/plain", "not found")

        def _send(self, status: int, kind: str, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # one line per poll would drown the inspector's own output

    return Handler


def serve_page(page: SwarmPage, *, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``page`` on ``host:port`` from a daemon thread (``port=0``: any free port; read it
    from ``server.server_address``). Stop with ``server.shutdown(); server.server_close()``."""
    server = ThreadingHTTPServer((host, port), _handler(page))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="swarm-page", daemon=True).start()
    return server

