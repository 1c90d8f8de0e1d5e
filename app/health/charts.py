"""Server-drawn SVG: a latency line for 24 hours and uptime bars. No JavaScript library."""

from __future__ import annotations

from datetime import datetime, timedelta
from xml.sax.saxutils import escape

from flask_babel import gettext as _

from app.health.history import Bucket
from app.i18n import local_time


def latency_chart(points: list[tuple[datetime, float]], *, end: datetime, hours: int = 24, width: int = 720,
                  height: int = 160) -> str:
    """The line for the eye; its name gives a screen reader the figures the line shows (WCAG 1.1.1)."""
    start = end - timedelta(hours=hours)
    pad = 36
    top = max([latency for _, latency in points] + [10.0]) * 1.1
    def x(at: datetime) -> float:
        return pad + (at - start).total_seconds() / (hours * 3600) * (width - pad - 8)

    def y(latency: float) -> float:
        return height - 20 - latency / top * (height - 30)

    label = _("latency, last %(n)s hours", n=hours)
    if points:
        latencies = [latency for _, latency in points]
        label = _("%(label)s: %(n)s successful polls, lowest %(low).0f ms, highest %(high).0f ms, latest %(last).0f ms",
                  label=label, n=len(points), low=min(latencies), high=max(latencies), last=latencies[-1])
    else:
        label = _("%(label)s: no successful polls", label=label)
    words = {"label": label, "start": _("-%(n)sh", n=hours), "now": _("now"), "empty": _("no successful polls")}
    words = {key: escape(str(value)) for key, value in words.items()}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart latency" '
             f'role="img" aria-label="{words["label"]}">',
             f'<line x1="{pad}" y1="{height - 20}" x2="{width - 8}" y2="{height - 20}" stroke="#d9dee4"/>',
             # the scale only with a line to read against it (an empty chart said "11 ms" of nothing)
             f'<text x="2" y="14" font-size="11" fill="#66707c">{top:.0f} ms</text>' if points else "",
             f'<text x="2" y="{height - 22}" font-size="11" fill="#66707c">0</text>' if points else "",
             f'<text x="{pad}" y="{height - 4}" font-size="11" fill="#66707c">{words["start"]}</text>',
             f'<text x="{width - 8}" y="{height - 4}" text-anchor="end" font-size="11" fill="#66707c">'
             f'{words["now"]}</text>']
    if points:
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(at):.1f},{y(latency):.1f}" for i, (at, latency) in
                        enumerate(points))
        parts.append(f'<path d="{path}" fill="none" stroke="#0b3d91" stroke-width="1.5"/>')
    else:
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
        title = _("no data") if uptime is None else _("%(percent)s%% of %(n)s polls", percent=f"{uptime * 100:.1f}",
                                                       n=bucket.polls)
        title = escape(f"{local_time(bucket.start, '%Y-%m-%d %H:%M')}: {title}")  # as every console time
        parts.append(f'<rect x="{index * bar + 1:.1f}" y="2" width="{max(bar - 2, 1):.1f}" height="{height - 4}" '
                     f'rx="2" fill="{BAND_COLOURS[band]}"><title>{title}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)
