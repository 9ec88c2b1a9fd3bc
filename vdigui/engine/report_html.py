"""The report as one self-contained HTML page, drawn from the dict of :mod:`vdigui.engine.report`.

Why self-contained: the page is meant to be attached to a help request and opened anywhere,
offline, by people who should not have to trust it. So it has no script at all, no external
stylesheet, font or image (CSS inline, pictures as inline SVG), and a Content-Security-Policy
that forbids the browser to fetch anything even if a later change slipped a reference in.

Why everything is escaped: names in a ``.vbox`` and file names are chosen by whoever made the
VM, so they are hostile input; every value taken from the dict passes through
:func:`html.escape` (attribute values included) exactly once, here.

Machine-checkable figures: every byte figure is printed for people (``1.5 GiB``) and carries
its exact value in a ``data-bytes`` attribute, every table has an ``id``, and every row of the
space and cost tables names its file or snapshot in a ``data-`` attribute, so tests (and
scripts) compare the page with ``vdictl space --json`` and ``vdictl snapshot list --cost
--json`` without scraping prose.
"""

from __future__ import annotations

from html import escape
from typing import Any

from vdigui.engine.palette import CATEGORY_COLOURS
from vdigui.engine.report_svg import (
    block_map_legend,
    block_map_svg,
    frag_legend,
    frag_svg,
    space_bar_svg,
)
from vdigui.engine.space_account import CATEGORY_LABELS, CATEGORY_MEANINGS, Category
from vdigui.engine.units import human_size

