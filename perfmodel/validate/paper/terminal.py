"""The paper report's table in the terminal: effect, paper, predicted, measured (ours: each pair on
the GPU it names), verdict, model vs measured, and the bottom line."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from perfmodel.validate.paper.report import PaperReport, source_text, standing, summary_rows
from perfmodel.validate.paper.verdict import NOT_EXPRESSIBLE, REPRODUCED, SIGN_WRONG, SIZE_OFF

#: Verdict → its colour in the table.
STYLE = {REPRODUCED: "green", SIZE_OFF: "yellow", SIGN_WRONG: "red", NOT_EXPRESSIBLE: "dim"}


def print_report(report: PaperReport, console: Console, files: tuple[str, str] | None = None) -> None:
    """The summary table, where predictions and measurements come from, and the files written."""
    study = report.study.study
    console.print(f"[bold]{study.title}[/bold] ({study.source}): {study.engine} on {study.gpu}")
    console.print(f"predicted: {report.provenance['profile']} on {report.gpu}: {report.provenance['note']}")
    console.print(f"measured: {source_text(report.source)} In brackets the model at exactly those points.")
    table = Table(header_style="bold", show_lines=True)
    for column in ("effect", "paper", f"predicted ({report.gpu})", "measured", "verdict", "model vs measured"):
        table.add_column(column, overflow="fold")
    for row in summary_rows(report):
        table.add_row(f"{row['id']} {row['title']}", row["paper"], row["predicted"], row["measured"],
                      f"[{STYLE.get(row['verdict'], '')}]{row['verdict']}[/]", row["model_vs_measured"])
    console.print(table)
    console.print(f"verdict: reproduced = the paper's sign and within ±{study.tolerance_pp:g} pp of its range; "
                  "size off = sign right, size not; not expressible = the paper leaves out a parameter; "
                  f"model vs measured: tracks = its change within ±{study.tolerance_pp:g} pp of ours at every "
                  "measured pair")
    console.print(standing(report))
    if files:
        console.print(f"report: {files[0]}  markdown: {files[1]}")
