"""The partner pages' HTML: overview, points, reserve, policies, swaps and API credentials
(payments, the Market and webhooks: :mod:`.commerce_pages`), and their shared layout.

Functions from plain data (the partner API's own objects, as its routes answer them) to a
page string, in the layout of :func:`gateway.dashboard.pages.page`. Every page of a mode
carries the mode in its path (``/dashboard/partner/test/...``) and a switch to the same page
of the other mode: nothing here mixes the two modes' objects, the handler reads one mode only.

Every form that changes something carries the session's CSRF token and an idempotency key made
when the page was drawn: a form sent twice is the same operation, answered with its first
outcome (the partner API's ``Idempotency-Key``). A viewer gets the same pages without forms.
"""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.dashboard.pages import BASE, _table, e, page, problem_box
from gateway.dashboard.sessions import Session

__all__ = [
    "PARTNER_PAGES",
    "VOLUME_WINDOWS",
    "PartnerView",
    "SwapVolume",
    "VolumeBucket",
    "VolumeWindow",
    "credentials_page",
    "overview_page",
    "partner_path",
    "partner_signin_page",
    "points_page",
    "policy_page",
    "reserve_page",
    "svg_line_chart",
    "swap_volume",
    "swaps_page",
    "utc_time",
    "volume_start_ms",
]

PARTNER_BASE = f"{BASE}/partner"
PREVIEW_SCRIPT = f"{BASE}/static/policy-preview.js"
# (slug, title) in navigation order.
PARTNER_PAGES: Sequence[tuple[str, str]] = (
    ("overview", "Overview"),
    ("points", "Points"),
    ("reserve", "Reserve"),
    ("policy", "Policies"),
    ("swaps", "Swaps"),
    ("payments", "Payments"),
    ("market", "Market"),
    ("orders", "Orders"),
    ("webhooks", "Webhooks"),
    ("credentials", "API credentials"),
)
CHART_POINTS_MAX = 100


def partner_path(mode: str, slug: str) -> str:
    return f"{PARTNER_BASE}/{mode}/{slug}"


@dataclass(frozen=True, slots=True)
class PartnerView:
    """Who looks at which page: the session, its partner and role, the page's mode."""

    session: Session
    partner: str
    admin: bool
    mode: str  # "test" or "live"
    slug: str
    notice: str = ""  # what the last action did
    problem: tuple[str, str] | None = None  # (code, message) of the last action's refusal


def _nav(view: PartnerView) -> str:
    items = []
    for slug, title in PARTNER_PAGES:
        current = ' aria-current="page"' if slug == view.slug else ""
        items.append(f'<li><a href="{partner_path(view.mode, slug)}"{current}>{e(title)}</a></li>')
    return "".join(items)


def _switch(view: PartnerView) -> str:
    other = "live" if view.mode == "test" else "test"
    return (
        f'<p class="mode mode-{view.mode}" id="mode">Viewing <strong>{view.mode} mode</strong> '
        f"data of {e(view.partner)} ({'admin' if view.admin else 'viewer'}). "
        f'<a href="{partner_path(other, view.slug)}" id="mode-switch">Switch to {other} mode</a>'
        "</p>"
    )


def _partner_page(view: PartnerView, title: str, body: str, script: str = "") -> str:
    top = _switch(view)
    if view.notice:
        top += f'<p class="notice" role="status" id="notice">{e(view.notice)}</p>'
    if view.problem is not None:
        top += problem_box(*view.problem)
    return page(
        title,
        top + body,
        session=view.session,
        current=partner_path(view.mode, view.slug),
        nav_html=_nav(view),
        script=script,
    )


def _form(
    view: PartnerView, action: str, fields: str, button: str, form_id: str, attrs: str = ""
) -> str:
    """A change form (admins only): CSRF token, an idempotency key for this drawing."""
    if not view.admin:
        return ""
    return (
        f'<form method="post" action="{partner_path(view.mode, action)}" class="card" '
        f'id="{form_id}"{attrs}>'
        f'<input type="hidden" name="csrf" value="{e(view.session.csrf_token)}">'
        f'<input type="hidden" name="key" value="{secrets.token_urlsafe(16)}">{fields}'
        f'<button type="submit">{e(button)}</button></form>'
    )