#: Allows inline styles and nothing else: no script, no fetch of any kind.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1f2328; background: #f3f4f6; margin: 0; }
header { background: #1f2d3d; color: #fff; padding: 14px 28px; }
header h1 { font-size: 20px; margin: 0 0 2px 0; }
header .meta { color: #c7d0da; font-size: 12.5px; }
main { padding: 8px 28px 40px 28px; max-width: 1500px; }
section { background: #fff; border: 1px solid #d8dde3; border-radius: 6px;
          padding: 10px 16px 14px 16px; margin: 14px 0; }
h2 { font-size: 16px; margin: 2px 0 8px 0; }
h3 { font-size: 14px; margin: 12px 0 6px 0; }
.top { display: grid; grid-template-columns: minmax(320px, 1fr) 2fr; gap: 14px; }
.top section { margin: 14px 0 0 0; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { border-bottom: 1px solid #e5e8eb; padding: 3px 8px; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
code, .uuid { font: 11.5px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; }
.uuid { white-space: nowrap; }
.error { color: #b3261e; font-weight: 600; }
.warning { color: #8a5a00; font-weight: 600; }
.muted { color: #6e7781; }
.badge { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px;
         background: #e7eef8; color: #0b5cad; margin-left: 4px; }
.badge.now { background: #dcf3e5; color: #14652f; }
ul.tree, ul.tree ul { list-style: none; margin: 0; padding-left: 18px; }
ul.tree { padding-left: 0; }
ul.tree li { margin: 2px 0; }
ul.tree li::before { content: "\\25B8 "; color: #8c959f; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; margin: 4px 0; }
.swatch { display: inline-block; width: 11px; height: 11px; border: 1px solid #0003;
          vertical-align: -1px; margin-right: 4px; }
svg text { font: 11px system-ui, "DejaVu Sans", sans-serif; fill: #1f2328; }
.disks { font-size: 11.5px; margin-left: 14px; overflow-wrap: anywhere; }
ul.problems { margin: 0; padding-left: 18px; font-size: 12.5px; }
.figures { display: flex; flex-wrap: wrap; gap: 4px 26px; margin: 6px 0; }
.figures div b { display: block; font-size: 18px; }
.frags { display: flex; flex-wrap: wrap; gap: 8px 24px; }
.scroll { overflow-x: auto; }
"""


SIZE_FIELD = ' data-field="size"'
ALLOCATED_FIELD = ' data-field="allocated"'


def _e(value: Any) -> str:
    """Escaped text of any value (None as an empty string)."""
    return "" if value is None else escape(str(value), quote=True)


def _bytes_cell(value: Any, *, tag: str = "td", extra: str = "") -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return f'<{tag} class="num"{extra}>{_e(value)}</{tag}>'
    return (
        f'<{tag} class="num" data-bytes="{value}" title="{value:,} bytes"{extra}>'
        f"{_e(human_size(value))}</{tag}>"
    )


def _swatches(items: list[tuple[str, str]]) -> str:
    return (
        '<div class="legend">'
        + "".join(
            f'<span><span class="swatch" style="background:{_e(c)}"></span>{_e(t)}</span>'
            for c, t in items
        )
        + "</div>"
    )


def render_html(data: dict[str, Any]) -> str:
    """The whole page."""
    machine = data.get("machine") or {}
    name = machine.get("name") or (
        data["chain"][-1]["name"] if data.get("chain") else data.get("source")
    )
    title = f"vdigui report: {name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f'<header><h1>{_e(title)}</h1><div class="meta">'
        f"{_e(data.get('source'))} · made by {_e(data.get('generator'))} on "
        f"{_e(data.get('generated'))}"
        f"{' · paths redacted' if data.get('redacted') else ''}</div></header><main>",
        '<div class="top">',
        _snapshots(data),
        _summary(data),
        "</div>",
        _space(data),
        _costs(data),
        _chain(data),
        _problems(data),
        _disks(data),
        _history(data),
        _notes(data),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)


# -- sections ----------------------------------------------------------------------------------
#: Problems listed in the summary (all of them are in the Problems section).
_SUMMARY_PROBLEMS = 5


def _summary(data: dict[str, Any]) -> str:
    machine = data.get("machine") or {}
    space = data.get("space") or {}
    problems = data.get("problems") or []
    errors = sum(1 for p in problems if p.get("severity") == "error")
    figures = []
    if machine:
        figures.append(("Snapshots", f"{machine.get('snapshot_count', 0)}"))
    figures.append(("Images", f"{sum(1 for r in data.get('chain') or [] if 'uuid_create' in r)}"))
    figures.append(("Problems", f"{len(problems)} ({errors} error{'s' if errors != 1 else ''})"))
    if space:
        figures.append(("Size of the files", human_size(int(space.get("size", 0)))))
        figures.append(("On the host", human_size(int(space.get("allocated", 0)))))
    body = ['<section id="summary"><h2>Summary</h2>']
    if machine:
        body.append(
            f"<div>VM <b>{_e(machine.get('name'))}</b> "
            f'<span class="uuid muted">{{{_e(machine.get("uuid"))}}}</span>, '
            f"{_e(machine.get('os_type'))}, settings version "
            f"{_e(machine.get('settings_version'))}</div>"
        )
        body.append(f'<div class="muted">{_e(machine.get("settings_path"))}</div>')
    body.append(
        '<div class="figures">'
        + "".join(f"<div><b>{_e(v)}</b>{_e(k)}</div>" for k, v in figures)
        + "</div>"
    )
    if space:
        total = space.get("total") or {}
        body.append(space_bar_svg(total))
        body.append(
            _swatches(
                [
                    (CATEGORY_COLOURS.get(c, "#8C8C8C"), f"{_label(c)}: {human_size(v)}")
                    for c, v in total.items()
                    if v
                ]
            )
        )
    if problems:
        shown = problems[:_SUMMARY_PROBLEMS]
        more = len(problems) - len(shown)
        body.append(
            '<h3>Problems found</h3><ul class="problems">'
            + "".join(
                f'<li><span class="{_e(p.get("severity"))}">{_e(p.get("severity"))}</span> '
                f"{_e(p.get('message'))}</li>"
                for p in shown
            )
            + (f'<li class="muted">and {more} more (listed below)</li>' if more > 0 else "")
            + "</ul>"
        )
    else:
        body.append("<h3>Problems found</h3><p>None.</p>")
    body.append("</section>")
    return "".join(body)


def _snapshots(data: dict[str, Any]) -> str:
    tree = data.get("snapshots") or []
    if data.get("kind") != "vm":
        return (
            '<section id="snapshots"><h2>Snapshot tree</h2><p class="muted">A single '
            "image: no snapshot tree (the chain below shows its parents).</p></section>"
        )

    def node(n: dict[str, Any]) -> str:
        badges = []
        if n.get("current_state"):
            badges.append('<span class="badge now">you are here</span>')
            if n.get("modified"):
                badges.append('<span class="badge">changed since the snapshot</span>')
        elif n.get("current"):
            badges.append('<span class="badge">current snapshot</span>')
        if n.get("state_file"):
            badges.append('<span class="badge">saved state</span>')
        when = f' <span class="muted">{_e(n["timestamp"])}</span>' if n.get("timestamp") else ""
        disks = ", ".join(str(d).rsplit("/", 1)[-1] for d in n.get("disks") or [])
        disk_text = f'<div class="disks muted">{_e(disks)}</div>' if disks else ""
        label = f"<i>{_e(n['name'])}</i>" if n.get("current_state") else f"<b>{_e(n['name'])}</b>"
        kids = "".join(node(c) for c in n.get("children") or [])
        return (
            f"<li>{label}{''.join(badges)}{when}{disk_text}"
            f"{'<ul>' + kids + '</ul>' if kids else ''}</li>"
        )

    return (
        '<section id="snapshots"><h2>Snapshot tree</h2><ul class="tree">'
        + "".join(node(n) for n in tree)
        + "</ul></section>"
    )


def _label(category: str) -> str:
    """The category's short name as the app's Space tab shows it (the JSON key otherwise)."""
    try:
        return CATEGORY_LABELS[Category(category)]
    except ValueError:
        return category


def _meaning(category: str) -> str:
    try:
        return CATEGORY_MEANINGS[Category(category)]
    except ValueError:
        return ""


def _space(data: dict[str, Any]) -> str:
    space = data.get("space")
    if not space:
        return ""
    total = space.get("total") or {}
    actions = space.get("actions") or {}
    rows = []
    for cat, value in total.items():
        rows.append(
            f'<tr data-category="{_e(cat)}"><td><span class="swatch" style="background:'
            f'{_e(CATEGORY_COLOURS.get(cat, "#8C8C8C"))}"></span>'
            f'<span title="{_e(_meaning(cat))}">{_e(_label(cat))}</span></td>'
            f"{_bytes_cell(value)}<td>{_e(actions.get(cat, ''))}</td></tr>"
        )
    cats = list(total)
    root = str(space.get("root") or "").rstrip("/")
    head = "".join(f'<th class="num" title="{_e(_meaning(c))}">{_e(_label(c))}</th>' for c in cats)
    file_rows = []
    for f in space.get("files") or []:
        cells = "".join(
            _bytes_cell((f.get("categories") or {}).get(c, 0), extra=f' data-category="{_e(c)}"')
            for c in cats
        )
        notes = "".join(f'<div class="muted">{_e(n)}</div>' for n in f.get("notes") or [])
        path = str(f.get("path"))
        shown = path[len(root) + 1 :] if root and path.startswith(root + "/") else path
        file_rows.append(
            f'<tr data-path="{_e(path)}"><td><code title="{_e(path)}">{_e(shown)}</code>{notes}'
            f"</td>{_bytes_cell(f.get('size'), extra=SIZE_FIELD)}"
            f"{_bytes_cell(f.get('allocated'), extra=ALLOCATED_FIELD)}"
            f"<td>{space_bar_svg(f.get('categories') or {}, width=160, height=12)}</td>"
            f"{cells}</tr>"
        )
    notes = "".join(f"<li>{_e(n)}</li>" for n in space.get("notes") or [])
    notes_list = f'<ul class="muted">{notes}</ul>' if notes else ""
    return (
        '<section id="space"><h2>Where the space goes</h2>'
        f"<p>{len(space.get('files') or [])} file(s), "
        f'<b data-bytes="{int(space.get("size", 0))}">{_e(human_size(int(space.get("size", 0))))}'
        f'</b> in all, <span data-bytes="{int(space.get("allocated", 0))}">'
        f"{_e(human_size(int(space.get('allocated', 0))))}</span> on the host. Every byte of "
        "every file is in exactly one category.</p>"
        '<table id="space-total"><thead><tr><th>Category</th><th class="num">Bytes</th>'
        f"<th>What frees it</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<h3>Per file</h3><div class="scroll"><table id="space-files"><thead><tr><th>File</th>'
        '<th class="num">Size</th><th class="num">On the host</th><th></th>'
        f"{head}</tr></thead><tbody>{''.join(file_rows)}</tbody></table></div>"
        f"{notes_list}</section>"
    )


#: Columns of the cost map: key of ``SnapshotCost.to_dict()``, heading.
_COST_COLUMNS = (
    ("only_here", "Only here"),
    ("frees", "Frees"),
    ("frees_without_undo", "Frees without undo"),
    ("copies", "Copies"),
    ("needs", "Needs while running"),
    ("seconds_estimate", "Time (estimate)"),
)


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return ""
    if value < 1:
        return "< 1 s"
    return f"~{value:.0f} s" if value < 120 else f"~{value / 60:.0f} min"


def _costs(data: dict[str, Any]) -> str:
    costs = data.get("snapshot_costs")
    if data.get("kind") != "vm":
        return ""
    head = '<section id="costs"><h2>What deleting each snapshot would free</h2>'
    if costs is None:
        return head + '<p class="muted">Not available (see the notes).</p></section>'
    if not costs:
        return head + "<p>The VM has no snapshot.</p></section>"
    columns = "".join(f'<th class="num">{_e(h)}</th>' for _, h in _COST_COLUMNS)
    rows = []
    for c in costs:
        indent = f'style="padding-left:{8 + 16 * int(c.get("depth") or 0)}px"'
        badge = '<span class="badge">current</span>' if c.get("current") else ""
        cells = []
        for key, _ in _COST_COLUMNS:
            value = c.get(key)
            if key == "seconds_estimate":
                cells.append(
                    f'<td class="num" data-field="{key}" data-value="{_e(value)}">'
                    f"{_e(_seconds(value))}</td>"
                )
            elif value is None:
                cells.append(f'<td class="num" data-field="{key}">—</td>')
            else:
                cells.append(_bytes_cell(value, extra=f' data-field="{key}"'))
        refused = c.get("refused_reason")
        refused_text = f'<div class="warning">refused: {_e(refused)}</div>' if refused else ""
        rows.append(
            f'<tr data-name="{_e(c.get("name"))}" data-uuid="{_e(c.get("uuid"))}">'
            f"<td {indent}><b>{_e(c.get('name'))}</b>{badge}{refused_text}</td>"
            f"{''.join(cells)}</tr>"
        )
    first = costs[0]
    undo = (
        "keeping undo data (negative: the folder grows until the undo data is discarded)"
        if first.get("keep_undo")
        else "without undo data"
    )
    rate = first.get("rate")
    rate_text = (
        f" Times are estimates at {human_size(rate)}/s ({first.get('rate_source')})."
        if isinstance(rate, (int, float))
        else ""
    )
    return (
        head + '<div class="scroll"><table id="snapshot-costs"><thead><tr><th>Snapshot'
        f"</th>{columns}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        f'<p class="muted">Frees: what the VM folder shrinks by, {_e(undo)}. Frees '
        "without undo: what the disk files shrink by when no undo data is kept. Only "
        "here: data no other state reads. Copies: data the merge copies. Needs: free "
        f"host space needed while it runs.{_e(rate_text)} The figures come from the "
        "same plan the deletion then carries out.</p></section>"
    )


def _uuid(value: Any) -> str:
    return f'<span class="uuid">{_e(value)}</span>' if value else '<span class="muted">—</span>'


def _chain(data: dict[str, Any]) -> str:
    rows = []
    for r in data.get("chain") or []:
        indent = f'style="padding-left:{8 + 16 * int(r.get("depth", 0))}px"'
        if "unreadable" in r:
            rows.append(
                f'<tr data-path="{_e(r["path"])}"><td {indent}><code>{_e(r["name"])}'
                f'</code></td><td colspan="9" class="error">cannot be read: '
                f"{_e(r['unreadable'])}</td></tr>"
            )
            continue
        used = ", ".join(r.get("used_by") or [])
        flags = []
        if r.get("registered") is False:
            flags.append("not registered")
        flags.extend(r.get("problems") or [])
        flag_text = f'<div class="warning">{_e(", ".join(flags))}</div>' if flags else ""
        rows.append(
            f'<tr data-path="{_e(r["path"])}"><td {indent}><code title="{_e(r["path"])}">'
            f"{_e(r['name'])}</code>"
            f"{flag_text}"
            f"</td><td>{_e(r.get('type'))}</td>"
            f"<td>{_uuid(r.get('uuid_create'))}</td><td>{_uuid(r.get('uuid_modify'))}</td>"
            f"<td>{_uuid(r.get('uuid_linkage'))}</td>"
            f"<td>{_uuid(r.get('uuid_parent_modify'))}</td>"
            f"{_bytes_cell(r.get('disk_size'))}{_bytes_cell(r.get('file_size'))}"
            f'<td class="num">{_e(r.get("blocks_allocated"))}</td><td>{_e(used)}</td></tr>'
        )
    return (
        '<section id="chain"><h2>Images and their chain</h2><div class="scroll">'
        '<table id="chain-table"><thead><tr><th>Image</th><th>Type</th><th>uuidCreate</th>'
        "<th>uuidModify</th><th>uuidLinkage (parent)</th><th>uuidParentModify</th>"
        '<th class="num">Disk size</th><th class="num">File size</th>'
        '<th class="num">Blocks stored</th><th>Used by</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></div></section>"
    )


def _problems(data: dict[str, Any]) -> str:
    problems = data.get("problems") or []
    if not problems:
        return (
            '<section id="problems"><h2>Problems</h2><p>vdigui found no problem.</p>'
            '<table id="problems-table"></table></section>'
        )
    rows = "".join(
        f'<tr data-kind="{_e(p.get("kind"))}"><td class="{_e(p.get("severity"))}">'
        f"{_e(p.get('severity'))}</td><td><code>{_e(p.get('kind'))}</code></td>"
        f"<td>{_e(p.get('message'))}</td></tr>"
        for p in problems
    )
    return (
        '<section id="problems"><h2>Problems</h2><table id="problems-table"><thead><tr>'
        "<th>Severity</th><th>Kind</th><th>What vdigui found</th></tr></thead><tbody>"
        + rows
        + "</tbody></table></section>"
    )


def _disks(data: dict[str, Any]) -> str:
    disks = data.get("disks") or []
    if not disks:
        return ""
    out = ['<section id="disks"><h2>Block maps and fragmentation</h2>']
    for d in disks:
        cf = d.get("chain_fragmentation") or {}
        out.append(
            f"<h3>{_e(d['label'])}</h3>"
            f'<div class="muted">{_e(human_size(int(d["disk_size"])))} disk, '
            f"{int(d['blocks']):,} blocks of {_e(human_size(int(d['block_size'])))}; "
            f"a sequential read of the guest disk seeks "
            f"{int(cf.get('discontinuities', 0)):,} time(s) over "
            f"{int(cf.get('allocated', 0)):,} stored block(s).</div>"
        )
        out.append(f'<div class="scroll">{block_map_svg(d)}</div>')
        out.append(_swatches(block_map_legend(d)))
        out.append('<div class="frags">')
        for layer in d.get("fragmentation") or []:
            if not layer.get("allocated"):
                continue
            out.append(
                f"<div><div><b>{_e(layer['label'])}</b>: "
                f"{int(layer['allocated']):,} block(s), "
                f"{int(layer['discontinuities']):,} seek(s), "
                f"{100 * float(layer['in_order_share']):.1f} % in order</div>"
                f"{frag_svg(layer)}</div>"
            )
        out.append("</div>")
        out.append(_swatches(frag_legend()))
    out.append("</section>")
    return "".join(out)


def _history(data: dict[str, Any]) -> str:
    history = data.get("history") or []
    if not history:
        return (
            '<section id="history"><h2>What vdigui did to this folder</h2><p>No record '
            "of any vdigui operation.</p></section>"
        )
    rows = "".join(
        f"<tr><td>{_e(h.get('started'))}</td><td>{_e(h.get('finished'))}</td>"
        f"<td><code>{_e(h.get('kind'))}</code></td><td>{_e(h.get('summary'))}</td>"
        f"<td>{_e(h.get('status'))}</td>{_bytes_cell(h.get('undo_data'))}</tr>"
        for h in history
    )
    return (
        '<section id="history"><h2>What vdigui did to this folder</h2>'
        '<table id="history-table"><thead><tr><th>Started</th><th>Finished</th><th>Kind'
        '</th><th>Summary</th><th>State</th><th class="num">Undo data kept</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></section>"
    )


def _notes(data: dict[str, Any]) -> str:
    notes = data.get("notes") or []
    if not notes:
        return ""
    return (
        '<section id="notes"><h2>Notes</h2><ul>'
        + "".join(f"<li>{_e(n)}</li>" for n in notes)
        + "</ul></section>"
    )


__all__ = ["CSP", "render_html"]
