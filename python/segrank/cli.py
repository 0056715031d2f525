"""Command-line interface: a thin click layer over segrank's Python API."""
from __future__ import annotations

import click

from . import __version__, cmake_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="segrank")
def main():
    """Rank pre-trained segmentation models on unlabelled data by prediction consistency."""


@main.command("cmake-dir")
def cmake_dir_cmd():
    """Print the folder to pass to CMake as segrank_DIR for find_package(segrank)."""
    click.echo(cmake_dir())


if __name__ == "__main__":  # pragma: no cover
    main()
