"""Command-line interface: a thin click layer over segrank's Python API."""
from __future__ import annotations

import json
import sys

import click

from . import __version__, cmake_dir
from .errors import SegrankError


class _Group(click.Group):
    """Reports segrank's own errors (and a full disk) as one line on stderr (exit 2), without a
    traceback; ``segrank --debug ...`` shows the traceback instead."""

    def invoke(self, ctx):
        from .io.files import DISK_FULL, disk_full_message

        try:
            return super().invoke(ctx)
        except SegrankError as err:
            if ctx.params.get("debug"):
                raise
            click.echo(f"segrank: error: {err}", err=True)
            sys.exit(2)
        except OSError as err:
            if err.errno not in DISK_FULL or ctx.params.get("debug"):
                raise
            click.echo(f"segrank: error: {disk_full_message(err, err.filename or '.')}", err=True)
            sys.exit(2)


EXAMPLES = """\b
Examples:
  segrank rank --example --out example-ranking      the bundled example, with its true ranking
  segrank rank BANK/ IMAGES/ --out run/               rank a bank on a folder of images
  segrank rank BANK/ VOLUME.zarr --out run/ --workers 4 --cache cache/
  segrank rank BANK/ IMAGES/ --out run/ --labels FEW_LABELS/
  segrank evaluate BANK/ IMAGES/ --labels LABELS/ --out perf/
  segrank validate run/ranking.json perf/performance.json
"""


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
             epilog=EXAMPLES)
@click.version_option(__version__, prog_name="segrank")
@click.option("--debug", is_flag=True, help="Show the traceback behind a one-line error.")
def main(debug):
    """Rank pre-trained segmentation models on unlabelled microscopy data: by their agreement with
    the other models of the bank (consensus) or by their consistency under perturbation (CTE)."""


@main.command("compare", short_help="Consistency scores between two predictions or segmentations.")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--metric", type=click.Choice(["nhd", "ei", "rand", "vi", "all"]), default="all", show_default=True)
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Foreground is p > threshold (float inputs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object keyed by metric name.")
def compare_cmd(a, b, metric, threshold, as_json):
    """Consistency scores between two segmentations or probability maps A and B (tif, png, npy, zarr).

    Float arrays are probabilities; bool and integer arrays are masks or label images (nonzero =
    foreground). rand and vi need label images. Undefined scores print as n/a (null in JSON).
    nhd_distance is a distance (0 = the same); rank's "nhd" score is 1 - nhd_distance.
    """
    from .metrics.compare import compare_files

    scores = compare_files(a, b, metric=metric, threshold=threshold)
    if as_json:
        click.echo(json.dumps(scores))
    else:
        for key, value in scores.items():
            click.echo(f"{key:<15} {'n/a' if value is None else f'{value:.6f}'}")


@main.command("cmake-dir", short_help="The folder for find_package(segrank) from CMake.")
def cmake_dir_cmd():
    """Print the folder to pass to CMake as segrank_DIR for find_package(segrank)."""
    click.echo(cmake_dir())


@main.command("rank", short_help="Rank the models of a bank on unlabelled images or volumes.", epilog=EXAMPLES)
@click.argument("bank", required=False, type=click.Path(exists=True))
@click.argument("target", required=False, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(), help="Run directory (results are written as they come; a rerun resumes).")
@click.option("--example", is_flag=True, help="Rank the bundled example bank on the bundled DSB2018 nuclei images.")
@click.option("--perturbation", "perturbations", multiple=True,
              help="dropout:P, noise:LO-HI, gamma:LO-HI, brightness:LO-HI or contrast:LO-HI (repeatable). "
                   "Default: dropout:0.2 at the bottleneck when every model allows it, else noise:0.1-0.2. "
                   "Each is ranked on its own; they share the unperturbed run of each model and image "
                   "(dropout: that of the grey-box graph).")
@click.option("--metric", type=click.Choice(["auto", "nhd", "ei", "rand"]), default="auto", show_default=True,
              help="auto: rand for instance models, nhd for semantic ones.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Perturbed runs per image; a rerun into the same --out with more repeats computes only the new ones.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Score a seeded random subset of N images.")
@click.option("--axes", default=None, help="Axes of the target when its metadata does not say (e.g. yx, zyx, cyx).")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Foreground threshold on probabilities.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Run on a dask.distributed LocalCluster of N worker processes.")
@click.option("--scheduler", default=None, help="Run on an existing dask.distributed scheduler (address).")
@click.option("--block", default=None,
              help="Scoring blocks of a volume, Z,Y,X: each is one unit, scored in bounded memory "
                   "(default 64,256,256; smaller when a target would have fewer than 8 units).")
@click.option("--in-memory", is_flag=True, help="Predict each volume whole in memory (reference for small volumes).")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Keep every prediction (unperturbed and perturbed) in this Zarr v3 folder, keyed by its content: "
                   "later runs with the same cache, into any --out, reuse them and compute only what changed. "
                   "Default: no cache.")
