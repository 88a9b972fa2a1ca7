"""HTML views the tabs render: the job table with progress bars, plugin cards, workers, metric tables."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence

STATE_CLASS = {"QUEUED": "queued", "RUNNING": "running", "SUCCEEDED": "ok", "FAILED": "failed",
               "CANCELLED": "cancelled"}


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`count` and the noun, singular for exactly one: "1 image", "16 images"."""
    return f"{count} {noun if count == 1 else (plural_form or noun + 's')}"


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return ""
    seconds = max(0.0, (now or time.time()) - float(ts))
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(ts)))


def took(job: dict) -> str:
    start, end = job.get("started"), job.get("finished")
    if start and end:
        return f"{float(end) - float(start):.2f} s"
    if start and job.get("state") == "RUNNING":
        return f"{time.time() - float(start):.0f} s…"
    return ""


def progress_bar(fraction: float | None, state: str) -> str:
    value = 1.0 if state == "SUCCEEDED" else max(0.0, min(1.0, float(fraction or 0.0)))
    label = "" if state in ("FAILED", "CANCELLED") else f"<small>{value:.0%}</small>"
    return (f'<div class="ls-bar ls-{STATE_CLASS.get(state, "queued")}" title="{value:.0%}">'
            f'<span style="width:{value * 100:.1f}%"></span></div>{label}')


def job_table(jobs: Sequence[dict], now: float | None = None) -> str:
    """The Queue tab's table: id, what, state, progress bar, message or error, when, duration."""
    if not jobs:
        return ('<div class="ls-empty">No jobs yet. Generate something on the <b>Generate</b> tab, and every job '
                'you start appears here with its progress.</div>')
    rows = []
    for job in jobs:
        state = job.get("state", "?")
        what = f"{job.get('op', '?')} · {job.get('backend', '?')}"
        if job.get("model"):
            what += f"/{job['model']}"
        note = job.get("error") if state == "FAILED" else job.get("message")
        attempts = job.get("attempts") or 0
        if attempts > 1:
            note = f"{note or ''} (attempt {attempts})".strip()
        rows.append(
            f'<tr data-job="{esc(job.get("id"))}"><td><code>{esc(job.get("id"))}</code></td><td>{esc(what)}</td>'
            f'<td><span class="ls-state ls-{STATE_CLASS.get(state, "queued")}">{esc(state.lower())}</span></td>'
            f'<td class="ls-progress">{progress_bar(job.get("progress"), state)}</td>'
            f'<td class="ls-note">{esc(note)}</td><td>{esc(ago(job.get("created"), now))}</td>'
            f'<td>{esc(took(job))}</td></tr>')
    return ('<table class="ls-jobs"><thead><tr><th>Job</th><th>What</th><th>State</th><th>Progress</th>'
            '<th>Message</th><th>Created</th><th>Took</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


def chips(items: Sequence[str], cls: str = "ls-chip") -> str:
    return "".join(f'<span class="{cls}">{esc(i)}</span>' for i in items)


def plugin_cards(info: dict) -> str:
    """One card per installed backend (version, capabilities, models, load errors), plus plugins that failed."""
    parts = []
    for err in info.get("errors", []):
        parts.append(f'<div class="ls-card ls-card-error"><h3>{esc(err.get("plugin"))} '
                     f'<span class="ls-state ls-failed">failed to load</span></h3>'
                     f'<p class="ls-error">{esc(err.get("error"))}</p></div>')
    for b in info.get("backends", []):
        models = b.get("models") or []
        model_rows = "".join(
            f'<li><b>{esc(m.get("name"))}</b> <code>{esc((m.get("sha256") or "")[:12])}</code> '
            f'<small>{esc(m.get("description"))}</small></li>' for m in models)
        models_html = f"<ul>{model_rows}</ul>" if models else '<p class="ls-muted">No models installed.</p>'
        error = f'<p class="ls-error">Load error: {esc(b["error"])}</p>' if b.get("error") else ""
        status = ('<span class="ls-state ls-failed">error</span>' if b.get("error") else
                  '<span class="ls-state ls-ok">ready</span>' if models else
                  '<span class="ls-state ls-queued">no models</span>')
        parts.append(
            f'<div class="ls-card"><h3>{esc(b.get("name"))} <small>v{esc(b.get("version"))}</small> {status}</h3>'
            f'<p>{esc(b.get("description"))}</p><div>{chips(b.get("capabilities") or [])}</div>'
            f'<h4>Models</h4>{models_html}{error}'
            f'<p class="ls-muted">entry point: <code>{esc(b.get("entry_point"))}</code></p></div>')
    if not parts:
        return ('<div class="ls-empty">No backends are installed. Install a plugin package that declares the '
                '<code>latent_studio.backends</code> entry point.</div>')
    return '<div class="ls-cards">' + "".join(parts) + "</div>"


def workers_view(workers: Sequence[dict]) -> str:
    if not workers:
        return ('<div class="ls-warn">No worker is running: jobs wait in the queue until one starts. '
                'Start one with <code>studio worker</code> (or <code>studio up</code>).</div>')
    items = []
    for w in workers:
        busy = (f' · running <code>{esc(w.get("job_id"))}</code>' if w.get("job_id") else
                " · running another user's job" if w.get("busy") else " · idle")
        items.append(f'<li><b>{esc(w.get("hostname") or w.get("id"))}</b> ({esc(w.get("device") or "?")}) '
                     f'serves {chips(w.get("backends") or [])}{busy}</li>')
    return f'<ul class="ls-workers">{"".join(items)}</ul>'


def without_paths(value: object) -> object:
    """JSON for API clients with every "path" key renamed "location" (gradio_client would fetch those as files)."""
    if isinstance(value, dict):
        return {("location" if k == "path" else k): without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    return value


def _fmt(value: object, unit: str = "", digits: int = 2) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}{unit}" if isinstance(value, float) else f"{value}{unit}"
    return "—"


def compression_rows(metrics: dict) -> list[list[str]]:
    """Rows [method, PSNR, SSIM, bytes] for the Compress tab's table."""
    rows = [["latent codec", _fmt(metrics.get("psnr"), " dB"), _fmt(metrics.get("ssim"), "", 3),
             _fmt(metrics.get("bytes_per_image"), " B", 0)]]
    for fmt in ("jpeg", "webp"):
        name = fmt.upper() if fmt == "jpeg" else "WebP"
        if metrics.get(f"{fmt}_bytes") is not None:
            rows.append([f"{name} (same bytes)", _fmt(metrics.get(f"{fmt}_psnr"), " dB"),
                         _fmt(metrics.get(f"{fmt}_ssim"), "", 3), _fmt(metrics.get(f"{fmt}_bytes"), " B", 0)])
        elif metrics.get(f"{fmt}_min_bytes") is not None:
            rows.append([f"{name} (smallest file it can make)", _fmt(metrics.get(f"{fmt}_psnr_at_min_bytes"), " dB"),
                         _fmt(metrics.get(f"{fmt}_ssim_at_min_bytes"), "", 3),
                         _fmt(metrics.get(f"{fmt}_min_bytes"), " B", 0)])
    return rows


def panel_label(name: str, psnr: object = None, ssim: object = None, n_bytes: object = None) -> str:
    parts = [name]
    if isinstance(psnr, (int, float)):
        parts.append(f"{psnr:.1f} dB")
    if isinstance(ssim, (int, float)):
        parts.append(f"SSIM {ssim:.3f}")
    if isinstance(n_bytes, (int, float)):
        parts.append(f"{n_bytes:.0f} B")
    return " · ".join(parts)
