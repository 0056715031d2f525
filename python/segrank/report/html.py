"""report.html: one self-contained page (figures embedded) explaining a ranking."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from ..io.files import atomic_write
from .tables import notes


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
        "Each setting is ranked on its own. CTE: higher score = prediction more consistent under the "
        "perturbation. Consensus: higher score = more agreement with the other models of the bank on the "
        "same images. Intervals are 95% bootstrap intervals over images (or volume blocks); p_best is the "
        "bootstrap probability of being the best.</p>",
    ]
    parts += _warnings(document) + _truth(document)
    for pert in dict.fromkeys(r["perturbation"] for r in rows):
        block = [r for r in rows if r["perturbation"] == pert]
        columns = head + (CONSENSUS_COLUMNS if pert == "consensus" else ())
        title = {"consensus": "Consensus (agreement with the bank)",
                 "labels": "Few labels (mean true score on the labelled images)"}.get(pert, f"CTE, perturbation {pert}")
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>")
        parts.append("".join(f"<th>{h}</th>" for h in columns) + "</tr>")
        for r in block:
            cells = []
            for h in columns:
                v = r.get(h)
                cells.append(f"<td>{'' if v is None else (f'{v:.4f}' if isinstance(v, float) else html.escape(str(v)))}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        parts += [f"<p class='note'>{html.escape(n[0].upper() + n[1:])}.</p>" for n in notes(block)]
    if document.get("failures"):
        parts.append("<h2>Failures</h2><ul>")
        parts += [f"<li>{html.escape(f['model'])} ({html.escape(f['stage'])}): {html.escape(f['error'])}</li>"
                  for f in document["failures"]]
        parts.append("</ul>")
    for fig in figures:
        parts.append(f"<h2>{html.escape(fig.stem.replace('_', ' '))}</h2>{_img(fig)}")
    parts.append("<h2>Settings</h2><pre>" + html.escape(_settings_text(document["settings"])) + "</pre></body></html>")
    path = out / "report.html"
    atomic_write(path, "\n".join(parts))
    return path


CONSENSUS_COLUMNS = ("relative_mask_size", "group", "weight")


def _warnings(document: dict) -> list[str]:
    consensus = document.get("consensus") or {}
    notes = list(consensus.get("warnings", []))
    if not notes:
        return []
    return ["<ul>"] + [f"<li class='note'>{html.escape(n)}</li>" for n in notes] + ["</ul>"]


def _truth(document: dict) -> list[str]:
    """How far each ranking agrees with a known truth (labels of the target), when given."""
    truth = document.get("truth")
    if not truth:
        return []
    parts = ["<h2>Against the true ranking (labels)</h2><table><tr><th>setting</th><th>Spearman</th>"
             "<th>Kendall</th><th>first pick</th><th>true best</th><th>regret</th></tr>"]
    for setting, t in truth.items():
        parts.append(f"<tr><td>{html.escape(setting)}</td><td>{t['spearman']:+.2f}</td><td>{t['kendall']:+.2f}</td>"
                     f"<td>{html.escape(t['first_pick'])}</td><td>{html.escape(t['true_best'])}</td>"
                     f"<td>{t['regret']:.3f}</td></tr>")
    parts.append("</table><p>Regret: the true score of the best model minus that of the first pick. "
                 "A label-free ranking shortlists; it rarely picks the best model for sure.</p>")
    return parts


def _settings_text(settings: dict) -> str:
    import json

    short = {k: v for k, v in settings.items() if k != "units"}
    short["n_units"] = len(settings.get("units", []))
    return json.dumps(short, indent=2)