@click.option("--score", "scores", multiple=True, type=click.Choice(["cte", "consensus"]),
              help="What to rank by (repeatable; each ranked on its own): consensus, agreement with the other "
                   "models of the bank (unperturbed runs only); cte, consistency under perturbation. "
                   "Default: consensus, or cte when --perturbation is given.")
@click.option("--similarity", type=click.Choice(["auto", "dice", "ei", "map"]), default="auto", show_default=True,
              help="Consensus: similarity of two models' predictions (auto: map for instance banks, else ei).")
@click.option("--rounds", type=click.IntRange(min=0), default=None,
              help="Consensus: re-weighting rounds (0: every model weighs the same; default 5, 3 for instance banks).")
@click.option("--labels", type=click.Path(exists=True, file_okay=False), default=None,
              help="Labels for a few target images (same names): also rank by the mean true score on them.")
@click.option("--key", default=None, help="Dataset inside an HDF5/N5/Zarr container that holds several.")
@click.option("--trust-code", is_flag=True, help="Allow running a package's Python architecture (pytorch_state_dict).")
@click.option("--budget", default=None,
              help="Answer early: score at most this fraction (0-1) or number of units, in a seeded order that "
                   "covers the data; models that cannot make the top --keep-top stop early.")
@click.option("--until-separated", is_flag=True,
              help="Answer early: stop once the top pick (or every model from the next) is separated.")
@click.option("--keep-top", type=click.IntRange(min=1), default=3, show_default=True,
              help="With --budget / --until-separated: models below 0.1%% chance of this top are eliminated.")
@click.option("--output-space", default=None,
              help="Declare that every model of the bank predicts this output space (e.g. a bioimage.io package "
                   "beside sidecar models that name it differently).")
@click.option("--truth", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A performance.json (segrank evaluate) of this bank on this target: show how far each ranking "
                   "agrees with it (--example uses the example's own).")