def _input(name: str, label: str, value: str = "", kind: str = "text", extra: str = "") -> str:
    return (
        f'<label for="{name}">{e(label)}</label>'
        f'<input id="{name}" name="{name}" type="{kind}" value="{e(value)}" {extra}>'
    )


def _digits(name: str, label: str, value: str = "") -> str:
    return _input(name, label, value, extra='inputmode="numeric" pattern="[0-9]+" required')


def _facts(rows: Sequence[tuple[str, object]], element_id: str) -> str:
    return (
        f'<dl class="facts" id="{element_id}">'
        + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows)
        + "</dl>"
    )


def partner_signin_page(
    csrf: str, problem: tuple[str, str] | None = None, partner: str = "", name: str = ""
) -> str:
    body = (problem_box(*problem) if problem else "") + (
        f'<form method="post" action="{PARTNER_BASE}/signin" class="card">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        + _input("partner", "Partner", partner, extra='autocomplete="organization" required')
        + _input("name", "User name", name, extra='autocomplete="username" required')
        + _input(
            "password",
            "Password",
            kind="password",
            extra='autocomplete="current-password" required',
        )
        + '<label for="totp">Code from your authenticator app</label>'
        '<input id="totp" name="totp" inputmode="numeric" autocomplete="one-time-code"'
        ' pattern="[0-9]{6}" maxlength="6" required>'
        '<button type="submit">Sign in</button></form>'
        f'<p><a href="{BASE}/signin">Operator sign-in</a></p>'
    )
    return page("Partner sign-in", body)


# -- overview --------------------------------------------------------------------------------


def svg_line_chart(title: str, points: Sequence[tuple[int, int]], chart_id: str) -> str:
    """A server-drawn line chart of ``(x, y)`` integer points (no library, no script), with a
    text equivalent for screen readers."""
    width, height, pad = 600, 200, 10
    if len(points) < 2:
        return f'<p id="{chart_id}">{e(title)}: not enough history to draw yet.</p>'
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x0, x1 = min(xs), max(xs) or 1
    y0, y1 = 0, max(ys) or 1
    span_x = (x1 - x0) or 1
    coords = " ".join(
        f"{pad + (x - x0) * (width - 2 * pad) / span_x:.1f},"
        f"{height - pad - (y - y0) * (height - 2 * pad) / (y1 - y0 or 1):.1f}"
        for x, y in points
    )
    return (
        f'<figure class="chart" id="{chart_id}"><figcaption>{e(title)}</figcaption>'
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}: from '
        f'{e(ys[0])} to {e(ys[-1])}, highest {e(max(ys))}">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f4f7fb"/>'
        f'<polyline fill="none" stroke="#0b4f8a" stroke-width="3" points="{coords}"/></svg>'
        "</figure>"
    )


def overview_page(
    view: PartnerView,
    asset: Mapping[str, Any] | None,
    reserve: Mapping[str, Any] | None,
    problems: Sequence[tuple[str, str]],
    volume: SwapVolume | None = None,
) -> str:
    body = "".join(problem_box(*p) for p in problems)
    rows: list[tuple[str, object]] = []
    if asset is not None:
        rows += [("Point asset", asset["code"]), ("Outstanding supply", asset["supply"])]
    else:
        rows.append(("Point asset", "none defined yet"))
    if reserve is not None:
        rows += [
            ("Reserve level (BAAS units)", reserve["level"]),
            ("Low threshold", reserve["threshold"]),
            ("Reserve low", "yes" if reserve["low"] else "no"),
        ]
    body += _facts(rows, "overview-facts")
    if reserve is not None:
        history = [(int(h["timestamp"]), int(h["level"])) for h in reserve["history"]]
        body += svg_line_chart("Reserve level over time", history, "reserve-chart")
    if volume is not None:
        body += _volume_section(view, volume)
    return _partner_page(view, "Overview", body)


