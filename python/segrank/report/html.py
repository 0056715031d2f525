"""report.html: one self-contained page (figures embedded) explaining a ranking."""
from __future__ import annotations

import base64
import html
from pathlib import Path


def _img(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def write_html(document: dict, out: Path, figures: list[Path]) -> Path:
    rows = document["models"]
    head = ("rank", "name", "score", "ci_low", "ci_high", "p_best", "n_scored", "n_images", "metric", "provider", "status")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>segrank ranking</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:nth-child(2){text-align:left}"
        "img{max-width:100%}.note{color:#a33}</style></head><body>",
        "<h1>segrank: model ranking</h1>",
        f"<p>Target <code>{html.escape(str(document['settings'].get('target')))}</code>, bank "
        f"<code>{html.escape(str(document['settings'].get('bank')))}</code>, segrank {html.escape(document['segrank_version'])}. "
        "Higher score = prediction more consistent under perturbation = expected to transfer better. "
        "Intervals are 95% bootstrap intervals over images; p_best is the bootstrap probability of being the best.</p>",
    ]
    for pert in dict.fromkeys(r["perturbation"] for r in rows):
        block = [r for r in rows if r["perturbation"] == pert]
        parts.append(f"<h2>Perturbation {html.escape(pert)}</h2><table><tr>")
        parts.append("".join(f"<th>{h}</th>" for h in head) + "</tr>")
        for r in block:
            cells = []
            for h in head:
                v = r.get(h)
                cells.append(f"<td>{'' if v is None else (f'{v:.4f}' if isinstance(v, float) else html.escape(str(v)))}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        if block[0].get("top_two_separated") is False and len(block) > 1:
            parts.append("<p class='note'>The top two models cannot be told apart on this target "
                         "(bootstrap probability that #1 beats #2 is below 0.95).</p>")
    if document.get("failures"):
        parts.append("<h2>Failures</h2><ul>")
        parts += [f"<li>{html.escape(f['model'])} ({html.escape(f['stage'])}): {html.escape(f['error'])}</li>"
                  for f in document["failures"]]
        parts.append("</ul>")
    for fig in figures:
        parts.append(f"<h2>{html.escape(fig.stem.replace('_', ' '))}</h2>{_img(fig)}")
    parts.append("<h2>Settings</h2><pre>" + html.escape(_settings_text(document["settings"])) + "</pre></body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


def _settings_text(settings: dict) -> str:
    import json

    short = {k: v for k, v in settings.items() if k != "units"}
    short["n_units"] = len(settings.get("units", []))
    return json.dumps(short, indent=2)