@click.option("--json", "as_json", is_flag=True, help="Print ranking.json to stdout instead of the table.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def rank_cmd(bank, target, out, example, perturbations, metric, repeats, seed, device, max_images, axes,
             threshold, workers, scheduler, block, in_memory, cache, scores, similarity, rounds, labels, key, trust_code,
             budget, until_separated, keep_top, output_space, truth, as_json, no_progress):
    """Rank the models of BANK on the unlabelled TARGET.

    \b
    BANK: a folder of models: NAME.onnx files (each optionally with a NAME.yaml sidecar that
          declares axes, preprocessing, activation, post-processing, tiling), bioimage.io
          packages (folders with an rdf.yaml, or .zip files), or a text file listing them.
    TARGET: a folder of images (tif, png, npy), one image or stack, or a volume (Zarr,
          OME-Zarr, N5, HDF5; --key picks the dataset in a container with several).

    Results go to --out as they come (ranking.json / .csv, per_image.csv, report.html); a
    rerun into the same folder resumes.
    """
    from .job import rank
    from .report import format_table

    if example:
        if bank or target:
            raise click.UsageError("--example takes no BANK or TARGET")
        from .examples import example_paths, example_performance

        bank, target = example_paths()
        truth = truth or example_performance()
    elif not (bank and target):
        raise click.UsageError("give BANK and TARGET, or --example")
    try:
        block = tuple(int(b) for b in block.split(",")) if block else None
    except ValueError:
        raise click.BadParameter(f"{block!r}: expected three integers Z,Y,X", param_hint="--block") from None
    ranking = rank(bank, target, out=out, perturbations=perturbations, metric=metric, repeats=repeats, seed=seed,
                   device=device, max_images=max_images, axes=axes, threshold=threshold, workers=workers,
                   scheduler=scheduler, block=block, in_memory=in_memory, cache=cache, progress=not no_progress,
                   score=scores or None, similarity=similarity, rounds=rounds, truth=truth,
                   output_space=output_space, labels=labels, key=key, trust_code=trust_code, budget=budget,
                   until_separated=until_separated, keep_top=keep_top)
    if cache and not no_progress:
        p = ranking.predictions
        click.echo(f"segrank: cache {cache}: {p['reused']} tile predictions reused, {p['computed']} computed", err=True)
    if as_json:
        click.echo(json.dumps(ranking.to_json(), indent=2))
    else:
        n_perts = len(ranking.settings["perturbations"])
        if n_perts > 1:
            click.echo(f"{n_perts} perturbation settings, each ranked on its own "
                       "(one unperturbed run per model and image, shared):\n")
        click.echo(format_table(ranking.rows))
        for score, race in (ranking.race or {}).items():
            click.echo(f"race ({score}): stopped ({race['stop']}) after {race['units_visited']} of "
                       f"{race['units_total']} units, {race['tasks']} of {race['tasks_full_run']} tasks of a full run",
                       err=True)
        for note in (ranking.consensus or {}).get("warnings", []):
            click.echo(f"warning: {note}", err=True)
        for setting, t in (ranking.truth or {}).items():
            click.echo(f"against the labels ({setting}): Spearman {t['spearman']:+.2f}, first pick {t['first_pick']}, "
                       f"true best {t['true_best']} (regret {t['regret']:.3f})", err=True)
        for f in ranking.failures:
            click.echo(f"failed: {f['model']} ({f['stage']}): {f['error']}", err=True)
        names = ("ranking.json", "ranking.csv", "per_image.csv", "agreement.csv", "report.html")
        written = ", ".join(n for n in names if (ranking.out / n).exists())
        click.echo(f"\nwritten: {ranking.out}/ {written}", err=True)