# -- swap volume (the overview's chart, from the swaps list) -----------------------------------

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True, slots=True)
class VolumeWindow:
    """A chart's window: ``buckets`` buckets of ``bucket_ms``, the newest holding now."""

    title: str
    bucket_ms: int
    buckets: int
    per: str  # "hour" or "day"


VOLUME_WINDOWS: Mapping[str, VolumeWindow] = {
    "24h": VolumeWindow("last 24 hours", HOUR_MS, 24, "hour"),
    "7d": VolumeWindow("last 7 days", DAY_MS, 7, "day"),
    "30d": VolumeWindow("last 30 days", DAY_MS, 30, "day"),
}
VOLUME_WINDOW_DEFAULT = "7d"


@dataclass(frozen=True, slots=True)
class VolumeBucket:
    start_ms: int
    swaps: int
    points: int  # points moved (paid in by "in" swaps, paid out by "out" swaps)
    baas: int  # BAAS units moved the other way


@dataclass(frozen=True, slots=True)
class SwapVolume:
    """The succeeded swaps of a window, bucketed; ``read_from_ms`` is set when the bounded
    read stopped before the window's start (swaps older than it are not counted)."""

    window: str  # a key of VOLUME_WINDOWS
    buckets: tuple[VolumeBucket, ...]
    read_from_ms: int | None = None


