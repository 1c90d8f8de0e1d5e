"""Server-drawn SVG: a latency line for 24 hours and uptime bars. No JavaScript library."""

from __future__ import annotations

from datetime import datetime, timedelta
from xml.sax.saxutils import escape

from flask_babel import gettext as _
from flask_babel import ngettext

from app.health.history import Bucket
from app.i18n import colon, local_time

# Missing polls break the line after this many poll intervals without one. A node is polled once a round at the
# same offset, and a round leaves itself time to end within its interval (poller.ROUND_HEADROOM), so polls come
# an interval apart. A round that overran all the same (an apply waiting on a lock), whose next round the scheduler
# then skips, or a late poll leaves a gap under 3 intervals and the line goes on; a longer gap means nobody polled
# the node, and a line across it would claim a latency nobody measured.
GAP_INTERVALS = 3


def line_pieces(points: list[tuple[datetime, float | None]], *, start: datetime, end: datetime,
                poll_interval: timedelta | None = None) -> list[list[tuple[datetime, float]]]:
    """The runs of successful polls between `start` and `end` that the line joins: a failed poll (latency None)
    ends a run, and so does a gap longer than GAP_INTERVALS poll intervals. A poll outside the window, such as
    one later than `end` after the clock stepped back, is left out: where it belongs on the axis is unknown."""
    pieces: list[list[tuple[datetime, float]]] = []
    run: list[tuple[datetime, float]] = []
    for at, latency in sorted(points, key=lambda point: point[0]):
        if not start <= at <= end:
            continue
        broken = latency is None or bool(run and poll_interval and at - run[-1][0] > poll_interval * GAP_INTERVALS)
        if broken and run:
            pieces.append(run)
            run = []
        if latency is not None:
            run.append((at, latency))
    if run:
        pieces.append(run)
    return pieces


def latency_chart(points: list[tuple[datetime, float | None]], *, end: datetime, hours: int = 24, width: int = 720,
                  height: int = 160, poll_interval: timedelta | None = None) -> str:
    """The line for the eye, broken where polls failed or none were taken (`line_pieces`); a lone successful poll
    is a dot, as a one-point path paints nothing. Its name gives a screen reader the figures the line shows and
    its breaks (WCAG 1.1.1). Points are (time, latency in ms), None for a failed poll."""
    start = end - timedelta(hours=hours)
    pieces = line_pieces(points, start=start, end=end, poll_interval=poll_interval)
    drawn = [point for piece in pieces for point in piece]
    failed = sum(1 for at, latency in points if latency is None and start <= at <= end)
    pad = 36
    top = max([latency for _, latency in drawn] + [10.0]) * 1.1
    def x(at: datetime) -> float:
        return pad + (at - start).total_seconds() / (hours * 3600) * (width - pad - 8)

    def y(latency: float) -> float:
        return height - 20 - latency / top * (height - 30)

    label = _("latency, last %(n)s hours", n=hours)
    if drawn:
        latencies = [latency for _, latency in drawn]
        label = _("%(label)s: %(n)s successful polls, lowest %(low).0f ms, highest %(high).0f ms, latest %(last).0f ms",
                  label=label, n=len(drawn), low=min(latencies), high=max(latencies), last=latencies[-1])
    else:
        label = _("%(label)s: no successful polls", label=label)
    if failed:
        label = ngettext("%(label)s; %(num)s failed poll", "%(label)s; %(num)s failed polls", failed, label=label)
    if len(pieces) > 1:
        label = ngettext("%(label)s; the line is broken into %(num)s piece where polls failed or none were taken",
                         "%(label)s; the line is broken into %(num)s pieces where polls failed or none were taken",
                         len(pieces), label=label)
    words = {"label": label, "start": _("-%(n)sh", n=hours), "now": _("now"), "empty": _("no successful polls")}
    words = {key: escape(str(value), {'"': "&quot;"}) for key, value in words.items()}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart latency" '
             f'role="img" aria-label="{words["label"]}">',
             f'<line x1="{pad}" y1="{height - 20}" x2="{width - 8}" y2="{height - 20}" stroke="#d9dee4"/>',
             # the scale only with a line to read against it (an empty chart said "11 ms" of nothing)
             f'<text x="2" y="14" font-size="11" fill="#66707c">{top:.0f} ms</text>' if drawn else "",
             f'<text x="2" y="{height - 22}" font-size="11" fill="#66707c">0</text>' if drawn else "",
             f'<text x="{pad}" y="{height - 4}" font-size="11" fill="#66707c">{words["start"]}</text>',
             f'<text x="{width - 8}" y="{height - 4}" text-anchor="end" font-size="11" fill="#66707c">'
             f'{words["now"]}</text>']
    lines = [piece for piece in pieces if len(piece) > 1]
    if lines:
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(at):.1f},{y(latency):.1f}" for piece in lines
                        for i, (at, latency) in enumerate(piece))
        parts.append(f'<path d="{path}" fill="none" stroke="#0b3d91" stroke-width="1.5"/>')
    for at, latency in (piece[0] for piece in pieces if len(piece) == 1):
        # a dot a little wider than the line, so a lone poll is seen (a one-point subpath is not painted)
        parts.append(f'<circle cx="{x(at):.1f}" cy="{y(latency):.1f}" r="2.5" fill="#0b3d91"/>')
    if not drawn:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12" '
                     f'fill="#66707c">{words["empty"]}</text>')
    parts.append("</svg>")
    return "".join(parts)


# A bar that carries a state stands out 3:1 from the card (WCAG 1.4.11); "unknown" (no checks in the period) is
# meant to recede, and the chart's name gives every count as text.
BAND_COLOURS = {"full": "#1e7b34", "partial": "#b58900", "none": "#b3261e", "unknown": "#e3e7eb"}


def _band(uptime: float | None) -> str:
    if uptime is None:
        return "unknown"
    return "full" if uptime >= 0.999 else "none" if uptime < 0.5 else "partial"


def uptime_bars(buckets: list[Bucket], *, label: str, width: int = 720, height: int = 34) -> str:
    """One bar per bucket: green full uptime, amber partial, red none, grey no data. The colours are
    counted in the chart's name, which is all a screen reader has of it (WCAG 1.1.1, 1.4.1)."""
    count = max(1, len(buckets))
    bar = width / count
    bands = [_band(bucket.uptime) for bucket in buckets]
    summary = _("%(label)s: %(full)s of %(n)s periods fully up, %(partial)s partly, %(none)s down, %(unknown)s "
                "without data", label=label, n=len(buckets), full=bands.count("full"),
                partial=bands.count("partial"), none=bands.count("none"), unknown=bands.count("unknown"))
    summary = escape(summary, {'"': "&quot;"})
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart uptime" '
             f'role="img" aria-label="{summary}">']
    for index, (bucket, band) in enumerate(zip(buckets, bands, strict=True)):
        uptime = bucket.uptime
        title = _("no data") if uptime is None else ngettext("%(percent)s%% of %(num)s poll",
                                                              "%(percent)s%% of %(num)s polls", bucket.polls,
                                                              percent=f"{uptime * 100:.1f}")
        title = escape(f"{local_time(bucket.start, '%Y-%m-%d %H:%M')}{colon()}{title}")  # as every console time
        parts.append(f'<rect x="{index * bar + 1:.1f}" y="2" width="{max(bar - 2, 1):.1f}" height="{height - 4}" '
                     f'rx="2" fill="{BAND_COLOURS[band]}"><title>{title}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)