@main.command("evaluate", short_help="True performance of every model against labels (F1 / mAP).")
@click.argument("bank", type=click.Path(exists=True))
@click.argument("target", type=click.Path(exists=True))
@click.option("--labels", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of label images named like the target images.")
@click.option("--out", required=True, type=click.Path(), help="Writes OUT/performance.json.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--axes", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print performance.json to stdout.")
@click.option("--baselines", "with_baselines", is_flag=True,
              help="Also write OUT/baselines.json: confidence, entropy, LEEP, CCFV (validate takes it as a ranking).")
@click.option("--output-space", default=None, help="Declare that every model of the bank predicts this output space.")
@click.option("--key", default=None, help="Dataset inside an HDF5/N5/Zarr container that holds several.")
@click.option("--trust-code", is_flag=True, help="Allow running a package's Python architecture (pytorch_state_dict).")
def evaluate_cmd(bank, target, labels, out, device, axes, as_json, with_baselines, output_space, key, trust_code):
    """True performance of every model of BANK on TARGET against LABELS (F1 or mAP)."""
    from .evaluate.job import evaluate

    rows = evaluate(bank, target, labels=labels, out=out, device=device, axes=axes, output_space=output_space,
                    key=key, trust_code=trust_code)
    if with_baselines:
        from .evaluate.baselines import baselines

        baselines(bank, target, labels=labels, out=out, device=device, axes=axes)
    if as_json:
        click.echo(json.dumps({"models": rows}, indent=2))
    else:
        for r in sorted(rows, key=lambda r: -r["score"]):
            click.echo(f"{r['name']:<30} {r['metric']:>4} {r['score']:.4f}  ({r['n_images']} images)")


@main.command("predict", short_help="One model's predictions of a target into a Zarr store.")
@click.argument("model", type=click.Path(exists=True))
@click.argument("target", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(), help="Zarr v3 store (PRED.zarr); a rerun reuses finished blocks.")
@click.option("--tile", default=None, help="Tile (outer) shape, e.g. 512 or 512,512; for a 2D model on a volume SLICES,Y,X.")
@click.option("--halo", default=None, help="Context per side, e.g. 32 or 8,32,32 (default: the model's, else 16).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--axes", default=None, help="Axes of the target when its metadata does not say (e.g. yx, zyx, cyx).")
@click.option("--key", default=None, help="Dataset inside an HDF5/N5/Zarr container.")
@click.option("--scheduler", default=None, help="Run on an existing dask.distributed scheduler (address).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Run on a dask.distributed LocalCluster of N worker processes.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def predict_cmd(model, target, out, tile, halo, device, axes, key, scheduler, workers, no_progress):
    """Write MODEL's predictions (after its activation) for every image of TARGET to a Zarr store."""
    from .errors import InputError
    from .inference.to_store import predict_target
    from .io.targets import open_target
    from .models import load_model

    def ints(text, flag):
        if text is None:
            return None
        try:
            return tuple(int(v) for v in text.split(","))
        except ValueError:
            raise InputError(f"{flag} {text!r}: expected integers joined by ',' (e.g. 256,256)") from None

    if scheduler and workers:
        raise click.UsageError("give --scheduler ADDRESS or --workers N, not both")
    summary = predict_target(
        load_model(model), open_target(target, axes=axes, key=key), out,
        tile=ints(tile, "--tile"), halo=ints(halo, "--halo"), device=device,
        scheduler=scheduler or ("local" if workers else "threads"), workers=workers, progress=not no_progress,
    )
    click.echo(json.dumps(summary.to_json(), indent=2))


@main.command("validate", short_help="How far rankings agree with true performance.")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--permutations", type=click.IntRange(min=100), default=10000, show_default=True)
def validate_cmd(files, as_json, permutations):
    """Agreement of RANKING with PERFORMANCE: validate RANKING PERFORMANCE [RANKING PERFORMANCE ...]."""
    from .evaluate.job import validate

    if len(files) % 2:
        raise click.UsageError("give RANKING PERFORMANCE pairs (one pair per target)")
    result = validate(list(zip(files[::2], files[1::2])), n_permutations=permutations)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for pert, entry in (result.get("by_perturbation") or {result["perturbation"]: result}).items():
        click.echo(f"perturbation {pert}:")
        for k in ("kendall", "spearman", "pearson"):
            v = entry[k]
            text = "n/a" if v["value"] is None else f"{v['value']:+.3f}"
            extra = f" (p = {v['p']:.4f})" if v.get("p") is not None else (f" +- {v['std']:.3f}" if v.get("std") is not None else "")
            click.echo(f"  {k:<9} {text}{extra}")
        regret = entry["regret"]  # several targets: {"mean", "std"}
        click.echo(f"  regret    {regret['mean']:.4f} +- {regret['std']:.4f}" if isinstance(regret, dict) else f"  regret    {regret:.4f}")
        if "top1_rate" in entry:
            click.echo(f"  top-1     {entry['top1_rate']:.2f}")


@main.command("inspect", short_help="What segrank knows about one model.")
@click.argument("model", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@click.option("--check", is_flag=True, help="Run the package's test inputs and compare with its test outputs (exit 1 on mismatch).")
@click.option("--trust-code", is_flag=True, help="Allow running a package's Python architecture (pytorch_state_dict weights).")
def inspect_cmd(model, as_json, check, trust_code):
    """Describe MODEL (.onnx, sidecar, bioimage.io package) and its dropout candidate tensors."""
    from .models import load_model
    from .models.summary import describe, format_text

    loaded = load_model(model, trust_code=trust_code)
    data = describe(loaded)
    failed = False
    if check:
        from .models.check import check_test_tensors

        results = check_test_tensors(loaded)
        data["check"] = [{"ok": r.ok, "max_abs_diff": r.max_abs_diff, "message": r.message} for r in results]
        failed = not all(r.ok for r in results)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(format_text(data))
        for entry in data.get("check", []):
            click.echo(f"check        {'ok' if entry['ok'] else 'MISMATCH'}: {entry['message']}")
    if failed:
        sys.exit(1)


@main.command("greybox", short_help="Add a channel-dropout input at a model's bottleneck.")
@click.argument("model", type=click.Path(exists=True))
@click.option("--tensor", default="auto", show_default=True, help="Tensor to perturb: a name (see `segrank inspect`), names joined by ',', or auto (the bottleneck).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The rewritten .onnx (a sidecar .yaml is written beside it).")
@click.option("--every-level", is_flag=True, help="Mask every encoder/decoder level (with --tensor auto).")
@click.option("--trust-code", is_flag=True, help="Allow running a package's Python architecture (pytorch_state_dict weights).")
def greybox_cmd(model, tensor, out, every_level, trust_code):
    """Add a channel-mask input to MODEL for grey-box spatial dropout."""
    from .models import load_model
    from .models.greybox import rewrite

    loaded = rewrite(load_model(model, trust_code=trust_code), tensor=tensor, out=out, every_level=every_level)
    shape = ["N", loaded.dropout_channels] + [1] * loaded.ndim
    click.echo(f"{loaded.path}: mask input {loaded.dropout_input!r} {shape} on {', '.join(loaded.dropout_tensors)} "
               f"(channels {list(loaded.dropout_levels)}); description in {loaded.path.with_suffix('.yaml')}")


@main.command("convert", short_help="PyTorch (TorchScript, state dict, package) to ONNX.")
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .onnx to write.")
@click.option("--shape", default=None, help="Example input shape B,C,[Z,]Y,X (required for PyTorch files), e.g. 1,1,64,64.")
@click.option("--architecture", default=None, help="For a state dict: its factory, FILE.py:CALLABLE or MODULE:CALLABLE (runs that code).")
@click.option("--kwargs", "kwargs_json", default=None, help="Factory keyword arguments as JSON.")
@click.option("--opset", type=click.IntRange(min=7), default=17, show_default=True)
@click.option("--trust-code", is_flag=True, help="For a bioimage.io package: allow running its Python architecture.")
def convert_cmd(source, out, shape, architecture, kwargs_json, opset, trust_code):
    """Convert SOURCE to ONNX: a TorchScript file, a state dict (with --architecture), or a bioimage.io package.

    PyTorch sources are exported with dynamic batch and spatial axes and verified against torch
    on a random input; a package is written as OUT plus its sidecar description OUT.yaml.
    """
    from pathlib import Path

    from .errors import InputError
    from .models.bioimageio import is_package

    out_path = Path(out)
    if is_package(Path(source)):
        import shutil

        from .models import load_model
        from .models.sidecar import write_sidecar

        loaded = load_model(source, trust_code=trust_code)
        shutil.copyfile(loaded.path, out_path)
        write_sidecar(loaded.with_(path=out_path), out_path.with_suffix(".yaml"))
        click.echo(f"{out_path}: from {loaded.source} package {source}; description in {out_path.with_suffix('.yaml')}")
        return
    from .models.convert import torch_to_onnx

    if not shape:
        raise InputError(f"{source}: --shape B,C,[Z,]Y,X is needed to export a PyTorch model")
    try:
        example = tuple(int(s) for s in shape.split(","))
    except ValueError:
        raise InputError(f"--shape {shape!r}: expected integers joined by ',' (e.g. 1,1,64,64)") from None
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else None
    except json.JSONDecodeError as err:
        raise InputError(f"--kwargs: not valid JSON ({err})") from None
    torch_to_onnx(source, out_path, example_shape=example, architecture=architecture, kwargs=kwargs, opset=opset)
    click.echo(f"{out_path}: exported with dynamic batch and spatial axes, verified against torch")


if __name__ == "__main__":  # pragma: no cover
    main()