def volume_start_ms(window: VolumeWindow, now_ms: int) -> int:
    """The window's first bucket's start: whole UTC hours or days, the last one holding now."""
    return (now_ms // window.bucket_ms - (window.buckets - 1)) * window.bucket_ms


def swap_volume(
    swaps: Iterable[Mapping[str, Any]], window: VolumeWindow, start_ms: int
) -> tuple[VolumeBucket, ...]:
    """Swap objects (as the list answers them) counted per bucket from ``start_ms``; a swap
    outside the window is not counted."""
    sums = [[0, 0, 0] for _ in range(window.buckets)]
    for swap in swaps:
        i = (int(swap["log_time_ms"]) - start_ms) // window.bucket_ms
        if not 0 <= i < window.buckets:
            continue
        paid, got = int(swap["amount_in"]), int(swap["amount_out"])
        points, baas = (paid, got) if swap["direction"] == "in" else (got, paid)
        sums[i][0] += 1
        sums[i][1] += points
        sums[i][2] += baas
    return tuple(
        VolumeBucket(start_ms + i * window.bucket_ms, n, points, baas)
        for i, (n, points, baas) in enumerate(sums)
    )


def utc_time(ms: int, per: str = "second") -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    shape = {"day": "%Y-%m-%d", "hour": "%Y-%m-%d %H:00"}.get(per, "%Y-%m-%d %H:%M:%S")
    return moment.strftime(shape) + " UTC"


def _volume_section(view: PartnerView, volume: SwapVolume) -> str:
    window = VOLUME_WINDOWS[volume.window]
    overview = partner_path(view.mode, "overview")
    links = " | ".join(
        f'<a href="{overview}?volume={key}"'
        + (' aria-current="true"' if key == volume.window else "")
        + f">{e(w.title)}</a>"
        for key, w in VOLUME_WINDOWS.items()
    )
    body = (
        f'<section id="swap-volume"><h2>Swap volume, {e(window.title)}</h2>'
        f"<p>Succeeded swaps per {window.per} (UTC), from the swaps list. Show: {links}</p>"
    )
    if volume.read_from_ms is not None:
        body += (
            '<p class="notice" id="volume-truncated">Window truncated: too many swaps to read '
            f"at once; counted from {e(utc_time(volume.read_from_ms))} on.</p>"
        )
    buckets = volume.buckets
    body += _facts(
        (
            ("Swaps", sum(b.swaps for b in buckets)),
            ("Points volume", sum(b.points for b in buckets)),
            ("BAAS volume (units)", sum(b.baas for b in buckets)),
        ),
        "volume-facts",
    )
    for label, series, chart_id in (
        ("Swaps", [b.swaps for b in buckets], "volume-count-chart"),
        ("Points volume", [b.points for b in buckets], "volume-points-chart"),
        ("BAAS volume", [b.baas for b in buckets], "volume-baas-chart"),
    ):
        points = [(b.start_ms, y) for b, y in zip(buckets, series, strict=True)]
        body += svg_line_chart(f"{label} per {window.per}", points, chart_id)
    body += _table(
        f"Swap volume per {window.per} (busy ones)",
        (window.per.capitalize(), "Swaps", "Points", "BAAS units"),
        (
            (e(utc_time(b.start_ms, window.per)), e(b.swaps), e(b.points), e(b.baas))
            for b in buckets
            if b.swaps
        ),
    )
    return body + "</section>"


# -- points ----------------------------------------------------------------------------------


def points_page(view: PartnerView, asset: Mapping[str, Any] | None) -> str:
    if asset is None:
        body = "<p>No point asset in this mode yet.</p>" + _form(
            view,
            "points/define",
            _input("code", "Code (A-Z, 0-9, _)", extra='pattern="[A-Z][A-Z0-9_]*" required')
            + _digits("scale", "Scale (decimals, 0..18)", "2")
            + _digits("validity_days", "Validity in days (0: no expiry)", "0"),
            "Define the point asset",
            "define-form",
        )
        return _partner_page(view, "Points", body)
    body = _facts(
        (
            ("Code", asset["code"]),
            ("Scale", asset["scale"]),
            ("Validity (days, 0: none)", asset["validity_days"]),
            ("Outstanding supply (your liability)", asset["supply"]),
        ),
        "asset-facts",
    )
    body += "<h2>Issue points to a linked user</h2>" + _form(
        view,
        "points/issue",
        _input("user", "Your user id (linked to a wallet)", extra="required")
        + _digits("amount", "Amount (in the asset's smallest unit)"),
        "Issue",
        "issue-form",
    )
    body += "<h2>Fund swap liquidity</h2>" + _form(
        view,
        "points/liquidity",
        "<p>Points moved from your issuance to the liquidity account that swaps from BAAS "
        "to points pay out of.</p>" + _digits("amount", "Amount (points)"),
        "Fund liquidity",
        "liquidity-form",
    )
    body += (
        "<h2>Redeem</h2><p>A redemption debits the user's wallet, so it needs the user's own "
        "approval: your platform asks <code>POST /v1/bridge/points/"
        f"{e(asset['code'])}/redeem/preview</code>, the user signs the <code>Approve</code> it "
        "answers in their wallet, and your platform sends the same body and key with the "
        "signature to <code>POST .../redeem</code> (docs/bridge-guide.md). The dashboard holds "
        "no user's key, so it does not redeem.</p>"
    )
    return _partner_page(view, "Points", body)


# -- reserve ---------------------------------------------------------------------------------


def reserve_page(view: PartnerView, reserve: Mapping[str, Any]) -> str:
    body = _facts(
        (
            ("Level (BAAS units)", reserve["level"]),
            ("Low threshold", reserve["threshold"]),
            ("Reserve low", "yes" if reserve["low"] else "no"),
        ),
        "reserve-facts",
    )
    if view.mode == "test":
        body += "<h2>Top up from the test faucet</h2>" + _form(
            view, "reserve/top_up", _digits("amount", "Amount (BAAS units)"), "Top up", "top-up"
        )
    else:
        body += "<p>Live BAAS comes only from on-chain deposits.</p>"
    body += "<h2>Low threshold</h2>" + _form(
        view,
        "reserve/threshold",
        _digits("threshold", "Warn below (BAAS units)", str(reserve["threshold"])),
        "Set threshold",
        "threshold-form",
    )
    body += _table(
        "Reserve history",
        ("Time (ms)", "Level"),
        ((e(h["timestamp"]), e(h["level"])) for h in reversed(reserve["history"])),
    )
    return _partner_page(view, "Reserve", body)


# -- policy ----------------------------------------------------------------------------------

POLICY_DEFAULTS: Mapping[str, str] = {
    "rate_num": "1",
    "rate_den": "1",
    "swap_min": "1",
    "swap_max": "1000000",
    "window_s": "86400",
    "user_window_max": "0",
    "partner_window_max": "0",
    "fee_bps": "0",
    "fee_min": "0",
}
POLICY_LABELS: Mapping[str, str] = {
    "rate_num": "Rate: BAAS units ...",
    "rate_den": "... per this many points",
    "swap_min": "Smallest swap (points)",
    "swap_max": "Largest swap (points)",
    "window_s": "Limit window (seconds)",
    "user_window_max": "Per user per window (points, 0: none)",
    "partner_window_max": "All users per window (points, 0: none)",
    "fee_bps": "Fee (basis points)",
    "fee_min": "Minimum fee (BAAS units)",
}


def policy_page(
    view: PartnerView, asset: Mapping[str, Any] | None, policy: Mapping[str, Any] | None
) -> str:
    if asset is None:
        body = (
            f'<p>Define your point asset first (<a href="{partner_path(view.mode, "points")}">'
            "Points</a>).</p>"
        )
        return _partner_page(view, "Policies", body)
    body = f"<p>Swap policy of <strong>{e(asset['code'])}</strong>: "
    if policy is None:
        body += "none set yet; swaps are refused until one is.</p>"
    else:
        body += f"version {e(policy['version'])}, {'enabled' if policy['enabled'] else 'off'}.</p>"
    current = {k: str(policy[k]) if policy else v for k, v in POLICY_DEFAULTS.items()}
    enabled = policy is None or bool(policy["enabled"])
    fields = "".join(_digits(name, POLICY_LABELS[name], current[name]) for name in POLICY_DEFAULTS)
    fields += (
        '<label class="check"><input type="checkbox" name="enabled" id="enabled" value="true"'
        f"{' checked' if enabled else ''}> Enabled</label>"
    )
    preview = (
        '<fieldset class="preview"><legend>Quote preview (nothing is saved)</legend>'
        '<label for="direction">Direction</label><select id="direction" name="direction">'
        '<option value="in">points to BAAS</option><option value="out">BAAS to points</option>'
        "</select>"
        + _digits("amount_in", "Amount in", "100")
        + '<output id="quote-preview" for="amount_in" aria-live="polite">'
        "Type to see a quote.</output></fieldset>"
    )
    if view.admin:
        attrs = f' data-preview="{partner_path(view.mode, "policy/preview")}"'
        body += _form(view, "policy", fields + preview, "Save the policy", "policy-form", attrs)
    elif policy is not None:  # a viewer sees the policy in force, never the form's defaults
        body += _facts([(POLICY_LABELS[k], current[k]) for k in POLICY_DEFAULTS], "policy-facts")
    return _partner_page(view, "Policies", body, script=PREVIEW_SCRIPT if view.admin else "")


# -- swaps -----------------------------------------------------------------------------------


SWAP_FILTERS: Sequence[str] = ("status", "user", "from", "to")


def swaps_page(
    view: PartnerView,
    swap: Mapping[str, Any] | None,
    asked: str,
    listing: Mapping[str, Any] | None = None,
    filters: Mapping[str, str] | None = None,
    problems: Sequence[tuple[str, str]] = (),
) -> str:
    """One swap by id (``swap``), and the recent swaps (``listing``: the list object, newest
    first) under the GET filter form (``filters``: what was asked, shown again)."""
    here = partner_path(view.mode, "swaps")
    shown = {k: (filters or {}).get(k, "") for k in SWAP_FILTERS}
    body = "".join(problem_box(*p) for p in problems)
    body += (
        f'<form method="get" action="{here}" class="card" id="swap-lookup">'
        + _input("id", "Swap id (swap_...)", asked, extra='required pattern="swap_[0-9a-f]{64}"')
        + '<button type="submit">Show the swap</button></form>'
    )
    if swap is not None:
        body += _facts(
            [
                (k.replace("_", " "), "" if swap[k] is None else swap[k])
                for k in (
                    "id", "status", "user", "asset", "direction", "amount_in", "amount_out",
                    "fee", "policy_version", "log_time_ms", "failure_code",
                )
            ],
            "swap-facts",
        )  # fmt: skip
    options = "".join(
        f'<option value="{v}"{" selected" if shown["status"] == v else ""}>{t}</option>'
        for v, t in (("", "any"), ("succeeded", "succeeded"), ("failed", "failed"))
    )
    body += (
        f'<h2>Recent swaps</h2><form method="get" action="{here}" class="card" id="swap-filters">'
        f'<label for="status">Status</label><select id="status" name="status">{options}</select>'
        + _input("user", "Your user id", shown["user"])
        + _input("from", "From day (UTC)", shown["from"], kind="date")
        + _input("to", "To day (UTC, included)", shown["to"], kind="date")
        + '<button type="submit">Filter</button></form>'
    )
    if listing is not None:
        body += _swaps_table(here, listing["data"])
        if listing["has_more"] and listing["data"]:
            asked_filters = {k: v for k, v in shown.items() if v}
            query = urllib.parse.urlencode(
                {**asked_filters, "starting_after": listing["data"][-1]["id"]}
            )
            body += (
                f'<p><a href="{here}?{e(query)}" id="swaps-next" rel="next">Next (older)</a></p>'
            )
    return _partner_page(view, "Swaps", body)


def _swaps_table(here: str, swaps: Sequence[Mapping[str, Any]]) -> str:
    if not swaps:
        return '<p id="swaps-list">No swap matches.</p>'
    rows = (
        (
            f'<a href="{here}?id={e(s["id"])}"><code>{e(s["id"][:13])}&hellip;</code></a>',
            e(utc_time(int(s["log_time_ms"]))),
            e(s["status"]),
            e(s["user"]),
            "points to BAAS" if s["direction"] == "in" else "BAAS to points",
            e(s["amount_in"]),
            e(s["amount_out"]),
            e(s["fee"]),
            "" if s["failure_code"] is None else f"<code>{e(s['failure_code'])}</code>",
        )
        for s in swaps
    )
    headers = ("Swap", "Time", "Status", "User", "Direction", "In", "Out", "Fee", "Failure")
    return f'<div id="swaps-list">{_table("Recent swaps, newest first", headers, rows)}</div>'


# -- API credentials -------------------------------------------------------------------------


def credentials_page(
    view: PartnerView, credentials: Sequence[Mapping[str, Any]], new_secret: tuple[str, str] | None
) -> str:
    body = ""
    if new_secret is not None:
        api_key, secret = new_secret
        body += (
            '<div class="secret" role="status" id="new-secret"><p><strong>New API credential '
            f"<code>{e(api_key)}</code></strong>. Its secret is shown this once; store it in "
            f'your servers now:</p><p><code id="secret-value">{e(secret)}</code></p></div>'
        )
    rows = []
    for c in credentials:
        action = ""
        if c["active"]:
            action = _form(
                view,
                "credentials/retire",
                f'<input type="hidden" name="api_key" value="{e(c["id"])}">',
                f"Retire {c['id']}",
                f"retire-{c['id']}",
            )
        state = "active" if c["active"] else f"retired at {c['not_after_ms']} ms"
        rows.append((f"<code>{e(c['id'])}</code>", e(state), action))
    body += _table(f"API credentials ({view.mode} mode)", ("API key", "State", ""), rows)
    body += _form(view, "credentials/add", "", "Add an API credential", "add-credential")
    return _partner_page(view, "API credentials", body)
