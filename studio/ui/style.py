"""The page's look: a Gradio theme and a little CSS (pixel-art upscaling, tables, cards, empty states)."""

from __future__ import annotations

from studio.ui.scatter import SCATTER_CSS

CSS = """
.gradio-container { max-width: 1280px !important; margin: auto; }
#ls-header { align-items: end; gap: 12px; }
#ls-header h1 { margin: 0; font-size: 1.6rem; }
#ls-header .ls-sub { color: var(--body-text-color-subdued); margin: 2px 0 0; }
.ls-pixel img, .ls-pixel canvas, .ls-gallery img { image-rendering: pixelated; }
.ls-gallery .thumbnail-item img, .ls-gallery img { background: #111; }
.ls-gallery .caption-label { font-size: 11px; padding: 0 5px; opacity: .85; }
/* a caption is shown whole (a 10-digit seed was cut to "seed 15894…"): it wraps instead of ending in an ellipsis */
.ls-gallery .thumbnail-item .caption-label { white-space: normal; overflow: visible; text-overflow: clip;
  overflow-wrap: anywhere; max-width: calc(100% - 8px); line-height: 1.25; }
#compress-panels .caption-label { white-space: normal; max-width: 92%; text-align: left; line-height: 1.3;
  padding: 2px 6px; }
.ls-big .image-container, .ls-big .image-frame { width: 100%; height: 100%; }
.ls-big .image-frame img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.ls-job-status { min-height: 4.5em; }  /* room for the progress of the job it reports, over nothing else */
.ls-status p { margin: 0; font-size: 0.92rem; color: var(--body-text-color-subdued); }
.ls-chip { display: inline-block; padding: 1px 8px; margin: 2px 4px 2px 0; border-radius: 999px; font-size: 12px;
  background: var(--color-accent-soft); color: var(--body-text-color); border: 1px solid var(--border-color-accent); }
.ls-jobs { width: 100%; border-collapse: collapse; font-size: 14px; border: none !important; }
.ls-jobs th, .ls-jobs td { border-left: none !important; border-right: none !important; }
.ls-jobs th, .ls-jobs td { padding: 6px 8px; border-bottom: 1px solid var(--border-color-primary); text-align: left;
  vertical-align: middle; }
.ls-jobs th { font-weight: 600; color: var(--body-text-color-subdued); }
.ls-jobs td.ls-note { max-width: 360px; overflow-wrap: anywhere; }
.ls-progress { white-space: nowrap; min-width: 150px; }
.ls-bar { display: inline-block; width: 110px; height: 8px; border-radius: 4px; background: var(--border-color-primary);
  overflow: hidden; vertical-align: middle; margin-right: 6px; }
.ls-bar span { display: block; height: 100%; background: #3b82f6; transition: width .4s; }
.ls-bar.ls-ok span { background: #22c55e; }
.ls-bar.ls-failed span { background: #ef4444; }
.ls-bar.ls-cancelled span { background: #9ca3af; }
.ls-state { display: inline-block; padding: 0 8px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.ls-state.ls-queued { background: #e5e7eb; color: #374151; }
.ls-state.ls-running { background: #dbeafe; color: #1d4ed8; }
.ls-state.ls-ok { background: #dcfce7; color: #15803d; }
.ls-state.ls-failed { background: #fee2e2; color: #b91c1c; }
.ls-state.ls-cancelled { background: #f3f4f6; color: #6b7280; }
.ls-cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 12px; }
.ls-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px 16px;
  background: var(--block-background-fill); }
.ls-card h3 { margin: 0 0 6px; } .ls-card h4 { margin: 10px 0 4px; font-size: 14px; }
.ls-card ul { margin: 0; padding-left: 18px; } .ls-card p { margin: 4px 0; }
.ls-card-error { border-color: #fca5a5; }
.ls-error { color: #b91c1c; overflow-wrap: anywhere; }
.ls-muted { color: var(--body-text-color-subdued); font-size: 13px; }
.ls-warn { padding: 10px 14px; border-radius: 8px; background: #fef3c7; color: #92400e; border: 1px solid #fcd34d; }
.ls-workers { margin: 0; padding-left: 18px; }
.ls-empty-note { color: var(--body-text-color-subdued); font-style: italic; }
""" + SCATTER_CSS


def theme() -> object:
    import gradio as gr

    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate")
